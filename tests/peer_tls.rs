//! Mutual TLS on the peer port (`[peer_tls]`): a 3-node cluster whose nodes hold certificates
//! from the cluster's CA replicates and forwards over TLS; a client without a certificate, with
//! one from another CA, or speaking plaintext is refused at the handshake; and a node with a
//! certificate from another CA, added as a member, never receives the log, until its files
//! are replaced by the cluster's, which it picks up without a restart.
//!
//! Certificates are made in the test with rcgen (tests/tls_ca: a CA, then leaf certificates naming
//! `localhost` and `127.0.0.1`, the host of every peer address here).

mod common;
mod tls_ca;

use std::path::Path;
use std::time::{Duration, Instant};

use common::Nexus;
use nexus_client::{pb, Client};
type ForwardReply = nexus_node::cluster::network::ForwardReply<nexus_node::command::Nexus>;
use nexus_node::error::NexusError;
use nexus_node::store::codec;
use nexus_proto::raft::v1::raft_service_client::RaftServiceClient;
use nexus_proto::raft::v1::RaftMessage;
use tls_ca::Ca;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const ROOT_KEY: &str = "peer-tls-test-root-key-0123456789abcdefghij";

fn tls_env(cert: &Path, key: &Path, ca: &Path) -> Vec<(String, String)> {
    vec![
        (
            "NEXUS_PEER_TLS__CERT_FILE".into(),
            cert.display().to_string(),
        ),
        ("NEXUS_PEER_TLS__KEY_FILE".into(), key.display().to_string()),
        ("NEXUS_PEER_TLS__CA_FILE".into(), ca.display().to_string()),
    ]
}

fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// A call to a node's peer port through `channel`: `vote` with a payload that is not a vote,
/// so that a connection that gets through TLS is answered InvalidArgument by the service.
async fn peer_call(channel: Channel) -> Result<(), tonic::Status> {
    let mut c = RaftServiceClient::new(channel);
    let mut r = tonic::Request::new(RaftMessage {
        payload: vec![0xff, 1, 2, 3],
        group: 0,
    });
    r.set_timeout(Duration::from_secs(5));
    c.vote(r).await.map(|_| ())
}

