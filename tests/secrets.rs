//! The secrets manager through real `nexus` processes:
//! - on a 3-node cluster, secrets set through every node read back alike on every node, and
//!   afterwards no plaintext of any of them is anywhere in any node's data directory (RocksDB
//!   files, Raft log, snapshots, indexes) or log: the test searches every byte.
//! - master-key rotation with rolling restarts: secrets stay readable throughout, and after
//!   the rotation the old key is no longer needed.
//! - `nexusctl secrets` from the command line, and its alias `nexus secrets`; permissions;
//!   bad input.

mod common;
#[allow(dead_code)] // the vector-index helpers are not used here
mod in_process;

use std::path::Path;
use std::process::Command;

use base64::Engine;
use common::{agreed_leader, create_tenants, nexus_bin, one_cluster_at_a_time, Nexus};
use nexus_client::{pb, Client};
use tonic::Code;

fn key_b64(byte: u8) -> String {
    base64::engine::general_purpose::STANDARD.encode([byte; 32])
}

async fn set(c: &mut Client, name: &str, value: &str) -> pb::SecretInfo {
    c.secrets
        .set_secret(pb::SetSecretRequest {
            name: name.into(),
            value: value.as_bytes().to_vec(),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn get(c: &mut Client, name: &str, version: u32) -> Result<(u32, String), tonic::Status> {
    let r = c
        .secrets
        .get_secret(pb::GetSecretRequest {
            name: name.into(),
            version,
        })
        .await?
        .into_inner();
    Ok((r.version, String::from_utf8(r.value).unwrap()))
}

/// `get`, retried while the cluster elects a new leader (a stopped node may have led).
async fn get_retrying(n: &Nexus, name: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        match get(&mut n.client().await, name, 0).await {
            Ok((_, v)) => return v,
            Err(s) if s.code() == Code::Unavailable && std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await
            }
            Err(s) => panic!("reading {name}: {s:?}"),
        }
    }
}

/// Every file under `dir`, recursively.
fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn no_plaintext_reaches_any_nodes_disk_or_logs() {
    let _guard = one_cluster_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    let master = key_b64(7);
    let env = [
        ("NEXUS_MASTER_KEY", master.as_str()),
        // Snapshots (and a compacted log) while secrets are in the state.
        ("NEXUS_RAFT__SNAPSHOT_EVERY_ENTRIES", "20"),
        ("NEXUS_RAFT__KEEP_ENTRIES_AFTER_SNAPSHOT", "5"),
    ];
    let mut nodes = Nexus::start_cluster(dir.path(), 3, &env).await;
    let leader = agreed_leader(&nodes).await;
    let values: Vec<(String, String)> = (0..6)
        .map(|i| {
            (
                format!("API_KEY_{i}"),
                format!("sk-live-{}-{i}", uuid_like(i)),
            )
        })
        .collect();
    // Through every node: followers seal, then forward the ciphertext.
    for (i, (name, value)) in values.iter().enumerate() {
        let mut c = nodes[i % 3].client().await;
        set(&mut c, name, value).await;
    }
    // A second version of one, and one from the command line (stdin).
    let rotated_value = "sk-live-second-version-9f8e7d6c5b4a";
    let info = set(
        &mut nodes[leader].client().await,
        "API_KEY_0",
        rotated_value,
    )
    .await;
    assert_eq!(info.versions.len(), 2);
    let cli_value = "cli-secret-from-stdin-0a1b2c3d4e5f";
    let mut child = Command::new(nexus_bin())
        .args(["secrets", "set", "FROM_CLI"])
        .env("NEXUS_ENDPOINT", nodes[1].endpoint())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{cli_value}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "stored FROM_CLI version 1\n"
    );
    // Enough other writes that every node snapshots.
    let mut c = nodes[leader].client().await;
    for i in 0..60 {
        c.memory
            .put(pb::PutRequest {
                namespace: "filler".into(),
                key: format!("k{i}"),
                value: "1".into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }

    // Every node opens every secret alike (the data key was wrapped once, replicated).
    for n in &nodes {
        let mut c = n.client().await;
        assert_eq!(
            get(&mut c, "API_KEY_0", 0).await.unwrap(),
            (2, rotated_value.to_string())
        );
        assert_eq!(get(&mut c, "API_KEY_0", 1).await.unwrap().1, values[0].1);
        for (name, value) in &values[1..] {
            assert_eq!(&get(&mut c, name, 0).await.unwrap().1, value);
        }
        assert_eq!(get(&mut c, "FROM_CLI", 0).await.unwrap().1, cli_value);
        let listed = c
            .secrets
            .list_secrets(pb::ListSecretsRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.secrets.len(), 7);
        assert!(
            !format!("{listed:?}").contains("sk-live"),
            "a listing carries no values"
        );
    }
    let nexusctl = nexus_bin().with_file_name("nexusctl");
    let out = Command::new(&nexusctl)
        .args(["secrets", "get", "FROM_CLI"])
        .env("NEXUS_ENDPOINT", nodes[2].endpoint())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{cli_value}\n")
    );
    let out = Command::new(&nexusctl)
        .args(["secrets", "list", "-o", "json"])
        .env("NEXUS_ENDPOINT", nodes[0].endpoint())
        .output()
        .unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 7);

    let status = common::status(&nodes[leader]).await.unwrap();
    assert!(
        status.snapshot_index > 0,
        "a snapshot was taken: {status:?}"
    );

    // Stop every node cleanly (memtables flushed to files), then search every byte.
    for n in nodes.iter_mut() {
        assert!(n.terminate().success());
    }
    let mut all = Vec::new();
    files(dir.path(), &mut all);
    assert!(all.len() > 20, "the data directories hold files: {all:?}");
    let mut needles: Vec<&str> = values.iter().map(|(_, v)| v.as_str()).collect();
    needles.push(rotated_value);
    needles.push(cli_value);
    let mut scanned = 0usize;
    for path in &all {
        let bytes = std::fs::read(path).unwrap();
        scanned += bytes.len();
        for needle in &needles {
            assert!(
                !contains(&bytes, needle.as_bytes()),
                "{needle} is in plaintext in {}",
                path.display()
            );
        }
    }
    assert!(scanned > 100_000, "scanned {scanned} bytes");
    // The names are not secret: they are there (the scan does find what is stored).
    assert!(all
        .iter()
        .any(|p| contains(&std::fs::read(p).unwrap(), b"API_KEY_3")));
}

