//! JWT bearer tokens from OIDC issuers: discovery, JWKS (cached, refreshed on an unknown key
//! id and on expiry, with a floor between fetches), signature, `iss`, `aud`, `exp`, `nbf`, an
//! algorithm allow-list and clock skew, through jsonwebtoken (ring). Claims map to the tenant
//! (`tenant_claim`, one of the issuer's `tenants`) and roles (`roles_claim`); the principal
//! is `user:<issuer>#<sub>`, so two issuers' subjects never meet. Issuer and JWKS URLs are
//! https (http only on loopback, for tests); a JWKS key must be a signing key (`use` absent
//! or `sig`) and, when it names its algorithm, tokens must use that one.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::sync::{Mutex, RwLock};

use crate::config::OidcConfig;
use crate::error::NexusError;

fn unauthenticated(why: impl std::fmt::Display) -> NexusError {
    NexusError::Unauthenticated(format!("invalid token: {why}"))
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

/// Whether a URL may be fetched for keys: https, or http on a loopback host.
fn acceptable_url(url: &str) -> bool {
    url.starts_with("https://")
        || url.strip_prefix("http://").is_some_and(|rest| {
            super::is_loopback_host(rest.split(['/', '?', '#']).next().unwrap_or(""))
        })
}

/// A verification key, and the algorithm it is for when the JWKS names one.
#[derive(Clone)]
pub(crate) struct VerifyingKey {
    key: DecodingKey,
    alg: Option<Algorithm>,
}

#[derive(Default)]
struct Keys {
    by_kid: HashMap<String, VerifyingKey>,
    fetched: Option<Instant>,
}

/// One configured issuer and its cached keys.
pub struct Issuer {
    config: OidcConfig,
    algorithms: Vec<Algorithm>,
    http: reqwest::Client,
    keys: RwLock<Keys>,
    /// Serializes fetches; holds when the last one started.
    fetching: Mutex<Option<Instant>>,
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub subject: String,
    pub tenant: String,
    pub roles: Vec<String>,
}

impl Issuer {
    pub fn new(config: &OidcConfig) -> anyhow::Result<Self> {
        if config.issuer.is_empty() || config.audience.is_empty() {
            anyhow::bail!("every [[auth.oidc]] needs issuer and audience");
        }
        if !acceptable_url(&config.issuer) {
            anyhow::bail!(
                "auth.oidc.issuer {:?}: must be an https:// URL (http:// only on loopback)",
                config.issuer
            );
        }
        if config.tenants.is_empty() && config.default_tenant.is_empty() {
            anyhow::bail!(
                "auth.oidc {:?}: list the tenants it may assert in tenants (or [\"*\"]), or set default_tenant",
                config.issuer
            );
        }
        let algorithms = config
            .algorithms
            .iter()
            .map(|a| {
                let alg: Algorithm = a.parse().map_err(|_| {
                    anyhow::anyhow!("auth.oidc.algorithms: {a:?} is not a JWS algorithm")
                })?;
                if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
                    anyhow::bail!(
                        "auth.oidc.algorithms: {a} is a shared-secret algorithm; an OIDC issuer signs with a public key (RS256, ES256, ...)"
                    );
                }
                Ok(alg)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let http = crate::tls::http_client_builder()
            .timeout(Duration::from_millis(config.timeout_ms))
            .build()?;
        Ok(Issuer {
            config: config.clone(),
            algorithms,
            http,
            keys: RwLock::new(Keys::default()),
            fetching: Mutex::new(None),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.config.issuer
    }

    /// Fetches discovery and the JWKS, unless another fetch started within the floor.
    async fn refresh(&self) -> Result<(), NexusError> {
        let mut last = self.fetching.lock().await;
        let floor = Duration::from_millis(self.config.jwks_min_refresh_ms);
        if last.is_some_and(|t| t.elapsed() < floor) {
            return Ok(());
        }
        *last = Some(Instant::now());
        let unavailable = |what: &str, e: &dyn std::fmt::Display| {
            NexusError::unavailable(format!(
                "cannot verify tokens of {}: {what}: {e}",
                self.config.issuer
            ))
        };
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.config.issuer.trim_end_matches('/')
        );
        let discovery: Discovery = self
            .http
            .get(&url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| unavailable("discovery", &e))?
            .json()
            .await
            .map_err(|e| unavailable("discovery document", &e))?;
        if discovery.issuer.trim_end_matches('/') != self.config.issuer.trim_end_matches('/') {
            return Err(unavailable(
                "discovery",
                &format!("the document names issuer {}", discovery.issuer),
            ));
        }
        if !acceptable_url(&discovery.jwks_uri) {
            return Err(unavailable(
                "discovery",
                &format!(
                    "jwks_uri {:?} is not https (http only on loopback)",
                    discovery.jwks_uri
                ),
            ));
        }
        let set: JwkSet = self
            .http
            .get(&discovery.jwks_uri)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| unavailable("JWKS", &e))?
            .json()
            .await
            .map_err(|e| unavailable("JWKS document", &e))?;
        let by_kid = signing_keys(&self.config.issuer, &self.algorithms, &set);
        tracing::info!(issuer = %self.config.issuer, keys = by_kid.len(), "fetched the issuer's keys");
        *self.keys.write().await = Keys {
            by_kid,
            fetched: Some(Instant::now()),
        };
        Ok(())
    }

    async fn key(&self, kid: &str) -> Result<VerifyingKey, NexusError> {
        let ttl = Duration::from_secs(self.config.jwks_refresh_s);
        {
            let keys = self.keys.read().await;
            let fresh = keys.fetched.is_some_and(|t| t.elapsed() < ttl);
            if let (Some(k), true) = (keys.by_kid.get(kid), fresh) {
                return Ok(k.clone());
            }
        }
        // Unknown (a rotation, perhaps) or stale: fetch again, at most once per floor.
        self.refresh().await?;
        self.keys
            .read()
            .await
            .by_kid
            .get(kid)
            .cloned()
            .ok_or_else(|| {
                unauthenticated(format!("unknown key id {kid:?} for {}", self.config.issuer))
            })
    }

    /// Verifies a token of this issuer.
    pub async fn verify(&self, token: &str) -> Result<Identity, NexusError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| unauthenticated(format!("header: {e} (unsigned tokens are refused)")))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(unauthenticated(format!(
                "algorithm {:?} is not allowed (auth.oidc.algorithms)",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| unauthenticated("the header names no key (kid)"))?;
        let VerifyingKey { key, alg } = self.key(&kid).await?;
        if alg.is_some_and(|a| a != header.alg) {
            return Err(unauthenticated(format!(
                "key {kid:?} is for {:?}, the token says {:?}",
                alg.expect("checked"),
                header.alg
            )));
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.leeway = self.config.clock_skew_s;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data =
            jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation).map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                unauthenticated(match e.kind() {
                    K::ExpiredSignature => "expired".to_string(),
                    K::ImmatureSignature => "not valid yet (nbf)".to_string(),
                    K::InvalidAudience => {
                        format!("wrong audience (expected {})", self.config.audience)
                    }
                    K::InvalidIssuer => "wrong issuer".to_string(),
                    K::InvalidSignature => "bad signature".to_string(),
                    K::MissingRequiredClaim(c) => format!("no {c} claim"),
                    other => format!("{other:?}"),
                })
            })?;
        let claims = data.claims;
        let subject = claims["sub"]
            .as_str()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| unauthenticated("sub is not a string"))?
            .to_string();
        let tenant = match claims
            .get(&self.config.tenant_claim)
            .and_then(|v| v.as_str())
        {
            Some(t) => t.to_string(),
            None if !self.config.default_tenant.is_empty() => self.config.default_tenant.clone(),
            None => {
                return Err(unauthenticated(format!(
                    "no {} claim naming the tenant",
                    self.config.tenant_claim
                )))
            }
        };
        let allowed = self.config.tenants.iter().any(|t| t == "*" || *t == tenant)
            || (!self.config.default_tenant.is_empty() && tenant == self.config.default_tenant);
        if !allowed {
            let shown: String = tenant
                .chars()
                .filter(|c| !c.is_control())
                .take(64)
                .collect();
            return Err(unauthenticated(format!(
                "{} may not assert tenant {shown:?} (auth.oidc.tenants)",
                self.config.issuer
            )));
        }
        let roles = match claims.get(&self.config.roles_claim) {
            None => Vec::new(),
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .filter_map(|r| r.as_str().map(String::from))
                .collect(),
            Some(serde_json::Value::String(s)) => s.split_whitespace().map(String::from).collect(),
            Some(_) => {
                return Err(unauthenticated(format!(
                    "{} is neither a list nor a string",
                    self.config.roles_claim
                )))
            }
        };
        Ok(Identity {
            subject: format!("{}#{subject}", self.config.issuer.trim_end_matches('/')),
            tenant,
            roles,
        })
    }
}