async fn tls_channel(port: u16, ca: &Path, identity: Option<(&Path, &Path)>) -> Channel {
    let mut tls =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert).unwrap(),
            std::fs::read(key).unwrap(),
        ));
    }
    Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_lazy()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peers_talk_mutual_tls_and_refuse_strangers() {
    let _serial = common::one_cluster_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let cluster_ca = Ca::new("nexus cluster CA");
    let ca_file = cluster_ca.write(&pki, "ca");
    let (node_cert, node_key) = cluster_ca.issue(&pki, "node");
    let other_ca = Ca::new("some other CA");
    let other_ca_file = other_ca.write(&pki, "other-ca");
    let (stranger_cert, stranger_key) = other_ca.issue(&pki, "stranger");

    let env = tls_env(&node_cert, &node_key, &ca_file);
    let nodes = Nexus::start_cluster(dir.path(), 3, &env_refs(&env)).await;
    let leader = common::agreed_leader(&nodes).await;

    // Replication, and a write forwarded by a follower, over TLS.
    let follower = (leader + 1) % nodes.len();
    let mut c = nodes[follower].client().await;
    let item = c
        .memory
        .put(pb::PutRequest {
            namespace: "tls".into(),
            key: "k".into(),
            value: "\"over tls\"".into(),
            ..Default::default()
        })
        .await
        .expect("a write through a follower is forwarded to the leader over TLS")
        .into_inner()
        .item
        .unwrap();
    assert_eq!(item.version, 1);
    for n in &nodes {
        let got = n
            .client()
            .await
            .memory
            .get(pb::GetRequest {
                namespace: "tls".into(),
                key: "k".into(),
                consistency: 0,
            })
            .await
            .unwrap()
            .into_inner()
            .item
            .unwrap();
        assert_eq!(got.value, "\"over tls\"");
    }

    // The peer port: a member's certificate gets through TLS (the service then refuses the
    // bogus payload); anything else is refused at the handshake.
    let port = nodes[0].peer_port;
    let member = peer_call(tls_channel(port, &ca_file, Some((&node_cert, &node_key))).await)
        .await
        .unwrap_err();
    assert_eq!(member.code(), tonic::Code::InvalidArgument, "{member:?}");
    let no_cert = peer_call(tls_channel(port, &ca_file, None).await).await;
    let stranger =
        peer_call(tls_channel(port, &ca_file, Some((&stranger_cert, &stranger_key))).await).await;
    let plaintext = peer_call(
        Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect_lazy(),
    )
    .await;
    for (who, r) in [
        ("no client certificate", no_cert),
        ("a certificate from another CA", stranger),
        ("plaintext", plaintext),
    ] {
        let e = r.expect_err(who);
        assert_ne!(
            e.code(),
            tonic::Code::InvalidArgument,
            "{who} reached the service: {e:?}"
        );
    }

    // A node with a certificate from another CA is added as a learner: the leader cannot
    // reach it (its certificate does not verify), so it never receives the log.
    let rogue_env = tls_env(&stranger_cert, &stranger_key, &other_ca_file);
    let mut rogue_env = env_refs(&rogue_env);
    rogue_env.push(("NEXUS_NODE_ID", "4"));
    rogue_env.push(("NEXUS_JOIN", "true"));
    let rogue = Nexus::launch(&dir.path().join("node4"), &rogue_env);
    let mut admin = nodes[0].client().await;
    let mut add = tonic::Request::new(pb::AddMemberRequest {
        id: 4,
        peer_addr: format!("127.0.0.1:{}", rogue.peer_port),
        api_addr: format!("127.0.0.1:{}", rogue.grpc_port),
    });
    add.set_timeout(Duration::from_secs(30));
    let refused = admin
        .cluster
        .add_member(add)
        .await
        .expect_err("the learner cannot catch up");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("has received no log"),
        "{refused:?}"
    );
    let mut r = Client::connect(&rogue.endpoint()).await.unwrap();
    let status = r
        .cluster
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.leader_id, 0,
        "the rogue node heard from no leader: {status:?}"
    );
    let stale = r
        .memory
        .get(pb::GetRequest {
            namespace: "tls".into(),
            key: "k".into(),
            consistency: pb::Consistency::Stale as i32,
        })
        .await;
    assert_eq!(
        stale.expect_err("the rogue node has no data").code(),
        tonic::Code::NotFound
    );
    // The cluster still serves writes.
    c.memory
        .put(pb::PutRequest {
            namespace: "tls".into(),
            key: "k".into(),
            value: "\"still\"".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    // The rogue node's files are replaced in place by a certificate of the cluster's CA and
    // that CA, with no restart: it reloads them, the leader's next attempt gets through
    // both ways (its certificate verifies, and the leader's is now trusted), and the learner
    // catches up.
    let (renewed_cert, renewed_key) = cluster_ca.issue(&pki, "renewed");
    for (from, to) in [
        (&renewed_cert, &stranger_cert),
        (&renewed_key, &stranger_key),
        (&ca_file, &other_ca_file),
    ] {
        // Each file atomically, as a certificate manager writes them.
        let tmp = to.with_extension("new");
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, to).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = r
            .memory
            .get(pb::GetRequest {
                namespace: "tls".into(),
                key: "k".into(),
                consistency: pb::Consistency::Stale as i32,
            })
            .await;
        if let Ok(g) = got {
            assert_eq!(g.into_inner().item.unwrap().value, "\"still\"");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the renewed node never caught up; its log:\n{}",
            rogue.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        rogue.log_text().contains("reloaded TLS certificate files"),
        "without a restart"
    );
}

/// A half-configured `[peer_tls]` is refused at startup, naming the missing setting.
#[tokio::test]
async fn incomplete_peer_tls_is_refused_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(common::nexus_bin())
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--grpc-addr")
        .arg(format!("127.0.0.1:{}", common::free_port()))
        .arg("--http-addr")
        .arg(format!("127.0.0.1:{}", common::free_port()))
        .arg("--peer-addr")
        .arg(format!("127.0.0.1:{}", common::free_port()))
        .env("NEXUS_PEER_TLS__CERT_FILE", dir.path().join("node.pem"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("nexus started with an incomplete [peer_tls]");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let out = child.wait_with_output().unwrap();
    assert!(!status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("peer_tls.key_file is not set"), "{stderr}");
}

/// A plaintext peer port beyond loopback is refused at start, naming `[peer_tls]` and its
/// explicit opt-out; with the opt-out the node serves.
#[tokio::test]
async fn a_plaintext_peer_port_beyond_loopback_is_refused_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let mut open = Nexus::new(&dir.path().join("open"), &[]);
    open.peer_host = "0.0.0.0".into();
    let log = open.refused_start().await;
    assert!(
        log.contains("plaintext peer port beyond loopback")
            && log.contains("NEXUS_PEER_TLS__CERT_FILE")
            && log.contains("peer_tls.insecure_plaintext"),
        "{log}"
    );
    let mut opted_out = Nexus::new(
        &dir.path().join("opted-out"),
        &[("NEXUS_PEER_TLS__INSECURE_PLAINTEXT", "true")],
    );
    opted_out.peer_host = "0.0.0.0".into();
    opted_out.spawn();
    opted_out.wait_ready().await;
    assert!(opted_out.log_text().contains("insecure_plaintext"));
}

/// What a peer call on the leader's peer port answers: the decoded forward reply, or the
/// transport's refusal.
async fn forward(
    channel: Channel,
    request: &nexus_node::cluster::network::ForwardRequest<nexus_node::command::Nexus>,
) -> Result<Result<ForwardReply, NexusError>, tonic::Status> {
    let mut c = RaftServiceClient::new(channel);
    let mut r = tonic::Request::new(RaftMessage {
        payload: codec::encode(request),
        group: 0,
    });
    r.set_timeout(Duration::from_secs(10));
    let reply = c.forward(r).await?.into_inner();
    Ok(codec::decode(&reply.payload).expect("a forward reply"))
}

/// The peer port admits only members, and the leader trusts no member with a principal: a
/// certificate of the cluster's CA that names no member is refused after the handshake; a
/// member's channel that forwards an identity command without its caller's credential, with
/// a forged one, with an audit record it wrote itself, or with a credential that lacks the
/// permission, is refused command by command, and nothing of it is applied. Writes a real
/// follower forwards (with the caller's credential) still work and are audited under the
/// principal the leader found.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_members_reach_the_peer_port_and_forwarded_commands_are_rechecked() {
    type ForwardRequest = nexus_node::cluster::network::ForwardRequest<nexus_node::command::Nexus>;
    use nexus_node::command::{Command, Forwarded, OnBehalf, Op};
    use nexus_node::iam::IamOp;

    let _serial = common::one_cluster_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let ca = Ca::new("nexus cluster CA");
    let ca_file = ca.write(&pki, "ca");
    let (node_cert, node_key) = ca.issue(&pki, "node");
    let (outsider_cert, outsider_key) =
        ca.issue_for(&pki, "outsider", &["outsider.nexus.test", "127.0.0.99"]);
    let mut env = tls_env(&node_cert, &node_key, &ca_file);
    env.push(("NEXUS_AUTH__ENABLED".into(), "true".into()));
    env.push(("NEXUS_ROOT_KEY".into(), ROOT_KEY.into()));
    let nodes = Nexus::start_cluster(dir.path(), 3, &env_refs(&env)).await;
    let leader = common::agreed_leader(&nodes).await;
    let follower = (leader + 1) % nodes.len();
    let root = nodes[leader].client().await;
    common::create_tenants(&root, &["acme"]).await;
    let reader = common::api_key(&root, "acme", "reader", &["reader"], 0).await;
    let writer = common::api_key(&root, "acme", "writer", &["agent"], 0).await;

    let port = nodes[leader].peer_port;
    let as_member = || tls_channel(port, &ca_file, Some((&node_cert, &node_key)));
    // A certificate of the same CA that names no member's peer address: refused.
    let outsider = forward(
        tls_channel(port, &ca_file, Some((&outsider_cert, &outsider_key))).await,
        &ForwardRequest::ReadIndex,
    )
    .await
    .expect_err("a non-member certificate is refused");
    // The connection is closed right after the handshake: the call never reaches the service.
    assert!(
        !matches!(
            outsider.code(),
            tonic::Code::Ok | tonic::Code::InvalidArgument
        ),
        "{outsider:?}"
    );
    let member = forward(as_member().await, &ForwardRequest::ReadIndex).await;
    assert!(
        matches!(member, Ok(Ok(ForwardReply::ReadIndex(_)))),
        "a member is served: {member:?}"
    );

    // Forged commands through a member's channel.
    let admin_key = |id: &str| Command {
        tenant: "acme".into(),
        op: Op::Iam(IamOp::CreateKey {
            id: id.into(),
            service_account: "intruder".into(),
            secret_sha256: vec![7; 32],
            expires_at_ms: 0,
            now_ms: 1,
            roles: vec!["admin".into()],
        }),
    };
    let context = |principal: &str| nexus_node::audit::AuditContext {
        request_id: "forged".into(),
        principal: principal.into(),
        tenant: "acme".into(),
        action: "iam.create_key".into(),
        at_ms: 1,
    };
    let on_behalf = |credential: Option<&str>| {
        Some(OnBehalf {
            context: context("root"),
            credential: credential.map(str::to_string),
        })
    };
    let forged = vec![
        // No credential at all (the old, unchecked form).
        (
            "a bare identity command",
            ForwardRequest::Propose(vec![admin_key("f0000000000000a1")]),
        ),
        (
            "an identity command without a credential",
            ForwardRequest::ProposeChecked(vec![Forwarded {
                command: admin_key("f0000000000000a2"),
                on_behalf: on_behalf(None),
            }]),
        ),
        (
            "an identity command with a forged credential",
            ForwardRequest::ProposeChecked(vec![Forwarded {
                command: admin_key("f0000000000000a3"),
                on_behalf: on_behalf(Some("nxk_0000000000000000_forged")),
            }]),
        ),
        (
            "an identity command with a reader's credential",
            ForwardRequest::ProposeChecked(vec![Forwarded {
                command: admin_key("f0000000000000a4"),
                on_behalf: on_behalf(Some(&reader)),
            }]),
        ),
        (
            "an identity command wrapped in its own audit record",
            ForwardRequest::ProposeChecked(vec![Forwarded {
                command: Command {
                    tenant: "acme".into(),
                    op: Op::Audited {
                        context: context("root"),
                        op: Box::new(admin_key("f0000000000000a5").op),
                    },
                },
                on_behalf: on_behalf(Some(ROOT_KEY)),
            }]),
        ),
        (
            "a write of another tenant with acme's credential",
            ForwardRequest::ProposeChecked(vec![Forwarded {
                command: Command {
                    tenant: "default".into(),
                    op: admin_key("f0000000000000a6").op,
                },
                on_behalf: on_behalf(Some(&writer)),
            }]),
        ),
    ];
    for (what, request) in &forged {
        let reply = forward(as_member().await, request).await;
        match reply {
            Ok(Ok(ForwardReply::Responses(r))) => {
                assert_eq!(r.len(), 1, "{what}: {r:?}");
                let e = r[0].as_ref().expect_err(what);
                assert!(
                    matches!(
                        e,
                        NexusError::PermissionDenied(_) | NexusError::Unauthenticated(_)
                    ),
                    "{what}: {e:?}"
                );
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    // A membership change (a learner would receive every tenant's data) without the
    // credential of an administrator.
    let add = nexus_node::cluster::MembershipChange::AddLearner {
        id: 9,
        node: nexus_node::cluster::NexusNode {
            peer_addr: "127.0.0.1:1".into(),
            api_addr: "127.0.0.1:2".into(),
        },
    };
    for request in [
        ForwardRequest::Membership(add.clone()),
        ForwardRequest::MembershipChecked(add.clone(), on_behalf(Some(&writer))),
    ] {
        let reply = forward(as_member().await, &request).await;
        assert!(
            matches!(reply, Ok(Err(NexusError::PermissionDenied(_)))),
            "{request:?}: {reply:?}"
        );
    }
    let mut root_client = nodes[follower].client().await;
    let keys = root_client
        .iam
        .list_api_keys(pb::ListApiKeysRequest {
            tenant: "acme".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert!(
        keys.iter().all(|k| k.service_account != "intruder"),
        "no forged key was made: {keys:?}"
    );

    // An audit record a member writes gets the principal the leader finds, not the one it
    // claims: a forged "root" with no credential is recorded as anonymous.
    let record = ForwardRequest::ProposeChecked(vec![Forwarded {
        command: Command {
            tenant: "acme".into(),
            op: Op::Audit(nexus_node::audit::AuditRecordOp {
                context: context("root"),
                resource: "forged-record".into(),
                result: "ok".into(),
            }),
        },
        on_behalf: on_behalf(None),
    }]);
    let reply = forward(as_member().await, &record).await;
    assert!(
        matches!(&reply, Ok(Ok(ForwardReply::Responses(r))) if r.len() == 1 && r[0].is_ok()),
        "{reply:?}"
    );
    let tail = root_client
        .audit
        .tail(pb::AuditTailRequest {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    let forged_record = tail
        .iter()
        .find(|r| r.resource == "forged-record")
        .expect("the record is written");
    assert_eq!(forged_record.principal, "anonymous", "{forged_record:?}");
    assert_eq!(forged_record.tenant, "", "{forged_record:?}");

    // A real follower forwards its callers' writes with their credentials.
    let mut acme = nodes[follower].client_with(Some(&writer)).await;
    acme.memory
        .put(pb::PutRequest {
            namespace: "n".into(),
            key: "k".into(),
            value: "1".into(),
            ..Default::default()
        })
        .await
        .expect("a write through a follower");
    let tail = root_client
        .audit
        .tail(pb::AuditTailRequest {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    let write = tail
        .iter()
        .rev()
        .find(|r| r.action == "memory.put")
        .expect("the write is audited");
    assert_eq!(
        (write.principal.as_str(), write.tenant.as_str()),
        ("sa:writer", "acme")
    );
}
