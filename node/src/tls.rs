//! TLS from PEM files, reloaded without a restart: the gRPC API (`[tls]`), the HTTP port
//! (probes and metrics, same certificate) and the peer port (`[peer_tls]`, mutual).
//!
//! tonic's own TLS (`Server::tls_config`) reads its identity once, so the listeners here do
//! their own handshakes with tokio-rustls and hand finished TLS streams to tonic
//! (`serve_with_incoming_shutdown`) and axum (`Listener`). Before each handshake the acceptor
//! takes the current `rustls::ServerConfig` from a [`ReloadingTls`], which re-reads the files
//! at most once a second and rebuilds the configuration when their bytes changed. A change
//! that does not load (a key that does not match its certificate, half-written files, a bad
//! PEM) is logged and counted (`nexus_tls_reloads_total{result="error"}`) and the previous
//! configuration stays in use, so a botched renewal never takes a node off the air. Existing
//! connections keep the session they made; new ones get the new certificate. Outgoing peer
//! connections take the new identity too: `PeerChannels` redials when the generation changes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Files are looked at again at most this often.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Decides, after a handshake, whether the client's certificate chain (leaf first) may stay
/// connected; the error says why not (logged). The peer port admits only current members.
pub type Admission = Arc<dyn Fn(&[CertificateDer<'static>]) -> Result<(), String> + Send + Sync>;

/// A PEM file and the setting that names it (for errors).
#[derive(Clone, Debug)]
pub struct PemFile {
    pub setting: &'static str,
    pub path: PathBuf,
}

/// The files of one TLS identity.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PemFile,
    pub key: PemFile,
    /// Client certificates must chain to this CA (mutual TLS); `None`: none are asked for.
    pub client_ca: Option<PemFile>,
}

/// The bytes of the files, as read at one time.
#[derive(Clone, PartialEq, Eq)]
pub struct Pems {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    pub client_ca: Option<Vec<u8>>,
}

struct Loaded {
    pems: Pems,
    server: Arc<ServerConfig>,
    /// Counts successful loads: 1 at start, +1 per reload.
    generation: u64,
}

/// A server TLS configuration that follows its files.
pub struct ReloadingTls {
    /// What it secures, for logs: "gRPC API", "HTTP", "peer port".
    what: &'static str,
    files: TlsFiles,
    alpn: Vec<Vec<u8>>,
    state: Mutex<(Instant, Arc<Loaded>)>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A builder of the HTTP clients that leave the node (OIDC discovery, embeddings,
/// `http.request`, mounted MCP servers): reqwest over rustls on *ring*, the build's one crypto
/// provider (reqwest's own would be aws-lc, a second C library to build), checking
/// certificates with the platform's verifier (the system's roots).
pub fn http_client_builder() -> reqwest::ClientBuilder {
    // reqwest, built without a provider, takes the process's default; a second install is a
    // harmless no-op.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

impl ReloadingTls {
    /// Loads the files now; an error names the setting and the file.
    pub fn load(
        what: &'static str,
        files: TlsFiles,
        alpn: &[&[u8]],
    ) -> anyhow::Result<Arc<ReloadingTls>> {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let pems = read(&files)?;
        let server = Arc::new(build(&files, &pems, &alpn)?);
        Ok(Arc::new(ReloadingTls {
            what,
            files,
            alpn,
            state: Mutex::new((
                Instant::now(),
                Arc::new(Loaded {
                    pems,
                    server,
                    generation: 1,
                }),
            )),
        }))
    }

    /// The same files for another listener (another ALPN, or without client certificates).
    pub fn derive(
        &self,
        what: &'static str,
        client_ca: bool,
        alpn: &[&[u8]],
    ) -> anyhow::Result<Arc<ReloadingTls>> {
        let mut files = self.files.clone();
        if !client_ca {
            files.client_ca = None;
        }
        Self::load(what, files, alpn)
    }

    fn current(&self) -> Arc<Loaded> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.0.elapsed() >= CHECK_EVERY {
            state.0 = Instant::now();
            let reloaded = read(&self.files).and_then(|pems| {
                if pems == state.1.pems {
                    return Ok(None);
                }
                let server = build(&self.files, &pems, &self.alpn)?;
                Ok(Some((pems, server)))
            });
            match reloaded {
                Ok(None) => {}
                Ok(Some((pems, server))) => {
                    let generation = state.1.generation + 1;
                    state.1 = Arc::new(Loaded {
                        pems,
                        server: Arc::new(server),
                        generation,
                    });
                    crate::observe::metrics::TLS_RELOADS
                        .with_label_values(&[self.what, "ok"])
                        .inc();
                    tracing::info!(
                        listener = self.what,
                        generation,
                        "reloaded TLS certificate files"
                    );
                }
                Err(e) => {
                    crate::observe::metrics::TLS_RELOADS
                        .with_label_values(&[self.what, "error"])
                        .inc();
                    tracing::warn!(listener = self.what, error = %format!("{e:#}"), "TLS files changed but do not load; still using the previous ones");
                }
            }
        }
        state.1.clone()
    }

    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.current().server.clone()
    }

    /// The current files' bytes and their generation (for client identities).
    pub fn pems(&self) -> (u64, Pems) {
        let loaded = self.current();
        (loaded.generation, loaded.pems.clone())
    }

    /// Accepts connections on `listener` and yields them once their TLS handshake is done.
    /// Handshakes run concurrently; a failed one is logged and dropped. Stops accepting when
    /// the receiver is dropped (the server shut down).
    pub fn accept(
        self: &Arc<Self>,
        listener: TcpListener,
    ) -> tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)> {
        self.accept_admitting(listener, None)
    }

    /// [`accept`](Self::accept), and a connection whose client certificate `admit` refuses
    /// is closed right after its handshake.
    pub fn accept_admitting(
        self: &Arc<Self>,
        listener: TcpListener,
        admit: Option<Admission>,
    ) -> tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let tls = self.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    r = listener.accept() => r,
                    _ = tx.closed() => return,
                };
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: do not spin.
                        tracing::warn!(listener = tls.what, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = TlsAcceptor::from(tls.server_config());
                let tx = tx.clone();
                let what = tls.what;
                let admit = admit.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            if let Some(admit) = &admit {
                                let chain = stream.get_ref().1.peer_certificates().unwrap_or(&[]);
                                if let Err(why) = admit(chain) {
                                    tracing::warn!(listener = what, %peer, reason = %why, "refused a connection after its TLS handshake");
                                    return;
                                }
                            }
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(listener = what, %peer, error = %e, "TLS handshake failed")
                        }
                        Err(_) => {
                            tracing::debug!(listener = what, %peer, "TLS handshake timed out")
                        }
                    }
                });
            }
        });
        rx
    }

    /// [`accept_admitting`](Self::accept_admitting) as the stream of connections tonic
    /// serves.
    pub fn incoming(
        self: &Arc<Self>,
        listener: TcpListener,
        admit: Option<Admission>,
    ) -> impl tokio_stream::Stream<Item = Result<TlsStream<TcpStream>, std::io::Error>> {
        use tokio_stream::StreamExt;
        tokio_stream::wrappers::ReceiverStream::new(self.accept_admitting(listener, admit))
            .map(|(s, _)| Ok(s))
    }
}