/// The keys of a JWKS that may verify this issuer's tokens, by key id: signing keys only
/// (`use`), for an algorithm the issuer is allowed (`alg`), that decode. Others are skipped
/// with a warning.
pub(crate) fn signing_keys(
    issuer: &str,
    algorithms: &[Algorithm],
    set: &JwkSet,
) -> HashMap<String, VerifyingKey> {
    let mut by_kid = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        // Only signing keys, for an algorithm this issuer is allowed.
        if jwk
            .common
            .public_key_use
            .as_ref()
            .is_some_and(|u| *u != jsonwebtoken::jwk::PublicKeyUse::Signature)
        {
            tracing::warn!(issuer = %issuer, kid, "skipping a JWKS key that is not for signatures (use)");
            continue;
        }
        let alg = match jwk
            .common
            .key_algorithm
            .map(|a| a.to_string().parse::<Algorithm>())
        {
            None => None,
            Some(Ok(a)) if algorithms.contains(&a) => Some(a),
            Some(_) => {
                tracing::warn!(issuer = %issuer, kid, "skipping a JWKS key for an algorithm not in auth.oidc.algorithms");
                continue;
            }
        };
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => {
                by_kid.insert(kid, VerifyingKey { key, alg });
            }
            Err(e) => {
                tracing::warn!(issuer = %issuer, kid, error = %e, "skipping a JWKS key")
            }
        }
    }
    by_kid
}

/// The unverified `iss` claim of a JWT, to pick the issuer that verifies it.
pub fn unverified_issuer(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("iss")?.as_str().map(String::from)
}

/// Whether a bearer token looks like a JWT (three base64url parts).
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3 && token.starts_with("ey")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_urls_are_https_or_loopback() {
        for ok in [
            "https://login.example.com",
            "http://127.0.0.1:8080",
            "http://localhost/x",
            "http://[::1]:9/jwks",
        ] {
            assert!(acceptable_url(ok), "{ok}");
        }
        for bad in [
            "http://login.example.com",
            "http://10.0.0.1/jwks",
            "ftp://x",
            "http://127.0.0.1.evil.com/",
        ] {
            assert!(!acceptable_url(bad), "{bad}");
        }
    }
}
