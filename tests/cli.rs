//! The binaries as people and scripts use them: `nexus config default`, refusing a data
//! directory of a newer format, and `nexusctl` with tables, `-o json` and exit codes.

mod common;

use std::process::Command;

use common::{nexus_bin, Nexus};

const NEXUSCTL_BIN: &str = env!("CARGO_BIN_EXE_nexusctl");

fn nexusctl(endpoint: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(NEXUSCTL_BIN)
        .args(args)
        .env("NEXUS_ENDPOINT", endpoint)
        .output()
        .expect("running nexusctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[test]
fn config_default_prints_the_documented_defaults() {
    let out = Command::new(nexus_bin())
        .args(["config", "default"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("grpc_addr = \"127.0.0.1:7700\""));
    assert!(text.contains("http_addr = \"127.0.0.1:9001\""));
    assert!(text.contains("data_dir = \"./nexus-data\""));
    assert!(text.contains("max_key_bytes = 512"));
}

#[test]
fn a_data_directory_of_a_newer_format_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("FORMAT"), "nexus-data-format 999\n").unwrap();
    let out = Command::new(nexus_bin())
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .args(["--grpc-addr", &format!("127.0.0.1:{}", common::free_port())])
        .args(["--http-addr", &format!("127.0.0.1:{}", common::free_port())])
        .args(["--peer-addr", &format!("127.0.0.1:{}", common::free_port())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("format 999") && stderr.contains("run a newer nexus"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "nothing was written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nexusctl_tables_json_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let nexus = Nexus::start(&dir.path().join("node"), &[]).await;
    let ep = nexus.endpoint();
    let run = |args: &[&str]| nexusctl(&ep, args);

    let (code, out, _) = run(&["status", "-o", "json"]);
    assert_eq!(code, 0);
    let s = json(&out);
    for field in [
        "node_id",
        "role",
        "term",
        "leader_id",
        "commit_index",
        "applied_index",
        "members",
    ] {
        assert!(s.get(field).is_some(), "status -o json lacks {field}: {s}");
    }
    assert_eq!(s["role"], "leader");
    assert_eq!(s["members"].as_array().unwrap().len(), 1);
    let (code, out, _) = run(&["status"]);
    assert_eq!(code, 0);
    assert!(out.contains("ROLE") && out.contains("leader"));

    // Leadership transfer: to the leader itself it is a no-op; to a non-member, exit 1.
    let (code, out, _) = run(&["cluster", "transfer-leader", "1", "-o", "json"]);
    assert_eq!(code, 0);
    assert_eq!(json(&out)["leader_id"], 1);
    let (code, out, _) = run(&["cluster", "transfer-leader", "1"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("node 1 leads (term "), "{out}");
    let (code, _, err) = run(&["cluster", "transfer-leader", "7"]);
    assert_eq!(code, 1);
    assert!(err.contains("node 7 is not a member"), "{err}");

    assert_eq!(
        run(&[
            "memory",
            "put",
            "notes",
            "plan",
            r#"{"step": "write the tour"}"#
        ])
        .0,
        0
    );
    let (code, out, _) = run(&["memory", "get", "notes", "plan", "-o", "json"]);
    assert_eq!(code, 0);
    assert_eq!(json(&out)["value"]["step"], "write the tour");
    let (_, out, _) = run(&["memory", "list", "notes"]);
    assert!(out.contains("plan") && out.contains("VERSION"));

    let (code, id, _) = run(&["conv", "create", "--title", "tour"]);
    assert_eq!(code, 0);
    let id = id.trim().to_string();
    assert_eq!(
        run(&["conv", "append", &id, "user", "how do I search memories?"]).0,
        0
    );
    assert_eq!(
        run(&["conv", "append", &id, "assistant", "use nexusctl search"]).0,
        0
    );
    let (_, out, _) = run(&["conv", "show", &id, "-o", "json"]);
    let v = json(&out);
    assert_eq!(v["messages"].as_array().unwrap().len(), 2);
    assert_eq!(v["messages"][1]["role"], "assistant");
    let (_, out, _) = run(&["conv", "list", "-o", "json"]);
    assert_eq!(json(&out)[0]["id"], id.as_str());
    let (_, out, _) = run(&["search", "search", "-o", "json"]);
    let hits = json(&out);
    assert_eq!(hits.as_array().unwrap().len(), 2, "{hits}");
    let (_, out, _) = run(&["search", "tour"]);
    assert!(out.contains("**tour**"), "highlighted: {out}");

    // Recall: memories and messages, as a table and as JSON.
    let (code, out, _) = run(&[
        "memory",
        "remember",
        "The Apollo launch slipped to the end of March",
        "--namespace",
        "work",
        "-o",
        "json",
    ]);
    assert_eq!(code, 0);
    let remembered = json(&out)["id"].as_str().unwrap().to_string();
    let (code, out, _) = run(&[
        "memory",
        "recall",
        "how can I look things up?",
        "--source",
        "messages",
        "-o",
        "json",
    ]);
    assert_eq!(code, 0);
    let hits = json(&out);
    let hits = hits.as_array().unwrap();
    assert_eq!(hits.len(), 2, "{hits:?}");
    for h in hits {
        assert_eq!(h["kind"], "message");
        assert_eq!(h["message"]["conversation_id"], id.as_str());
        assert!(h["retrievers"]
            .as_array()
            .unwrap()
            .contains(&"vector".into()));
        assert!(h["similarity"].as_f64().is_some());
    }
    let (_, out, _) = run(&["memory", "recall", "was the space mission postponed?"]);
    assert!(out.contains("KIND") && out.contains("memory"), "{out}");
    assert!(out.contains(&remembered), "{out}");
    let (_, out, _) = run(&["memory", "recall", "searching", "--conversation", &id]);
    assert!(
        out.contains("message") && !out.contains(&remembered),
        "{out}"
    );
    let (code, _, err) = run(&[
        "memory",
        "recall",
        "x",
        "--conversation",
        &id,
        "--namespace",
        "work",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("conversation_id"), "{err}");

    // Errors: the server's message and exit code 1; nothing reachable: exit code 3.
    let (code, _, err) = run(&["memory", "put", "notes", "plan", "{broken"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("value") && err.contains("InvalidArgument"),
        "{err}"
    );
    let (code, _, err) = run(&["memory", "get", "notes", "missing"]);
    assert_eq!(code, 1);
    assert!(err.contains("NotFound"), "{err}");
    let (code, _, err) = run(&[
        "memory",
        "delete",
        "notes",
        "plan",
        "--expected-version",
        "3",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("FailedPrecondition"), "{err}");
    let (code, _, _) = run(&["memory", "delete", "notes", "plan"]);
    assert_eq!(code, 0);
    let (code, _, err) = nexusctl(
        &format!("http://127.0.0.1:{}", common::free_port()),
        &["status"],
    );
    assert_eq!(code, 3);
    assert!(err.contains("cannot connect"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nexusctl_manages_tenants_keys_roles_and_bindings() {
    const ROOT: &str = "root-key-for-cli-tests-0123456789abcdef";
    let dir = tempfile::tempdir().unwrap();
    let env = [("NEXUS_AUTH__ENABLED", "true"), ("NEXUS_ROOT_KEY", ROOT)];
    let nexus = Nexus::start(&dir.path().join("node"), &env).await;
    let ep = nexus.endpoint();
    let as_root = |args: &[&str]| {
        let mut all = vec!["--token", ROOT];
        all.extend_from_slice(args);
        nexusctl(&ep, &all)
    };

    // No credentials: refused, saying how to send them.
    let (code, _, err) = nexusctl(&ep, &["memory", "list", "n"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("Unauthenticated") && err.contains("NEXUS_TOKEN"),
        "{err}"
    );

    assert_eq!(
        as_root(&["tenant", "create", "acme", "--name", "Acme"]).0,
        0
    );
    let (_, out, _) = as_root(&["tenant", "list"]);
    assert!(out.contains("acme") && out.contains("active"), "{out}");
    let (code, out, err) = as_root(&[
        "key", "create", "bot", "--tenant", "acme", "--role", "agent", "-o", "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let key = json(&out);
    let token = key["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("nxk_"));
    assert_eq!(key["principal"], "sa:bot");

    // The key works through NEXUS_TOKEN, as its tenant and role.
    let as_bot = |args: &[&str]| {
        Command::new(NEXUSCTL_BIN)
            .args(args)
            .env("NEXUS_ENDPOINT", &ep)
            .env("NEXUS_TOKEN", &token)
            .output()
            .unwrap()
    };
    let out = as_bot(&["whoami", "-o", "json"]);
    let me = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(me["tenant"], "acme");
    assert_eq!(me["subject"], "sa:bot");
    assert!(as_bot(&["memory", "put", "n", "k", "1"]).status.success());
    let denied = as_bot(&["key", "list"]);
    assert_eq!(denied.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&denied.stderr).contains("iam:read"));

    // Roles and bindings, as tables and JSON.
    let (code, _, err) = as_root(&[
        "role",
        "create",
        "auditor",
        "--perm",
        "memory:read",
        "--perm",
        "iam:read",
        "--tenant",
        "acme",
    ]);
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = as_root(&["role", "list", "--tenant", "acme"]);
    assert!(out.contains("auditor") && out.contains("custom") && out.contains("built-in"));
    assert_eq!(
        as_root(&["binding", "create", "sa:bot", "auditor", "--tenant", "acme"]).0,
        0
    );
    let (_, out, _) = as_root(&["binding", "list", "--tenant", "acme", "-o", "json"]);
    let roles: Vec<String> = json(&out)
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["role"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(roles, vec!["agent", "auditor"]);
    let listed = as_bot(&["key", "list", "-o", "json"]);
    assert!(listed.status.success(), "auditor grants iam:read");
    let keys = json(&String::from_utf8_lossy(&listed.stdout));
    assert_eq!(keys[0]["id"], key["id"]);
    assert!(!String::from_utf8_lossy(&listed.stdout).contains(&token[20..]));
    assert_eq!(
        as_root(&["binding", "delete", "sa:bot", "auditor", "--tenant", "acme"]).0,
        0
    );
    assert_eq!(as_bot(&["key", "list"]).status.code(), Some(1));
    assert_eq!(
        as_root(&["role", "delete", "auditor", "--tenant", "acme"]).0,
        0
    );

    // Quotas: set from flags (others kept), shown as a table and as JSON.
    let (code, out, err) = as_root(&["tenant", "limits", "acme", "--max-items", "100"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("MAX ITEMS") && out.contains("100"), "{out}");
    let (code, out, err) = as_root(&[
        "tenant",
        "limits",
        "acme",
        "--max-bytes",
        "2MiB",
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let u = json(&out);
    assert_eq!(u["limits"]["max_items"], 100);
    assert_eq!(u["limits"]["max_bytes"], 2 << 20);
    assert_eq!(u["items"], 1, "the memory the bot put");
    let (code, _, err) = as_root(&["tenant", "limits", "acme", "--max-bytes", "2XB"]);
    assert_eq!(code, 2, "a bad size is a usage error");
    assert!(err.contains("unknown unit"), "{err}");
    let (_, out, _) = as_root(&["tenant", "limits", "acme", "--clear", "-o", "json"]);
    assert_eq!(json(&out)["limits"]["max_items"], 0);

    // Revoked: refused.
    let id = key["id"].as_str().unwrap();
    assert_eq!(as_root(&["key", "revoke", id]).0, 0);
    let out = as_bot(&["memory", "get", "n", "k"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("revoked"));
    let (code, out, _) = as_root(&["tenant", "delete", "acme"]);
    assert_eq!(code, 0);
    assert!(out.contains("deleted tenant acme"));
}
