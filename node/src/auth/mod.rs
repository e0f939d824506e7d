//! Who is calling. Every gRPC service is wrapped in [`Authenticator::interceptor`], which turns
//! the request's credentials into a [`Principal`] (tenant, subject, grants) stored in the
//! request's extensions; `api::grpc::handle` then checks the method's permission and hands
//! the principal to the handler. Handlers take the tenant only from the principal, never from
//! a request body.
//!
//! Credentials: `authorization: Bearer <token>`, where the token is
//! - the root key (`auth.root_key_env` or `auth.root_key_file`): tenant `default`, every
//!   permission including the system ones (tenants, cluster membership). It bootstraps the
//!   first tenants and keys.
//! - an API key `nxk_<id>_<secret>` of a service account: its tenant, and the grants of the
//!   roles bound to `sa:<name>` there.
//!
//! With `auth.enabled = false` (the default) every request runs as tenant `default` with full
//! rights, and `nexus serve` refuses to listen on anything but loopback.

pub mod failures;
mod forward;
pub mod oidc;
pub mod quota;

use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::command::Cluster;
use crate::config::AuthConfig;
use crate::error::NexusError;
pub use crate::iam::principal::{
    new_api_key, NewKey, Principal, DEFAULT_TENANT, KEY_PREFIX, LOCAL_SUBJECT,
};
use crate::iam::{self, rbac::Grants, TenantState};
use crate::store::Store;

/// Shortest root key accepted.
pub const MIN_ROOT_KEY_CHARS: usize = 32;

/// A cached authentication: current while the identity generation has not moved and the
/// key has not expired.
struct CachedPrincipal {
    principal: Principal,
    generation: u64,
    /// 0 = never.
    expires_at_ms: i64,
}

/// Longest excerpt of an unverified token claim in an error or a record.
pub(crate) const MAX_UNVERIFIED_EXCERPT_CHARS: usize = 64;

/// Most principals and tenants' limits cached; past it the cache starts over.
const MAX_CACHED: usize = 10_000;

/// Most credentials remembered for login records; past it, expired ones are forgotten (and
/// if all are recent, all are: a few duplicate login records, never unbounded memory).
const MAX_REMEMBERED_LOGINS: usize = 100_000;