/// A TLS listener for `axum::serve`.
pub struct AxumTlsListener {
    rx: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl AxumTlsListener {
    pub fn new(tls: &Arc<ReloadingTls>, listener: TcpListener) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        Ok(AxumTlsListener {
            rx: tls.accept(listener),
            local,
        })
    }
}

impl axum::serve::Listener for AxumTlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The acceptor stops only when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

fn read_one(f: &PemFile) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(&f.path)
        .with_context(|| format!("{}: reading {}", f.setting, f.path.display()))?;
    if !String::from_utf8_lossy(&bytes).contains("-----BEGIN ") {
        anyhow::bail!("{}: {} is not a PEM file", f.setting, f.path.display());
    }
    Ok(bytes)
}

fn read(files: &TlsFiles) -> anyhow::Result<Pems> {
    Ok(Pems {
        cert: read_one(&files.cert)?,
        key: read_one(&files.key)?,
        client_ca: files.client_ca.as_ref().map(read_one).transpose()?,
    })
}

/// The certificates of a PEM file; an error names the setting.
pub fn certificates(setting: &str, pem: &[u8]) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{setting}: not a PEM certificate file"))?;
    if certs.is_empty() {
        anyhow::bail!("{setting}: holds no certificate");
    }
    Ok(certs)
}

fn build(files: &TlsFiles, pems: &Pems, alpn: &[Vec<u8>]) -> anyhow::Result<ServerConfig> {
    let chain = certificates(files.cert.setting, &pems.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&pems.key)
        .with_context(|| format!("{}: holds no PEM private key", files.key.setting))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match (&files.client_ca, &pems.client_ca) {
        (Some(f), Some(ca)) => {
            let mut roots = RootCertStore::empty();
            for c in certificates(f.setting, ca)? {
                roots
                    .add(c)
                    .with_context(|| format!("{}: a CA certificate is invalid", f.setting))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .with_context(|| format!("{}: cannot verify clients with it", f.setting))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).with_context(|| {
        format!(
            "{} and {} do not make a certificate and its key",
            files.cert.setting, files.key.setting
        )
    })?;
    config.alpn_protocols = alpn.to_vec();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(name: &str) -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        (c.cert.pem(), c.key_pair.serialize_pem())
    }

    #[test]
    fn a_changed_pair_is_loaded_and_a_broken_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let file = |setting: &'static str, name: &str| PemFile {
            setting,
            path: dir.path().join(name),
        };
        let files = TlsFiles {
            cert: file("tls.cert_file", "c.pem"),
            key: file("tls.key_file", "k.pem"),
            client_ca: None,
        };
        let (c1, k1) = identity("one");
        std::fs::write(&files.cert.path, &c1).unwrap();
        std::fs::write(&files.key.path, &k1).unwrap();
        let tls = ReloadingTls::load("test", files.clone(), &[b"h2"]).unwrap();
        assert_eq!(tls.pems().0, 1);
        assert_eq!(tls.server_config().alpn_protocols, vec![b"h2".to_vec()]);

        // A new certificate with the old key: refused, the old pair stays.
        let (c2, k2) = identity("two");
        std::fs::write(&files.cert.path, &c2).unwrap();
        std::thread::sleep(CHECK_EVERY);
        let (generation, pems) = tls.pems();
        assert_eq!((generation, pems.cert), (1, c1.clone().into_bytes()));
        // With its key: loaded.
        std::fs::write(&files.key.path, &k2).unwrap();
        std::thread::sleep(CHECK_EVERY);
        let (generation, pems) = tls.pems();
        assert_eq!((generation, pems.cert), (2, c2.into_bytes()));

        // Errors at start name the setting.
        std::fs::write(&files.key.path, "not pem").unwrap();
        let e = ReloadingTls::load("test", files, &[]).err().unwrap();
        assert!(format!("{e:#}").contains("tls.key_file"), "{e:#}");
    }
}
