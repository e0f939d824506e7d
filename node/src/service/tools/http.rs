//! `http.request`: an HTTP call on a tenant's behalf, within its policy.
//!
//! - Only hosts on the tenant's allow-list (`SetHttpPolicy`: exact names or `*.domain`), and
//!   every redirect is checked against it again (at most [`MAX_REDIRECTS`]).
//! - No loopback, private, link-local, shared or otherwise non-public address unless the
//!   policy allows them: checked on the addresses DNS returns, by the resolver the client
//!   connects with (so a name cannot resolve to one thing when checked and another when
//!   connected), and on an IP literal in the URL.
//! - A deadline (`timeout_ms`, at most [`MAX_TIMEOUT`]) and a response size limit
//!   (`max_bytes`, at most [`MAX_RESPONSE_BYTES`]): a larger body is cut there and
//!   `truncated` says so.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::Reporter;
use crate::error::NexusError;
use crate::tools::HttpPolicy;

pub const MAX_REDIRECTS: usize = 5;
pub const MAX_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_RESPONSE_BYTES: usize = 4 << 20;
pub const DEFAULT_RESPONSE_BYTES: usize = 1 << 20;
const MAX_HOSTS: usize = 256;

pub fn validate_policy(policy: &HttpPolicy) -> Result<(), NexusError> {
    if policy.allow_hosts.len() > MAX_HOSTS {
        return Err(NexusError::invalid(
            "allow_hosts",
            format!(
                "has {} hosts; at most {MAX_HOSTS}",
                policy.allow_hosts.len()
            ),
        ));
    }
    for (i, host) in policy.allow_hosts.iter().enumerate() {
        let name = host.strip_prefix("*.").unwrap_or(host);
        let ok = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            });
        if !ok {
            return Err(NexusError::invalid(
                format!("allow_hosts[{i}]"),
                format!("{host:?} is not a lowercase host name or *.domain"),
            ));
        }
    }
    Ok(())
}

/// Whether the policy lets requests reach `host` (a name or an IP literal, lowercase).
pub fn host_allowed(policy: &HttpPolicy, host: &str) -> bool {
    let host = host.trim_end_matches('.');
    policy
        .allow_hosts
        .iter()
        .any(|allowed| match allowed.strip_prefix("*.") {
            Some(domain) => host.len() > domain.len() + 1 && host.ends_with(&format!(".{domain}")),
            None => allowed == host,
        })
}

/// Whether an address is one a tenant may not reach without `allow_private`.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xC0) == 64) // 100.64.0.0/10, shared
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24
                || (o[0] == 198 && (o[1] & 0xFE) == 18) // 198.18.0.0/15, benchmarking
                || o[0] >= 240
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xFE00) == 0xFC00 // unique local
                || (s[0] & 0xFFC0) == 0xFE80 // link-local
                || (s[0] == 0x2001 && s[1] == 0x0DB8) // documentation
                || (s[0] == 0x0064 && s[1] == 0xFF9B) // NAT64
        }
    }
}

/// Resolves names as the system does, then drops the addresses the policy forbids.
struct CheckedResolver {
    allow_private: bool,
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| allow_private || !is_private(a.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(format!(
                    "{host} resolves only to non-public addresses ({}); the tenant's http policy does not allow them",
                    addrs.iter().map(|a| a.ip().to_string()).collect::<Vec<_>>().join(", ")
                )
                .into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Checks a URL's scheme and host against the policy.
fn check_url(policy: &HttpPolicy, url: &reqwest::Url) -> Result<(), String> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{}: only http and https", url.scheme()));
    }
    let Some(host) = url.host_str() else {
        return Err("the URL has no host".into());
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_lowercase();
    if !host_allowed(policy, &host) {
        return Err(format!(
            "{host} is not on the tenant's http allow-list (nexusctl tools http-policy)"
        ));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        if !policy.allow_private && is_private(ip) {
            return Err(format!(
                "{ip} is not a public address; the tenant's http policy does not allow it"
            ));
        }
    }
    Ok(())
}

/// `text` as a URL the policy lets the tenant reach: INVALID_ARGUMENT naming `field` when it
/// is no URL, PERMISSION_DENIED (prefixed with `what`) when the policy does not allow it.
pub(crate) fn allowed_url(
    policy: &HttpPolicy,
    field: &str,
    what: &str,
    text: &str,
) -> Result<reqwest::Url, NexusError> {
    let url = reqwest::Url::parse(text)
        .map_err(|e| NexusError::invalid(field, format!("is not a URL: {e}")))?;
    check_url(policy, &url).map_err(|e| NexusError::PermissionDenied(format!("{what}: {e}")))?;
    Ok(url)
}

/// An HTTP client that reaches only what `policy` allows: every address DNS gives checked
/// ([`CheckedResolver`]), every redirect checked again (at most [`MAX_REDIRECTS`]); with a
/// deadline per request when `timeout` is given (connecting always has one).
pub(crate) fn policy_client(
    policy: &HttpPolicy,
    timeout: Option<Duration>,
) -> Result<reqwest::Client, NexusError> {
    let redirect_policy = policy.clone();
    let mut builder = crate::tls::http_client_builder()
        .connect_timeout(timeout.unwrap_or(DEFAULT_TIMEOUT))
        .dns_resolver(Arc::new(CheckedResolver {
            allow_private: policy.allow_private,
        }))
        .redirect(reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
            }
            match check_url(&redirect_policy, attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(e) => attempt.error(format!("redirect refused: {e}")),
            }
        }));
    if let Some(timeout) = timeout {
        builder = builder.timeout(timeout);
    }
    builder.build().map_err(NexusError::internal)
}