/// A deterministic, distinctive filler for secret values.
fn uuid_like(i: usize) -> String {
    format!(
        "{:08x}{:08x}",
        0x5eed_0000 + i,
        0xc0ffee00u32 as usize + i * 7
    )
}

#[tokio::test]
async fn master_key_rotation_keeps_secrets_readable_throughout() {
    let _guard = one_cluster_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old.key");
    let new = dir.path().join("new.key");
    std::fs::write(&old, key_b64(1)).unwrap();
    std::fs::write(&new, key_b64(2)).unwrap();
    let config = |current: &Path, previous: Option<&Path>| {
        let file = dir.path().join(format!(
            "{}-{}.toml",
            current.file_stem().unwrap().to_string_lossy(),
            previous.is_some()
        ));
        let previous = previous
            .map(|p| format!("\"{}\"", p.display()))
            .unwrap_or_default();
        std::fs::write(
            &file,
            format!(
                "[secrets]\nmaster_key_file = \"{}\"\nprevious_master_key_files = [{previous}]\n",
                current.display()
            ),
        )
        .unwrap();
        file.display().to_string()
    };
    let with_old = config(&old, None);
    std::fs::create_dir_all(dir.path().join("c")).unwrap();
    let mut nodes = Nexus::start_cluster(
        &dir.path().join("c"),
        3,
        &[("NEXUS_CONFIG", with_old.as_str())],
    )
    .await;
    set(
        &mut nodes[0].client().await,
        "TOKEN",
        "value-under-the-old-key",
    )
    .await;

    // Rolling restart onto the new key, the old one still known: always readable elsewhere.
    let rolling = config(&new, Some(&old));
    for i in 0..3 {
        nodes[i].terminate();
        for (k, v) in nodes[i].env.iter_mut() {
            if k == "NEXUS_CONFIG" {
                *v = rolling.clone();
            }
        }
        let other = &nodes[(i + 1) % 3];
        assert_eq!(
            get_retrying(other, "TOKEN").await,
            "value-under-the-old-key"
        );
        nodes[i].restart().await;
        // The restarted node, on the new key, opens what the old key wrapped.
        assert_eq!(
            get_retrying(&nodes[i], "TOKEN").await,
            "value-under-the-old-key"
        );
    }
    let _ = agreed_leader(&nodes).await;
    let mut c = nodes[1].client().await;
    let r = c
        .secrets
        .rotate_master_key(pb::RotateMasterKeyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.rewrapped, r.already_current), (1, 0));
    set(&mut c, "TOKEN", "value-under-the-new-key").await;
    let again = c
        .secrets
        .rotate_master_key(pb::RotateMasterKeyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((again.rewrapped, again.already_current), (0, 1));

    // The old key retired: every version still opens.
    let only_new = config(&new, None);
    for n in nodes.iter_mut() {
        n.terminate();
        for (k, v) in n.env.iter_mut() {
            if k == "NEXUS_CONFIG" {
                *v = only_new.clone();
            }
        }
        n.restart().await;
    }
    let _ = agreed_leader(&nodes).await;
    for n in &nodes {
        let mut c = n.client().await;
        assert_eq!(
            get(&mut c, "TOKEN", 1).await.unwrap().1,
            "value-under-the-old-key"
        );
        assert_eq!(
            get(&mut c, "TOKEN", 0).await.unwrap().1,
            "value-under-the-new-key"
        );
    }

    // A node with a master key that wrapped nothing here says which key it lacks.
    let stranger = dir.path().join("stranger.key");
    std::fs::write(&stranger, key_b64(3)).unwrap();
    let foreign = config(&stranger, None);
    nodes[2].terminate();
    for (k, v) in nodes[2].env.iter_mut() {
        if k == "NEXUS_CONFIG" {
            *v = foreign.clone();
        }
    }
    nodes[2].restart().await;
    let err = get(&mut nodes[2].client().await, "TOKEN", 0)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains(&r.master_key_id),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn permissions_and_bad_input() {
    const ROOT: &str = "root-key-for-secrets-tests-0123456789ab";
    let dir = tempfile::tempdir().unwrap();
    let env = [("NEXUS_AUTH__ENABLED", "true"), ("NEXUS_ROOT_KEY", ROOT)];
    let n = Nexus::start(dir.path(), &env).await;
    let mut root = n.client().await;
    create_tenants(&root, &["acme"]).await;
    let key = |roles: &'static [&'static str], sa: &'static str| {
        common::api_key(&root, "acme", sa, roles, 0)
    };
    let mut dev = n.client_with(Some(&key(&["developer"], "dev").await)).await;
    let mut admin = n.client_with(Some(&key(&["admin"], "boss").await)).await;
    let mut agent = n.client_with(Some(&key(&["agent"], "bot").await)).await;
    // A developer sets and lists, but cannot read values back; an admin can.
    set(&mut dev, "OPENAI_KEY", "sk-dev-set").await;
    let err = get(&mut dev, "OPENAI_KEY", 0).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("secrets:read"));
    assert_eq!(
        get(&mut admin, "OPENAI_KEY", 0).await.unwrap().1,
        "sk-dev-set"
    );
    let err = agent
        .secrets
        .list_secrets(pb::ListSecretsRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // Tenants are apart: root (tenant default) does not see acme's secret.
    assert_eq!(
        get(&mut root, "OPENAI_KEY", 0).await.unwrap_err().code(),
        Code::NotFound
    );
    // Rotation is the root principal's.
    let err = admin
        .secrets
        .rotate_master_key(pb::RotateMasterKeyRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    for (req, field) in [
        (
            pb::SetSecretRequest {
                name: "bad name".into(),
                value: b"v".to_vec(),
            },
            "name",
        ),
        (
            pb::SetSecretRequest {
                name: "EMPTY".into(),
                value: Vec::new(),
            },
            "value",
        ),
        (
            pb::SetSecretRequest {
                name: "HUGE".into(),
                value: vec![b'x'; 64 * 1024 + 1],
            },
            "value",
        ),
    ] {
        let err = admin.secrets.set_secret(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains(field), "{}", err.message());
    }
    let names: Vec<String> = admin
        .secrets
        .list_secrets(pb::ListSecretsRequest {})
        .await
        .unwrap()
        .into_inner()
        .secrets
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, vec!["OPENAI_KEY"], "bad input stored nothing");
    let err = get(&mut admin, "OPENAI_KEY", 7).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    admin
        .secrets
        .delete_secret(pb::DeleteSecretRequest {
            name: "OPENAI_KEY".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        get(&mut admin, "OPENAI_KEY", 0).await.unwrap_err().code(),
        Code::NotFound
    );
}

/// `${secrets.NAME}` placeholders as the tool runner will resolve them: in process (no API
/// resolves them), on a one-member cluster: values substituted, each read on the audit log,
/// a missing secret and a malformed placeholder refused, output redacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placeholders_resolve_to_values_and_redact_back() {
    use nexus_node::command::Scope;
    use nexus_node::secrets::MasterKeys;
    use nexus_node::service::secrets::SecretsService;
    let parts = in_process::Parts::start(|_| {}).await;
    parts.create_tenant("acme").await;
    let secrets = SecretsService::new(
        parts.node.clone(),
        std::sync::Arc::new(MasterKeys::from_keys([7u8; 32], Vec::new())),
    );
    secrets
        .set(
            &Scope::system("acme"),
            "GITHUB_TOKEN",
            zeroize::Zeroizing::new(b"ghp_abc123".to_vec()),
        )
        .await
        .unwrap();
    let (text, redactor) = secrets
        .resolve_placeholders(
            &Scope::system("acme"),
            "args",
            "token=${secrets.GITHUB_TOKEN}",
        )
        .await
        .unwrap();
    assert_eq!(text.as_str(), "token=ghp_abc123");
    assert_eq!(
        redactor.redact("401 Unauthorized for ghp_abc123"),
        "401 Unauthorized for ${secrets.GITHUB_TOKEN}"
    );
    // Another tenant's secrets are not reachable by name.
    parts.create_tenant("globex").await;
    let e = secrets
        .resolve_placeholders(&Scope::system("globex"), "args", "${secrets.GITHUB_TOKEN}")
        .await
        .err()
        .unwrap();
    assert!(
        matches!(e, nexus_node::error::NexusError::NotFound(_)),
        "{e:?}"
    );
    let e = secrets
        .resolve_placeholders(&Scope::system("acme"), "args", "${secrets.GITHUB_TOKEN")
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("args"), "{e}");
    parts.stop().await;
}
