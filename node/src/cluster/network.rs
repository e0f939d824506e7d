//! The Raft transport between nodes: openraft's RPCs over the internal gRPC service
//! `nexus.raft.v1.RaftService` on the peer port. Messages travel in the value codec (a format
//! byte, then postcard), so a node refuses a message format it does not know.
//!
//! One HTTP/2 connection per peer address, made lazily and shared by replication, heartbeats,
//! votes, snapshots and forwarded requests (`PeerChannels`). openraft 0.9 asks for a new
//! network client for every linearizable-read round (`ensure_linearizable` sends its
//! heartbeats through fresh clients), so a connection per client cost a TCP handshake, a
//! source-port search in `bind` and a TIME-WAIT socket per read round: most of a leader's CPU
//! under a read load. A transport failure is reported to openraft as `Unreachable`, which
//! makes it back off, and a remote Raft error is passed through as-is.

use std::time::Duration;

use nexus_proto::raft::v1::raft_service_client::RaftServiceClient;
use nexus_proto::raft::v1::raft_service_server::RaftService;
use nexus_proto::raft::v1::RaftMessage;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{de::DeserializeOwned, Serialize};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::types::{Forwarded, Machine, NexusNode, NodeId, Raft, Response, TypeConfig};
use crate::store::codec;
use crate::store::keys::GroupId;

/// Connect timeout to a peer; RPC deadlines come from openraft's `RPCOption`.
const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest message on the peer port (append batches and snapshot chunks stay below it).
pub const MAX_PEER_MESSAGE_BYTES: usize = 64 << 20;

/// Mutual TLS on the peer port: the node's certificate and key, and the CA that peers'
/// certificates must chain to. The same identity serves the peer port (`crate::tls`, which
/// reloads the files when they change) and dials other nodes (tonic's client TLS, rebuilt
/// from the current files; `PeerChannels` redials after a change), so a node without a
/// certificate from the cluster's CA can neither send a Raft message to a member nor be sent
/// one.
#[derive(Clone)]
pub struct PeerTls {
    tls: std::sync::Arc<crate::tls::ReloadingTls>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls")
            .field("generation", &self.generation())
            .finish()
    }
}

impl PeerTls {
    /// Reads the PEM files of `[peer_tls]`; `None` when none is set. Errors name the setting.
    pub fn load(config: &crate::config::PeerTlsConfig) -> anyhow::Result<Option<PeerTls>> {
        use crate::tls::{PemFile, TlsFiles};
        let files = [
            ("peer_tls.cert_file", &config.cert_file),
            ("peer_tls.key_file", &config.key_file),
            ("peer_tls.ca_file", &config.ca_file),
        ];
        if files.iter().all(|(_, f)| f.is_none()) {
            return Ok(None);
        }
        if let Some((name, _)) = files.iter().find(|(_, f)| f.is_none()) {
            anyhow::bail!("{name} is not set: peer TLS needs cert_file, key_file and ca_file");
        }
        let file = |i: usize| PemFile {
            setting: files[i].0,
            path: files[i].1.clone().expect("checked above"),
        };
        let tls = crate::tls::ReloadingTls::load(
            "peer port",
            TlsFiles {
                cert: file(0),
                key: file(1),
                client_ca: Some(file(2)),
            },
            &[b"h2"],
        )?;
        Ok(Some(PeerTls { tls }))
    }

    /// The peer port's server side: presents the node's certificate, requires a client
    /// certificate that chains to the CA.
    pub fn server(&self) -> &std::sync::Arc<crate::tls::ReloadingTls> {
        &self.tls
    }

    /// Counts loads of the files (see `crate::tls`).
    pub fn generation(&self) -> u64 {
        self.tls.pems().0
    }

    fn client(&self) -> ClientTlsConfig {
        let (_, pems) = self.tls.pems();
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(
                pems.client_ca.expect("peer TLS always has a CA"),
            ))
            .identity(Identity::from_pem(pems.cert, pems.key))
    }
}