/// Runs `http.request` with validated `args`.
pub async fn request(
    policy: &HttpPolicy,
    args: &Value,
    reporter: &Reporter,
) -> Result<Value, NexusError> {
    let url = allowed_url(
        policy,
        "args.url",
        "http.request",
        args["url"].as_str().unwrap_or_default(),
    )?;
    let method = args["method"].as_str().unwrap_or("GET").to_uppercase();
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .map_err(|_| NexusError::invalid("args.method", "is not an HTTP method"))?;
    let timeout = args["timeout_ms"]
        .as_u64()
        .map_or(DEFAULT_TIMEOUT, Duration::from_millis)
        .min(MAX_TIMEOUT);
    let max_bytes = args["max_bytes"]
        .as_u64()
        .map_or(DEFAULT_RESPONSE_BYTES, |b| b as usize)
        .min(MAX_RESPONSE_BYTES);
    let client = policy_client(policy, Some(timeout))?;
    let mut request = client.request(method, url.clone());
    if let Some(headers) = args["headers"].as_object() {
        for (name, value) in headers {
            let value = value.as_str().ok_or_else(|| {
                NexusError::invalid(format!("args.headers.{name}"), "must be a string")
            })?;
            request = request.header(name.as_str(), value);
        }
    }
    if let Some(body) = args.get("body") {
        request = match body {
            Value::String(text) => request.body(text.clone()),
            Value::Null => request,
            other => request.json(other),
        };
    }
    reporter.message(format!(
        "{} {}",
        url.scheme(),
        url.host_str().unwrap_or_default()
    ));
    let mut response = request.send().await.map_err(|e| {
        let why = std::error::Error::source(&e)
            .map(|s| format!("{e}: {s}"))
            .unwrap_or_else(|| e.to_string());
        if e.is_timeout() {
            NexusError::unavailable(format!(
                "http.request timed out after {} ms",
                timeout.as_millis()
            ))
        } else if e.is_redirect() || why.contains("http policy") {
            NexusError::PermissionDenied(format!("http.request: {why}"))
        } else {
            NexusError::unavailable(format!("http.request: {why}"))
        }
    })?;
    let status = response.status().as_u16();
    let headers: serde_json::Map<String, Value> = response
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.to_string(), Value::String(v.to_str().ok()?.to_string()))))
        .collect();
    let mut body: Vec<u8> = Vec::new();
    let mut truncated = false;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| NexusError::unavailable(format!("http.request: reading the body: {e}")))?
    {
        let room = max_bytes - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            truncated = true;
            break;
        }
        body.extend_from_slice(&chunk);
    }
    Ok(json!({
        "status": status,
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
        "truncated": truncated,
        "url": response.url().as_str(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_addresses() {
        let p = HttpPolicy {
            allow_hosts: vec!["api.example.com".into(), "*.example.org".into()],
            allow_private: false,
        };
        assert!(host_allowed(&p, "api.example.com"));
        assert!(host_allowed(&p, "a.b.example.org"));
        assert!(!host_allowed(&p, "example.org"));
        assert!(!host_allowed(&p, "evil-example.org"));
        assert!(!host_allowed(&p, "api.example.com.evil.net"));
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
        ] {
            assert!(is_private(private.parse().unwrap()), "{private}");
        }
        for public in ["8.8.8.8", "1.1.1.1", "2606:4700::1111"] {
            assert!(!is_private(public.parse().unwrap()), "{public}");
        }
        validate_policy(&p).unwrap();
        assert!(validate_policy(&HttpPolicy {
            allow_hosts: vec!["Bad Host".into()],
            allow_private: false
        })
        .is_err());
        let url = |u: &str| reqwest::Url::parse(u).unwrap();
        assert!(check_url(&p, &url("https://api.example.com/x")).is_ok());
        assert!(check_url(&p, &url("ftp://api.example.com/x")).is_err());
        assert!(check_url(&p, &url("https://other.com/")).is_err());
        let local = HttpPolicy {
            allow_hosts: vec!["127.0.0.1".into()],
            allow_private: false,
        };
        assert!(check_url(&local, &url("http://127.0.0.1:8080/")).is_err());
    }
}
