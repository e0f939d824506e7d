//! Who is calling. Until authentication lands (API keys, OIDC), every request runs as tenant
//! `default` with full rights, which is why a node binds to loopback by default. Handlers take
//! the tenant only from here, never from a request body, so the switch to real principals
//! changes this module alone.

/// The tenant of unauthenticated local use.
pub const DEFAULT_TENANT: &str = "default";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub tenant: String,
}

/// Authenticates a request from its metadata.
pub fn authenticate(_metadata: &tonic::metadata::MetadataMap) -> Principal {
    Principal {
        tenant: DEFAULT_TENANT.to_string(),
    }
}
