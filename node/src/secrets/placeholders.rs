//! `${secrets.NAME}` placeholders: how a tool's configuration or arguments refer to a secret
//! without holding it. They are resolved only where a tool runs, by the tool runner calling
//! [`SecretsService::resolve_placeholders`](super::service::SecretsService::resolve_placeholders)
//! with the tenant of the run: the text with the values in it goes to the tool and nowhere
//! else (it is zeroized when dropped), and the [`Redactor`] that comes with it turns every
//! value back into its placeholder in whatever leaves the run: the tool's output, errors, log
//! lines, trace attributes and audit records.
//!
//! Status: the tool runner does not exist yet (the tools issue); this module is what it is to
//! call, and nothing else resolves placeholders. Stored text (memories, tool definitions)
//! keeps the placeholder, never the value.

use zeroize::Zeroizing;

use super::validate_name;
use crate::error::NexusError;

const OPEN: &str = "${secrets.";

/// One placeholder found in a text: its byte range and the secret it names.
struct Found {
    start: usize,
    end: usize,
    name: String,
}

fn scan(field: &str, text: &str) -> Result<Vec<Found>, NexusError> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(i) = text[at..].find(OPEN) {
        let start = at + i;
        let name_start = start + OPEN.len();
        let Some(close) = text[name_start..].find('}') else {
            return Err(NexusError::invalid(
                field,
                format!("a placeholder at byte {start} is not closed: ${{secrets.NAME}}"),
            ));
        };
        let name = &text[name_start..name_start + close];
        validate_name(field, name).map_err(|_| {
            NexusError::invalid(
                field,
                format!("${{secrets.{name}}} does not name a secret (A-Z, a-z, 0-9, _ . -)"),
            )
        })?;
        let end = name_start + close + 1;
        out.push(Found {
            start,
            end,
            name: name.to_string(),
        });
        at = end;
    }
    Ok(out)
}

/// The secrets a text refers to, each once, in order of first appearance. A malformed
/// placeholder is INVALID_ARGUMENT naming `field`.
pub fn names(field: &str, text: &str) -> Result<Vec<String>, NexusError> {
    let mut names: Vec<String> = Vec::new();
    for f in scan(field, text)? {
        if !names.contains(&f.name) {
            names.push(f.name);
        }
    }
    Ok(names)
}

/// `text` with each placeholder replaced by its value from `values` (name, value).
pub fn substitute(
    field: &str,
    text: &str,
    values: &[(String, Zeroizing<String>)],
) -> Result<Zeroizing<String>, NexusError> {
    let mut out = Zeroizing::new(String::with_capacity(text.len()));
    let mut at = 0;
    for f in scan(field, text)? {
        let value = values
            .iter()
            .find(|(n, _)| *n == f.name)
            .ok_or_else(|| NexusError::internal(format!("no value for secret {}", f.name)))?;
        out.push_str(&text[at..f.start]);
        out.push_str(&value.1);
        at = f.end;
    }
    out.push_str(&text[at..]);
    Ok(out)
}

/// Replaces resolved secret values with their placeholders in text that leaves a tool run.
#[derive(Default)]
pub struct Redactor {
    /// (value, name), longest value first so that a value containing another is replaced
    /// whole.
    values: Vec<(Zeroizing<String>, String)>,
}

impl Redactor {
    /// Whether there is nothing to redact (no placeholder was resolved).
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    pub fn new(values: &[(String, Zeroizing<String>)]) -> Redactor {
        let mut v: Vec<(Zeroizing<String>, String)> = values
            .iter()
            .filter(|(_, value)| !value.is_empty())
            .map(|(name, value)| (value.clone(), name.clone()))
            .collect();
        v.sort_by_key(|(value, _)| std::cmp::Reverse(value.len()));
        Redactor { values: v }
    }

    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (value, name) in &self.values {
            if out.contains(value.as_str()) {
                out = out.replace(value.as_str(), &format!("${{secrets.{name}}}"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> Vec<(String, Zeroizing<String>)> {
        vec![
            ("API_KEY".into(), Zeroizing::new("sk-123".to_string())),
            (
                "API_KEY_LONG".into(),
                Zeroizing::new("sk-123-extra".to_string()),
            ),
        ]
    }

    #[test]
    fn placeholders_are_found_substituted_and_redacted() {
        let text = "curl -H 'Authorization: ${secrets.API_KEY}' ${secrets.API_KEY_LONG} ${secrets.API_KEY}";
        assert_eq!(
            names("args", text).unwrap(),
            vec!["API_KEY", "API_KEY_LONG"]
        );
        let resolved = substitute("args", text, &values()).unwrap();
        assert_eq!(
            resolved.as_str(),
            "curl -H 'Authorization: sk-123' sk-123-extra sk-123"
        );
        // What the tool prints goes back through the redactor.
        let r = Redactor::new(&values());
        assert_eq!(
            r.redact("error: 401 for sk-123-extra (key sk-123)"),
            "error: 401 for ${secrets.API_KEY_LONG} (key ${secrets.API_KEY})"
        );
        assert_eq!(names("args", "no placeholders, $5 {x}").unwrap().len(), 0);
    }

    #[test]
    fn malformed_placeholders_name_the_field() {
        for bad in ["${secrets.API_KEY", "${secrets.}", "${secrets.a b}"] {
            let e = names("tool.args", bad).unwrap_err();
            assert!(
                matches!(&e, NexusError::InvalidArgument { field, .. } if field == "tool.args"),
                "{bad}: {e:?}"
            );
        }
    }
}