fn bearer_value(value: &tonic::metadata::MetadataValue<tonic::metadata::Ascii>) -> Option<&str> {
    value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

/// The bearer token of a request, if it sends one.
pub fn bearer_token(metadata: &tonic::metadata::MetadataMap) -> Option<&str> {
    bearer_value(metadata.get("authorization")?)
}

pub struct Authenticator {
    enabled: bool,
    root_sha256: Option<[u8; 32]>,
    issuers: Vec<oidc::Issuer>,
    limiter: quota::RateLimiter,
    store: Store,
    node: Arc<Cluster>,
    /// Principals of API keys by SHA-256 of the token, with the identity
    /// generation they were read at and the key's expiry (see `authenticate_token`).
    principals: std::sync::Mutex<std::collections::HashMap<[u8; 32], CachedPrincipal>>,
    /// Tenants' limits, with the identity generation they were read at.
    limits: std::sync::Mutex<std::collections::HashMap<String, (u64, iam::TenantLimits)>>,
    /// Credentials (SHA-256 of the token) that logged in on this node, and when.
    logins: std::sync::Mutex<std::collections::HashMap<[u8; 32], std::time::Instant>>,
    login_window: std::time::Duration,
    /// Failed authentications per source address.
    failures: failures::FailureLimiter,
    /// Denied requests, counted and audited once per window.
    denials: Arc<crate::service::denials::Denials>,
    /// How long a refusal for bad credentials waits before it is answered.
    failure_delay: std::time::Duration,
}

/// What the interceptor leaves in a request's extensions: the authenticator, which
/// `api::grpc::handle` asks who is calling (asynchronously: an OIDC issuer's keys may need
/// fetching), and the node to record a denial with.
#[derive(Clone)]
pub struct AuthHandle {
    pub auth: Arc<Authenticator>,
}

impl AuthHandle {
    pub fn node(&self) -> &Arc<Cluster> {
        self.auth.node()
    }
}

fn unauthenticated(why: &str) -> NexusError {
    NexusError::Unauthenticated(format!(
        "{why}: send `authorization: Bearer <API key>` (nexusctl: --token or NEXUS_TOKEN)"
    ))
}

impl Authenticator {
    /// Reads the root key when authentication is on. A root key that is configured but
    /// missing or short is an error: a node must not start with a guessable bootstrap key.
    pub fn from_config(
        config: &AuthConfig,
        quotas: &crate::config::QuotaConfig,
        node: Arc<Cluster>,
    ) -> anyhow::Result<Arc<Self>> {
        let mut root = None;
        if config.enabled {
            let from_file = (!config.root_key_file.as_os_str().is_empty())
                .then(|| std::fs::read_to_string(&config.root_key_file))
                .transpose()
                .map_err(|e| {
                    anyhow::anyhow!(
                        "reading auth.root_key_file {}: {e}",
                        config.root_key_file.display()
                    )
                })?;
            let key = from_file.or_else(|| std::env::var(&config.root_key_env).ok());
            if let Some(key) = key.map(|k| k.trim().to_string()).filter(|k| !k.is_empty()) {
                if key.chars().count() < MIN_ROOT_KEY_CHARS {
                    anyhow::bail!(
                        "the root key is {} characters; at least {MIN_ROOT_KEY_CHARS} are needed (e.g. `openssl rand -base64 32`)",
                        key.chars().count()
                    );
                }
                root = Some(Sha256::digest(key.as_bytes()).into());
            } else {
                tracing::warn!(
                    env = %config.root_key_env,
                    "authentication is on without a root key: only existing API keys can call"
                );
            }
        }
        if !config.enabled && !config.oidc.is_empty() {
            anyhow::bail!("auth.oidc names issuers but auth.enabled is false: turn it on");
        }
        let issuers = config
            .oidc
            .iter()
            .map(oidc::Issuer::new)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let denials = Arc::new(crate::service::denials::Denials::default());
        if config.enabled {
            denials.start(
                node.clone(),
                std::time::Duration::from_secs(config.denial_window_secs),
            );
        }
        Ok(Arc::new(Authenticator {
            failures: failures::FailureLimiter::new(
                config.failures_per_source_per_second,
                config.failures_per_source_burst,
            ),
            denials,
            failure_delay: std::time::Duration::from_millis(config.failure_delay_ms),
            enabled: config.enabled,
            root_sha256: root,
            issuers,
            limiter: quota::RateLimiter::new(quotas),
            store: node.store.clone(),
            node,
            principals: Default::default(),
            limits: Default::default(),
            logins: Default::default(),
            login_window: std::time::Duration::from_secs(config.login_window_secs),
        }))
    }

    /// The node whose identities this authenticates against.
    pub fn node(&self) -> &Arc<Cluster> {
        &self.node
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The OIDC issuers whose tokens this node accepts (for the MCP protected-resource
    /// metadata).
    pub fn oidc_issuers(&self) -> Vec<String> {
        self.issuers
            .iter()
            .map(|i| i.issuer().to_string())
            .collect()
    }

    /// Where denied requests are counted (see `service::denials`).
    pub fn denials(&self) -> &crate::service::denials::Denials {
        &self.denials
    }

    /// Before authenticating: a source over its failed-authentication rate is refused here,
    /// without a store read, unless its credential is one this node already knows good (the
    /// root key, or an API key in the principal cache), so a client behind the same address
    /// as an attacker keeps working.
    pub fn preflight(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        source: Option<std::net::IpAddr>,
    ) -> Result<(), NexusError> {
        let (true, Some(source)) = (self.enabled, source) else {
            return Ok(());
        };
        let Err(refused) = self.failures.check(source) else {
            return Ok(());
        };
        let known_good = bearer_token(metadata).is_some_and(|token| {
            let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            let root = self
                .root_sha256
                .as_ref()
                .is_some_and(|r| bool::from(r.ct_eq(&digest)));
            root || self.cached_principal(&digest).is_some()
        });
        if known_good {
            Ok(())
        } else {
            Err(refused)
        }
    }

    /// How long to hold the answer to a request refused for `e` (see `auth.failure_delay_ms`):
    /// bad credentials and sources over their failure rate; nothing else.
    pub fn refusal_delay(&self, e: &NexusError) -> Option<std::time::Duration> {
        let slowed = match e {
            NexusError::Unauthenticated(_) => true,
            NexusError::ResourceExhausted { limit, .. } => {
                limit == "auth.failures_per_source_per_second"
            }
            _ => false,
        };
        (self.enabled && slowed && !self.failure_delay.is_zero()).then_some(self.failure_delay)
    }

    /// The cached principal of a token's SHA-256, while it is current: read at this node's
    /// identity generation and not past the key's expiry.
    fn cached_principal(&self, digest: &[u8; 32]) -> Option<Principal> {
        let generation = self.store.identity_generation();
        let cache = self.principals.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(digest)
            .filter(|c| {
                c.generation == generation
                    && (c.expires_at_ms == 0 || crate::memory::now_ms() < c.expires_at_ms)
            })
            .map(|c| c.principal.clone())
    }

    /// After a failed authentication from `source`.
    pub fn failed(&self, source: Option<std::net::IpAddr>) {
        if let (true, Some(source)) = (self.enabled, source) {
            self.failures.charge(source);
        }
    }

    /// Ok when the principal's tenant is within its request rate (root is exempt).
    pub fn admit(&self, principal: &Principal) -> Result<(), NexusError> {
        if principal.grants.is_root() && principal.subject != LOCAL_SUBJECT {
            return Ok(());
        }
        let limits = self.tenant_limits(&principal.tenant)?;
        self.limiter
            .check(&principal.tenant, limits.requests_per_second, limits.burst)
    }

    /// After a successful authentication: whether it is a login, i.e. the credential's first
    /// use on this node in `auth.login_window_secs`, and if so what the credential is ("key/<id>",
    /// "oidc/<issuer>", "root key"), for the audit log.
    pub fn login(&self, metadata: &tonic::metadata::MetadataMap) -> Option<String> {
        let token = bearer_token(metadata)?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = std::time::Instant::now();
        {
            let mut logins = self.logins.lock().unwrap_or_else(|p| p.into_inner());
            if logins
                .get(&digest)
                .is_some_and(|at| now.duration_since(*at) < self.login_window)
            {
                return None;
            }
            if logins.len() >= MAX_REMEMBERED_LOGINS {
                logins.retain(|_, at| now.duration_since(*at) < self.login_window);
                if logins.len() >= MAX_REMEMBERED_LOGINS {
                    logins.clear();
                }
            }
            logins.insert(digest, now);
        }
        Some(if let Some(rest) = token.strip_prefix(KEY_PREFIX) {
            format!("key/{}", rest.split('_').next().unwrap_or_default())
        } else if let Some(iss) = oidc::unverified_issuer(token) {
            format!("oidc/{iss}")
        } else {
            "root key".to_string()
        })
    }

    /// The principal of a request's metadata.
    pub async fn authenticate(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Principal, NexusError> {
        if !self.enabled {
            return Ok(Principal::local());
        }
        let Some(value) = metadata.get("authorization") else {
            return Err(unauthenticated("no credentials"));
        };
        let token = bearer_value(value)
            .ok_or_else(|| unauthenticated("the authorization header is not `Bearer <token>`"))?;
        self.authenticate_token(token).await
    }

    /// A tenant's limits, cached until identities change.
    fn tenant_limits(&self, tenant: &str) -> Result<iam::TenantLimits, NexusError> {
        let generation = self.store.identity_generation();
        if let Some((g, l)) = self
            .limits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
        {
            if *g == generation {
                return Ok(*l);
            }
        }
        let l = iam::limits(&self.store, tenant)?;
        let mut cache = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(tenant.to_string(), (generation, l));
        Ok(l)
    }

    /// The principal of a bearer token.
    ///
    /// An API key's principal is cached by the token's SHA-256 (the token itself is not
    /// kept): an authentication reads the key index, the key, the tenant, the principal's
    /// bindings and custom roles from RocksDB, about 60 µs of CPU per request before the
    /// cache (docs/benchmarks.md, "What security costs"). A cached principal is used while
    /// the store's identity generation is the one it was read at, i.e. until this node applies
    /// any identity change (a revocation, a binding, a suspended tenant...), exactly when the
    /// uncached path would see the change, and never past the key's expiry.
    pub async fn authenticate_token(&self, token: &str) -> Result<Principal, NexusError> {
        if let Some(rest) = token.strip_prefix(KEY_PREFIX) {
            let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            // Read before the identities: a change applied in between moves it on.
            let generation = self.store.identity_generation();
            if let Some(p) = self.cached_principal(&digest) {
                return Ok(p);
            }
            let (principal, expires_at_ms) = self.api_key(rest)?;
            let mut cache = self.principals.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
            cache.insert(
                digest,
                CachedPrincipal {
                    principal: principal.clone(),
                    generation,
                    expires_at_ms,
                },
            );
            return Ok(principal);
        }
        if oidc::looks_like_jwt(token) {
            return self.jwt(token).await;
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        match &self.root_sha256 {
            Some(root) if bool::from(root.ct_eq(&digest)) => Ok(Principal {
                tenant: DEFAULT_TENANT.into(),
                subject: "root".into(),
                grants: Grants::root(),
            }),
            _ => Err(unauthenticated("invalid credentials")),
        }
    }

    async fn jwt(&self, token: &str) -> Result<Principal, NexusError> {
        let iss = oidc::unverified_issuer(token)
            .ok_or_else(|| unauthenticated("a JWT without an iss claim"))?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.issuer().trim_end_matches('/') == iss.trim_end_matches('/'))
            .ok_or_else(|| {
                // The claim is unverified: only a short, printable excerpt goes into the
                // reply and the audit record.
                let shown = crate::error::excerpt(&iss, MAX_UNVERIFIED_EXCERPT_CHARS);
                unauthenticated(&format!(
                    "token of {shown:?}, which is not a configured issuer (auth.oidc)"
                ))
            })?;
        let identity = issuer.verify(token).await?;
        let subject = format!("user:{}", identity.subject);
        self.active_tenant(&identity.tenant)?;
        let grants = iam::grants_with(&self.store, &identity.tenant, &subject, &identity.roles)?;
        Ok(Principal {
            tenant: identity.tenant,
            subject,
            grants,
        })
    }

    /// Ok when the tenant exists and is not suspended.
    fn active_tenant(&self, tenant: &str) -> Result<(), NexusError> {
        match iam::tenant(&self.store, tenant)? {
            Some(t) if t.state == TenantState::Suspended => Err(NexusError::PermissionDenied(
                format!("tenant {tenant} is suspended"),
            )),
            Some(_) => Ok(()),
            None => Err(unauthenticated(&format!("tenant {tenant} does not exist"))),
        }
    }

    /// The principal of an API key (`nxk_` stripped), and the key's expiry (0 = never).
    fn api_key(&self, rest: &str) -> Result<(Principal, i64), NexusError> {
        let invalid = || unauthenticated("invalid API key");
        let (id, secret) = rest.split_once('_').ok_or_else(invalid)?;
        let Some((tenant, key)) = iam::api_key(&self.store, id)? else {
            return Err(invalid());
        };
        let digest = Sha256::digest(secret.as_bytes());
        if !bool::from(key.secret_sha256.as_slice().ct_eq(digest.as_slice())) {
            return Err(invalid());
        }
        if key.revoked_at_ms != 0 {
            return Err(unauthenticated(&format!("API key {id} was revoked")));
        }
        if key.expires_at_ms != 0 && crate::memory::now_ms() >= key.expires_at_ms {
            return Err(unauthenticated(&format!("API key {id} has expired")));
        }
        self.active_tenant(&tenant)?;
        let subject = key.principal();
        let grants = iam::grants_of(&self.store, &tenant, &subject)?;
        Ok((
            Principal {
                tenant,
                subject,
                grants,
            },
            key.expires_at_ms,
        ))
    }

    /// A tonic interceptor that hands each request the authenticator (see [`AuthHandle`]).
    pub fn interceptor(
        self: &Arc<Self>,
    ) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone {
        let this = self.clone();
        move |mut request: tonic::Request<()>| {
            request
                .extensions_mut()
                .insert(AuthHandle { auth: this.clone() });
            Ok(request)
        }
    }
}

/// Whether an address is loopback (where a node without authentication may listen).
pub fn is_loopback(addr: &std::net::SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// Whether an address as written (`HOST:PORT`, `[V6]:PORT` or a URL) names this machine: a
/// loopback IP or `localhost`.
pub fn is_loopback_host(addr: &str) -> bool {
    let host = crate::cluster::network::host_of(addr);
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_are_long_random_and_hashed() {
        let a = new_api_key().unwrap();
        let b = new_api_key().unwrap();
        assert_ne!(a.token, b.token);
        assert!(a.token.starts_with("nxk_"));
        let (id, secret) = a.token[4..].split_once('_').unwrap();
        assert_eq!(id, a.id);
        assert_eq!(id.len(), 16);
        assert_eq!(secret.len(), 43);
        assert_eq!(a.secret_sha256, Sha256::digest(secret.as_bytes()).to_vec());
    }
}
