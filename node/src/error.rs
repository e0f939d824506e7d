//! The one error type of the domain: what went wrong, in terms a client can act on. The `api`
//! module maps it to a gRPC status or HTTP code in one place.
//!
//! It is serializable because a state-machine step can reject a command (a version mismatch,
//! an unknown id) and that rejection travels back through Raft as the command's response.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum NexusError {
    /// The request is malformed; `field` names the offending field.
    #[error("invalid {field}: {message}")]
    InvalidArgument { field: String, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// The state is not what the request required (e.g. a compare-and-set version).
    #[error("{field}: {message}")]
    FailedPrecondition { field: String, message: String },
    /// A configured limit was reached; `limit` names it.
    #[error("{limit} exceeded: {message}")]
    ResourceExhausted { limit: String, message: String },
    /// The cluster cannot serve the request now (no leader, no quorum, shutting down).
    #[error("{message}")]
    Unavailable {
        message: String,
        leader_id: Option<u64>,
        leader_addr: Option<String>,
    },
    #[error("internal error: {0}")]
    Internal(String),
    /// No valid credentials (appended: the variant order is part of the Raft reply encoding).
    #[error("{0}")]
    Unauthenticated(String),
    /// Valid credentials without the permission the request needs.
    #[error("{0}")]
    PermissionDenied(String),
}

impl NexusError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn precondition(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::FailedPrecondition {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Unavailable for a reason local to this node (no leader to name).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable {
            message: message.into(),
            leader_id: None,
            leader_addr: None,
        }
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<crate::store::StoreError> for NexusError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::internal(e)
    }
}

pub type Result<T, E = NexusError> = std::result::Result<T, E>;

/// The gRPC code of a domain error.
pub fn code_of(e: &NexusError) -> tonic::Code {
    use tonic::Code;
    match e {
        NexusError::InvalidArgument { .. } => Code::InvalidArgument,
        NexusError::NotFound(_) => Code::NotFound,
        NexusError::AlreadyExists(_) => Code::AlreadyExists,
        NexusError::FailedPrecondition { .. } => Code::FailedPrecondition,
        NexusError::ResourceExhausted { .. } => Code::ResourceExhausted,
        NexusError::Unavailable { .. } => Code::Unavailable,
        NexusError::Internal(_) => Code::Internal,
        NexusError::Unauthenticated(_) => Code::Unauthenticated,
        NexusError::PermissionDenied(_) => Code::PermissionDenied,
    }
}

/// At most `max` characters of `text` with control characters dropped (and `…` when cut):
/// how unverified or member-supplied text reaches an error or a record.
pub fn excerpt(text: &str, max: usize) -> String {
    let mut chars = text.chars().filter(|c| !c.is_control());
    let mut out: String = chars.by_ref().take(max).collect();
    if chars.next().is_some() {
        out.push('…');
    }
    out
}
