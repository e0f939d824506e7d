//! Placeholders in automation arguments: `${input.a.b}`, `${steps.ID.output.x}`,
//! `${run.id}`, `${event.data.x}` and so on, filled from a JSON context when a step, trigger
//! or webhook runs. `${secrets.NAME}` is left alone: the tool runner resolves it right
//! before the call, as for any call.
//!
//! The rules (docs/workflows.md): a JSON string that is exactly one placeholder becomes the
//! value it names, of any JSON type (`"${steps.fetch.output}"` becomes that object); a
//! placeholder inside a longer string is replaced by the value's text (a string as it is,
//! anything else as JSON). A path is dot-separated names, and a number indexes an array
//! (`steps.list.output.items.0.id`). A path that names nothing is an error naming it.

use serde_json::Value;

use crate::error::NexusError;

/// The placeholders of a text that are not secrets: each path inside `${...}`.
pub fn references(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else { break };
        let path = &after[..end];
        if !path.starts_with("secrets.") {
            out.push(path.to_string());
        }
        rest = &after[end + 1..];
    }
    out
}

/// The value at a dotted `path` of `context`, if any.
pub fn lookup<'a>(context: &'a Value, path: &str) -> Option<&'a Value> {
    let mut at = context;
    for part in path.split('.') {
        at = match at {
            Value::Object(map) => map.get(part)?,
            Value::Array(items) => items.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(at)
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Fills the placeholders of one string: the value itself when the string is exactly one
/// placeholder, else the string with each replaced by its value's text.
fn fill_str(s: &str, context: &Value, field: &str) -> Result<Value, NexusError> {
    if !s.contains("${") {
        return Ok(Value::String(s.to_string()));
    }
    let missing = |path: &str| {
        NexusError::invalid(
            field,
            format!("${{{path}}} names nothing (the run has no such value)"),
        )
    };
    if let Some(path) = s.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
        if !path.contains('}') && !path.contains("${") && !path.starts_with("secrets.") {
            return lookup(context, path).cloned().ok_or_else(|| missing(path));
        }
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let path = &after[..end];
        if path.starts_with("secrets.") {
            out.push_str(&rest[start..start + 2 + end + 1]);
        } else {
            out.push_str(&text_of(
                lookup(context, path).ok_or_else(|| missing(path))?,
            ));
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(Value::String(out))
}

/// `value` with every placeholder in its strings (and object keys left as they are) filled
/// from `context`; `field` names it in errors.
pub fn fill(value: &Value, context: &Value, field: &str) -> Result<Value, NexusError> {
    Ok(match value {
        Value::String(s) => fill_str(s, context, field)?,
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| fill(v, context, field))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), fill(v, context, field)?)))
                .collect::<Result<_, NexusError>>()?,
        ),
        other => other.clone(),
    })
}

/// Fills a text (a topic pattern, a URL): each placeholder by its value's text.
pub fn fill_text(text: &str, context: &Value, field: &str) -> Result<String, NexusError> {
    Ok(text_of(&fill_str(text, context, field)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn whole_placeholders_keep_their_type_and_inner_ones_become_text() {
        let ctx = json!({"input": {"n": 3, "who": "ada"}, "steps": {"a": {"output": {"items": [{"id": "x1"}]}}}, "run": {"id": "r1"}});
        let args = json!({
            "n": "${input.n}",
            "item": "${steps.a.output.items.0}",
            "key": "job-${run.id}-${input.n}",
            "who": "${input.who}",
            "token": "${secrets.api}",
            "mixed": "Bearer ${secrets.api} for ${input.who}",
            "list": ["${input.n}", 2],
        });
        let out = fill(&args, &ctx, "args").unwrap();
        assert_eq!(
            out,
            json!({"n": 3, "item": {"id": "x1"}, "key": "job-r1-3", "who": "ada",
                   "token": "${secrets.api}", "mixed": "Bearer ${secrets.api} for ada", "list": [3, 2]})
        );
        let err = fill(&json!({"x": "${steps.b.output}"}), &ctx, "steps[1].args").unwrap_err();
        assert!(err.to_string().contains("steps.b.output"), "{err}");
        assert_eq!(
            references("a ${input.x} ${secrets.k} ${steps.s.output}"),
            vec!["input.x".to_string(), "steps.s.output".to_string()]
        );
        assert_eq!(
            fill_text("job.${run.id}.done", &ctx, "topic").unwrap(),
            "job.r1.done"
        );
    }
}