/// The host of a peer address as membership records it (`HOST:PORT`, `[V6]:PORT`, or a URL).
pub fn host_of(addr: &str) -> &str {
    let rest = addr.split_once("://").map_or(addr, |(_, r)| r);
    let rest = rest.split('/').next().unwrap_or(rest);
    let host = match rest.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => rest,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Who may stay connected to the peer port once mutual TLS has verified the chain: a
/// certificate that names (DNS or IP SAN) the host of a current member's peer address, in the
/// membership this node knows (the latest configuration in its log, so a learner being added
/// is known to the leader before it connects). A certificate of the same CA is not enough.
/// A node that knows no membership yet (started with `--join`, waiting to be added) admits
/// any certificate of the CA: it holds nothing to leak, and the leader that adds it proves
/// itself as the server of its peer address. A member removed later keeps a connection it
/// already has until that connection drops.
pub fn member_admission<M: Machine>(raft: Raft<M>) -> crate::tls::Admission {
    std::sync::Arc::new(move |chain| {
        let refuse = |why: String| {
            crate::observe::metrics::PEER_REFUSALS
                .with_label_values(&["not a member"])
                .inc();
            Err(why)
        };
        let Some(leaf) = chain.first() else {
            return refuse("no client certificate".into());
        };
        let cert = match webpki::EndEntityCert::try_from(leaf) {
            Ok(c) => c,
            Err(e) => return refuse(format!("unreadable client certificate: {e:?}")),
        };
        let metrics = raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        let mut members = membership.nodes().peekable();
        if members.peek().is_none() {
            return Ok(());
        }
        for (_, node) in members {
            let Ok(name) = rustls::pki_types::ServerName::try_from(host_of(&node.peer_addr)) else {
                continue;
            };
            if cert.verify_is_valid_for_subject_name(&name).is_ok() {
                return Ok(());
            }
        }
        refuse("the certificate names no member's peer address".into())
    })
}

/// How this node connects to other nodes' peer ports: the one place where peer connections
/// are configured, for Raft messages and forwarded requests alike.
#[derive(Clone, Debug, Default)]
pub struct PeerTransport {
    /// Outgoing peer connections leave from this address: the IP of `--peer-addr` when it is a
    /// specific address (not 0.0.0.0 / ::), so that firewalls and the partition tests' proxy
    /// can tell which node a connection comes from.
    pub source_ip: Option<std::net::IpAddr>,
    /// Mutual TLS, when configured.
    pub tls: Option<PeerTls>,
}

impl PeerTransport {
    pub fn new(peer_addr: std::net::SocketAddr, tls: Option<PeerTls>) -> Self {
        let ip = peer_addr.ip();
        PeerTransport {
            source_ip: (!ip.is_unspecified()).then_some(ip),
            tls,
        }
    }

    /// A lazily connecting channel to a peer's address (`HOST:PORT` or a URL).
    pub fn channel(&self, addr: &str) -> Result<Channel, String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let uri = match addr.split_once("://") {
            Some((_, rest)) => format!("{scheme}://{rest}"),
            None => format!("{scheme}://{addr}"),
        };
        let mut endpoint = Endpoint::from_shared(uri)
            .map_err(|e| format!("bad peer address {addr}: {e}"))?
            .connect_timeout(PEER_CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .local_address(self.source_ip);
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.client())
                .map_err(|e| format!("peer TLS for {addr}: {e}"))?;
        }
        Ok(endpoint.connect_lazy())
    }
}

pub struct NetworkFactory<M> {
    pub peers: PeerChannels,
    /// The group whose Raft messages the clients carry.
    pub group: GroupId,
    pub machine: std::marker::PhantomData<M>,
}

impl<M: Machine> RaftNetworkFactory<TypeConfig<M>> for NetworkFactory<M> {
    type Network = PeerClient<M>;

    async fn new_client(&mut self, target: NodeId, node: &NexusNode) -> Self::Network {
        PeerClient {
            target,
            node: node.clone(),
            peers: self.peers.clone(),
            group: self.group,
            machine: std::marker::PhantomData,
        }
    }
}

