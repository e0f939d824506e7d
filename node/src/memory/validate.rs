//! Input validation shared by the memory APIs. Every check names the field it rejects, and
//! runs before anything is proposed, so a bad request changes nothing.

use base64::Engine;

use crate::config::Limits;
use crate::error::NexusError;

/// Longest namespace, in bytes.
pub const MAX_NAMESPACE_BYTES: usize = 128;
/// Longest conversation id, in bytes.
pub const MAX_CONVERSATION_ID_BYTES: usize = 128;
/// Longest role, in bytes.
pub const MAX_ROLE_BYTES: usize = 32;
/// Page size when a request leaves it 0.
pub const DEFAULT_PAGE_SIZE: u32 = 100;

fn invalid(field: &str, message: impl Into<String>) -> NexusError {
    NexusError::invalid(field, message)
}

/// Namespaces: 1..=128 bytes of letters, digits and `. _ - : /`.
pub fn namespace(field: &str, ns: &str) -> Result<(), NexusError> {
    if ns.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if ns.len() > MAX_NAMESPACE_BYTES {
        return Err(invalid(
            field,
            format!("is {} bytes; the limit is {MAX_NAMESPACE_BYTES}", ns.len()),
        ));
    }
    if let Some(c) = ns
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._-:/".contains(*c)))
    {
        return Err(invalid(
            field,
            format!("contains {c:?}; use letters, digits and . _ - : /"),
        ));
    }
    Ok(())
}

/// Keys: any UTF-8 without control characters, 1..=max_key_bytes.
pub fn key(field: &str, key: &str, limits: &Limits) -> Result<(), NexusError> {
    if key.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if key.len() > limits.max_key_bytes {
        return Err(NexusError::invalid(
            field,
            format!(
                "is {} bytes; the limit is {} (limits.max_key_bytes)",
                key.len(),
                limits.max_key_bytes
            ),
        ));
    }
    if key.chars().any(char::is_control) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// A JSON document of at most `max` bytes.
pub fn json(field: &str, text: &str, max: usize, limit_name: &str) -> Result<(), NexusError> {
    if text.len() > max {
        return Err(invalid(
            field,
            format!("is {} bytes; the limit is {max} ({limit_name})", text.len()),
        ));
    }
    if text.trim().is_empty() {
        return Err(invalid(field, "must be a JSON value (got nothing)"));
    }
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map(|_| ())
        .map_err(|e| invalid(field, format!("is not valid JSON: {e}")))
}

/// Optional metadata: empty means `{}`; otherwise a JSON object.
pub fn metadata(field: &str, text: &str, limits: &Limits) -> Result<String, NexusError> {
    if text.trim().is_empty() {
        return Ok("{}".to_string());
    }
    if text.len() > limits.max_metadata_bytes {
        return Err(invalid(
            field,
            format!(
                "is {} bytes; the limit is {} (limits.max_metadata_bytes)",
                text.len(),
                limits.max_metadata_bytes
            ),
        ));
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(_)) => Ok(text.to_string()),
        Ok(_) => Err(invalid(field, "must be a JSON object")),
        Err(e) => Err(invalid(field, format!("is not valid JSON: {e}"))),
    }
}

/// Conversation ids: 1..=128 bytes of letters, digits and `. _ - :`.
pub fn conversation_id(field: &str, id: &str) -> Result<(), NexusError> {
    if id.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if id.len() > MAX_CONVERSATION_ID_BYTES {
        return Err(invalid(
            field,
            format!(
                "is {} bytes; the limit is {MAX_CONVERSATION_ID_BYTES}",
                id.len()
            ),
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._-:".contains(*c)))
    {
        return Err(invalid(
            field,
            format!("contains {c:?}; use letters, digits and . _ - :"),
        ));
    }
    Ok(())
}

/// Roles: a lowercase identifier such as `user` or `assistant`.
pub fn role(field: &str, role: &str) -> Result<(), NexusError> {
    if role.is_empty() {
        return Err(invalid(
            field,
            "must not be empty (e.g. user, assistant, system, tool)",
        ));
    }
    let ok = role.len() <= MAX_ROLE_BYTES
        && role.starts_with(|c: char| c.is_ascii_lowercase())
        && role
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !ok {
        return Err(invalid(
            field,
            format!("{role:?} is not a lowercase identifier of at most {MAX_ROLE_BYTES} bytes (e.g. user, assistant)"),
        ));
    }
    Ok(())
}

/// A page size: 0 means the default; above the limit is an error, not a silent cap.
pub fn page_size(field: &str, requested: u32, limits: &Limits) -> Result<usize, NexusError> {
    count(field, requested, DEFAULT_PAGE_SIZE, limits.max_page_size)
}

/// How many items a request asks for (a page, a search limit, recall's k): 0 means
/// `default`; above `limits.max_page_size` (`max`) is an error, not a silent cap.
pub fn count(field: &str, requested: u32, default: u32, max: u32) -> Result<usize, NexusError> {
    match requested {
        0 => Ok(default.min(max) as usize),
        n if n > max => Err(invalid(
            field,
            format!("{n} is above the limit of {max} (limits.max_page_size)"),
        )),
        n => Ok(n as usize),
    }
}

/// A time range; 0 means unbounded on that side.
pub fn time_range(since_ms: i64, until_ms: i64) -> Result<(), NexusError> {
    if since_ms < 0 {
        return Err(invalid("since_ms", "must not be negative"));
    }
    if until_ms < 0 {
        return Err(invalid("until_ms", "must not be negative"));
    }
    if until_ms != 0 && since_ms > until_ms {
        return Err(invalid("until_ms", "must not be before since_ms"));
    }
    Ok(())
}

/// Page tokens are the URL-safe base64 of a position the server handed out.
pub fn encode_page_token(position: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(position)
}

pub fn decode_page_token(field: &str, token: &str) -> Result<Option<Vec<u8>>, NexusError> {
    if token.is_empty() {
        return Ok(None);
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map(Some)
        .map_err(|_| invalid(field, "is not a token this server handed out"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_what_it_should_and_names_the_field() {
        let limits = Limits::default();
        assert!(namespace("namespace", "agents/alpha:notes").is_ok());
        for bad in ["", "has space", &"n".repeat(129)] {
            match namespace("namespace", bad) {
                Err(NexusError::InvalidArgument { field, .. }) => assert_eq!(field, "namespace"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        assert!(key("key", &"k".repeat(512), &limits).is_ok());
        assert!(key("key", &"k".repeat(513), &limits).is_err());
        assert!(key("key", "a\nb", &limits).is_err());
        assert!(json("value", "{\"a\":1}", 100, "x").is_ok());
        assert!(json("value", "{\"a\":", 100, "x").is_err());
        assert!(json("value", "", 100, "x").is_err());
        assert_eq!(metadata("metadata", "", &limits).unwrap(), "{}");
        assert!(metadata("metadata", "[1]", &limits).is_err());
        assert!(role("role", "assistant").is_ok());
        assert!(role("role", "Assistant").is_err());
        assert_eq!(page_size("page_size", 0, &limits).unwrap(), 100);
        assert!(page_size("page_size", 1001, &limits).is_err());
        assert!(decode_page_token("page_token", "!!").is_err());
        assert_eq!(
            decode_page_token("page_token", &encode_page_token(b"abc")).unwrap(),
            Some(b"abc".to_vec())
        );
    }
}