pub struct PeerClient<M> {
    target: NodeId,
    node: NexusNode,
    peers: PeerChannels,
    group: GroupId,
    machine: std::marker::PhantomData<M>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

impl<M: Machine> PeerClient<M> {
    async fn call<Req, Resp, E>(
        &mut self,
        req: &Req,
        option: &RPCOption,
        rpc: Rpc,
    ) -> Result<Resp, RPCError<NodeId, NexusNode, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let mut client = self
            .peers
            .client(&self.node.peer_addr)
            .map_err(|e| Unreachable::new(&TransportError(e)))?;
        let mut request = tonic::Request::new(RaftMessage {
            payload: codec::encode(req),
            group: self.group,
        });
        request.set_timeout(option.hard_ttl());
        let result = match rpc {
            Rpc::Append => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::Snapshot => client.install_snapshot(request).await,
        };
        let reply = match result {
            Ok(r) => r.into_inner(),
            Err(status) => {
                self.peers.on_error(&self.node.peer_addr, &status);
                let e = TransportError(format!("{rpc:?} to node {}: {status}", self.target));
                return Err(match status.code() {
                    tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Cancelled => RPCError::Unreachable(Unreachable::new(&e)),
                    _ => RPCError::Network(NetworkError::new(&e)),
                });
            }
        };
        let decoded: Result<Resp, E> =
            codec::decode(&reply.payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        decoded.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

/// `InstallSnapshotRequest` on the wire, with its data as a byte string. Postcard writes a
/// `Vec<u8>` and a byte string identically (a varint length, then the bytes), so this is the
/// same encoding as openraft's type, but serde handles the data in one call instead of one
/// call per byte: 20 ms per 256 KiB chunk in a debug build became 20 µs, and a 30 MB snapshot
/// took minutes of a follower's CPU before.
#[derive(Serialize, serde::Deserialize)]
struct SnapshotChunk {
    vote: openraft::Vote<NodeId>,
    meta: super::types::SnapshotMeta,
    offset: u64,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
    done: bool,
}

impl<M: Machine> From<InstallSnapshotRequest<TypeConfig<M>>> for SnapshotChunk {
    fn from(r: InstallSnapshotRequest<TypeConfig<M>>) -> Self {
        Self {
            vote: r.vote,
            meta: r.meta,
            offset: r.offset,
            data: r.data,
            done: r.done,
        }
    }
}

impl<M: Machine> From<SnapshotChunk> for InstallSnapshotRequest<TypeConfig<M>> {
    fn from(c: SnapshotChunk) -> Self {
        Self {
            vote: c.vote,
            meta: c.meta,
            offset: c.offset,
            data: c.data,
            done: c.done,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Rpc {
    Append,
    Vote,
    Snapshot,
}

impl<M: Machine> RaftNetwork<TypeConfig<M>> for PeerClient<M> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig<M>>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NexusNode, RaftError<NodeId>>> {
        self.call(&rpc, &option, Rpc::Append).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig<M>>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, NexusNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(&SnapshotChunk::from(rpc), &option, Rpc::Snapshot)
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NexusNode, RaftError<NodeId>>> {
        self.call(&rpc, &option, Rpc::Vote).await
    }
}

/// The server side of the peer port: hands each RPC to this node's member of the group the
/// message names.
pub struct PeerService<M: Machine> {
    groups: std::sync::Arc<super::Groups<M>>,
}

impl<M: Machine> PeerService<M> {
    pub fn new(groups: std::sync::Arc<super::Groups<M>>) -> Self {
        Self { groups }
    }

    /// The group a message is for, and the message.
    fn route<T: DeserializeOwned>(
        &self,
        request: tonic::Request<RaftMessage>,
    ) -> Result<(std::sync::Arc<super::ClusterNode<M>>, T), tonic::Status> {
        let message = request.into_inner();
        let node = self.groups.get(message.group).ok_or_else(|| {
            tonic::Status::not_found(format!(
                "this node is no member of raft group {}",
                message.group
            ))
        })?;
        let payload = codec::decode(&message.payload)
            .map_err(|e| tonic::Status::invalid_argument(format!("payload: {e}")))?;
        Ok((node, payload))
    }
}

/// What a follower asks of the leader on behalf of its clients.
#[derive(Debug, Serialize, serde::Deserialize)]
#[serde(bound = "")]
pub enum ForwardRequest<M: Machine> {
    /// Propose these commands as one entry.
    Propose(Vec<M::Command>),
    /// Confirm leadership and return the read index.
    ReadIndex,
    /// Change the membership.
    Membership(super::MembershipChange),
    /// Hand leadership to this node (sent to the leader).
    TransferLeader(NodeId),
    /// Do not start elections for this many milliseconds (sent by a leader handing over).
    HoldElections(u64),
    /// Campaign now (sent by a leader handing over to this node).
    Elect,
    /// Propose these commands as one entry, each with the credential of the request it
    /// serves, for the leader to check (`ForwardGate`). Appended last: a variant's position
    /// is part of the encoding. `Propose` (from members of an older build) goes through the
    /// same gate without credentials.
    ProposeChecked(Vec<Forwarded<M>>),
    /// `Membership`, with the credential of the request behind it (`ForwardGate`).
    MembershipChecked(super::MembershipChange, Option<M::Behalf>),
    /// `TransferLeader`, with the credential of the request behind it.
    TransferLeaderChecked(NodeId, Option<M::Behalf>),
}

#[derive(Debug, Serialize, serde::Deserialize)]
#[serde(bound = "")]
pub enum ForwardReply<M: Machine> {
    Responses(Vec<Response<M>>),
    ReadIndex(u64),
    Done,
}

/// Connections to other nodes' peer ports: one lazily made HTTP/2 channel per address, shared
/// by every Raft message and forwarded request to it (a cheap clone per call).
#[derive(Clone)]
pub struct PeerChannels {
    transport: PeerTransport,
    /// The channels, and the TLS files' generation they were made with.
    channels: std::sync::Arc<std::sync::Mutex<(u64, std::collections::HashMap<String, Channel>)>>,
}

impl PeerChannels {
    pub fn new(transport: PeerTransport) -> Self {
        PeerChannels {
            transport,
            channels: Default::default(),
        }
    }

    fn client(&self, peer_addr: &str) -> Result<RaftServiceClient<Channel>, String> {
        let mut guard = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let (generation, channels) = &mut *guard;
        // New certificate files: new connections present them (open ones keep their session).
        if let Some(tls) = &self.transport.tls {
            let now = tls.generation();
            if now != *generation {
                channels.clear();
                *generation = now;
            }
        }
        let channel = match channels.get(peer_addr) {
            Some(c) => c.clone(),
            None => {
                let c = self.transport.channel(peer_addr)?;
                channels.insert(peer_addr.to_string(), c.clone());
                c
            }
        };
        Ok(RaftServiceClient::new(channel)
            .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES))
    }

    /// After a failed call: a connection-level failure drops the channel, so the next call
    /// dials afresh (tonic would redial too, but a new channel also drops whatever requests
    /// are queued on a connection that went bad). Timeouts keep it: under load or while a
    /// peer is paused they say nothing about the connection.
    fn on_error(&self, peer_addr: &str, status: &tonic::Status) {
        if status.code() == tonic::Code::Unavailable {
            let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
            channels.1.remove(peer_addr);
        }
    }

    /// Sends a forwarded request to the leader of `group` at `peer_addr`.
    pub async fn forward<M: Machine>(
        &self,
        peer_addr: &str,
        group: GroupId,
        request: &ForwardRequest<M>,
        timeout: Duration,
    ) -> Result<ForwardReply<M>, crate::error::NexusError> {
        use crate::error::NexusError;
        let mut client = self.client(peer_addr).map_err(NexusError::internal)?;
        let mut req = tonic::Request::new(RaftMessage {
            payload: codec::encode(request),
            group,
        });
        req.set_timeout(timeout);
        let reply = client.forward(req).await.map_err(|s| {
            self.on_error(peer_addr, &s);
            NexusError::Unavailable {
                message: format!("forwarding to the leader at {peer_addr}: {}", s.message()),
                leader_id: None,
                leader_addr: None,
            }
        })?;
        let decoded: Result<ForwardReply<M>, NexusError> =
            codec::decode(&reply.into_inner().payload).map_err(NexusError::internal)?;
        decoded
    }
}

fn reply<T: Serialize>(value: &T) -> Result<tonic::Response<RaftMessage>, tonic::Status> {
    Ok(tonic::Response::new(RaftMessage {
        payload: codec::encode(value),
        group: 0,
    }))
}

#[tonic::async_trait]
impl<M: Machine> RaftService for PeerService<M> {
    async fn append_entries(
        &self,
        request: tonic::Request<RaftMessage>,
    ) -> Result<tonic::Response<RaftMessage>, tonic::Status> {
        let _timer = crate::observe::metrics::PEER_RPC_SECONDS
            .with_label_values(&["append_entries"])
            .start_timer();
        let (node, rpc): (_, AppendEntriesRequest<TypeConfig<M>>) = self.route(request)?;
        reply(&node.raft.append_entries(rpc).await)
    }

    async fn vote(
        &self,
        request: tonic::Request<RaftMessage>,
    ) -> Result<tonic::Response<RaftMessage>, tonic::Status> {
        let _timer = crate::observe::metrics::PEER_RPC_SECONDS
            .with_label_values(&["vote"])
            .start_timer();
        let (node, rpc): (_, VoteRequest<NodeId>) = self.route(request)?;
        reply(&node.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: tonic::Request<RaftMessage>,
    ) -> Result<tonic::Response<RaftMessage>, tonic::Status> {
        let _timer = crate::observe::metrics::PEER_RPC_SECONDS
            .with_label_values(&["install_snapshot"])
            .start_timer();
        let (node, chunk): (_, SnapshotChunk) = self.route(request)?;
        let rpc: InstallSnapshotRequest<TypeConfig<M>> = chunk.into();
        // A chunk from the leader this node follows is its heartbeat (see `receiving_snapshot`).
        let current = node.raft.metrics().borrow().vote;
        if rpc.vote.is_committed() && rpc.vote >= current {
            reply(
                &node
                    .receiving_snapshot(node.raft.install_snapshot(rpc))
                    .await,
            )
        } else {
            reply(&node.raft.install_snapshot(rpc).await)
        }
    }

    async fn forward(
        &self,
        request: tonic::Request<RaftMessage>,
    ) -> Result<tonic::Response<RaftMessage>, tonic::Status> {
        let _timer = crate::observe::metrics::PEER_RPC_SECONDS
            .with_label_values(&["forward"])
            .start_timer();
        let (node, req): (_, ForwardRequest<M>) = self.route(request)?;
        // Served locally only: a request is forwarded at most once.
        let result = match req {
            ForwardRequest::Propose(commands) => node
                .propose_forwarded(
                    commands
                        .into_iter()
                        .map(|command| Forwarded {
                            command,
                            on_behalf: None,
                        })
                        .collect(),
                )
                .await
                .map(ForwardReply::Responses),
            ForwardRequest::ProposeChecked(items) => node
                .propose_forwarded(items)
                .await
                .map(ForwardReply::Responses),
            ForwardRequest::Membership(change) => {
                node.forwarded_cluster_change(None, node.change_membership_local(change))
                    .await
            }
            ForwardRequest::MembershipChecked(change, on_behalf) => {
                node.forwarded_cluster_change(on_behalf, node.change_membership_local(change))
                    .await
            }
            ForwardRequest::ReadIndex => node.read_index_local().await.map(ForwardReply::ReadIndex),
            ForwardRequest::TransferLeader(to) => {
                node.forwarded_cluster_change(None, node.transfer_leader_local(to))
                    .await
            }
            ForwardRequest::TransferLeaderChecked(to, on_behalf) => {
                node.forwarded_cluster_change(on_behalf, node.transfer_leader_local(to))
                    .await
            }
            ForwardRequest::HoldElections(millis) => {
                // Bounded by `max_election_hold` whatever the member asks.
                node.hold_elections(Duration::from_millis(millis));
                Ok(ForwardReply::Done)
            }
            ForwardRequest::Elect => node.campaign().await.map(|()| ForwardReply::Done),
        };
        reply(&result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_chunk_is_encoded_as_openraft_encodes_it() {
        let meta = super::super::types::SnapshotMeta {
            last_log_id: Some(openraft::LogId::new(
                openraft::CommittedLeaderId::new(3, 2),
                77,
            )),
            last_membership: Default::default(),
            snapshot_id: "3-77-abc".into(),
        };
        let req = InstallSnapshotRequest::<TypeConfig<super::super::types::test_machine::Puts>> {
            vote: openraft::Vote::new_committed(3, 2),
            meta,
            offset: 1 << 20,
            data: (0..=255u8).cycle().take(70_000).collect(),
            done: true,
        };
        let ours = codec::encode(&SnapshotChunk::from(req.clone()));
        assert_eq!(
            ours,
            codec::encode(&req),
            "nodes of either build read each other's chunks"
        );
        let back: InstallSnapshotRequest<TypeConfig<super::super::types::test_machine::Puts>> =
            codec::decode::<SnapshotChunk>(&ours).unwrap().into();
        assert_eq!(back, req);
    }
}
