//! Composite tools: a stored pipeline of tool calls in which later steps take earlier
//! outputs. The definition (a tool's `config`):
//!
//! ```json
//! {"steps": [
//!    {"id": "found", "tool": "memory.recall", "args": {"query": "${input.question}", "k": 3}},
//!    {"id": "saved", "tool": "memory.put",
//!     "args": {"namespace": "answers", "key": "${input.id}", "value": "${steps.found.hits}"}}
//!  ],
//!  "output": {"hits": "${steps.found.hits}", "version": "${steps.saved.version}"}}
//! ```
//!
//! The expression language, over JSON:
//! - `${input}` is the call's arguments, `${steps.ID}` the output of an earlier step;
//!   either may be followed by a path of `.field` and `[index]` parts (`${input.items[0].id}`).
//! - A string that is exactly one expression becomes the value it names, of any JSON type;
//!   a string with expressions among other text gets each value spliced in as text (a string
//!   as it is, anything else as JSON).
//! - `${secrets.NAME}` is not an expression here: it is left for the tool runner, which
//!   resolves it right before the step's tool runs.
//! - A path that names nothing is an error naming the step and the path; so is a reference to
//!   a step that does not come before (checked when the tool is registered).
//!
//! At most [`MAX_STEPS`] steps; a composite may call composites, [`MAX_DEPTH`] deep.

use serde::Deserialize;
use serde_json::Value;

use crate::error::NexusError;

pub const MAX_STEPS: usize = 16;
pub const MAX_DEPTH: usize = 4;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub id: String,
    pub tool: String,
    #[serde(default = "empty_object")]
    pub args: Value,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Composite {
    pub steps: Vec<Step>,
    /// The call's output; the last step's output when absent.
    #[serde(default)]
    pub output: Option<Value>,
}

/// One `${...}` found in a string.
struct Expr<'a> {
    start: usize,
    end: usize,
    body: &'a str,
}

fn exprs(text: &str) -> Result<Vec<Expr<'_>>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(i) = text[at..].find("${") {
        let start = at + i;
        let Some(close) = text[start..].find('}') else {
            return Err(format!("an expression at byte {start} is not closed"));
        };
        let body = &text[start + 2..start + close];
        at = start + close + 1;
        if body.starts_with("secrets.") {
            continue;
        }
        out.push(Expr {
            start,
            end: at,
            body,
        });
    }
    Ok(out)
}

/// A path's parts: the root (`input` or `steps`) and then fields and indexes.
#[derive(Debug, PartialEq)]
enum Part {
    Field(String),
    Index(usize),
}

fn parse_path(body: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = body;
    let mut field = String::new();
    let flush = |field: &mut String, parts: &mut Vec<Part>| -> Result<(), String> {
        if field.is_empty() {
            return Err(format!("${{{body}}}: an empty field name"));
        }
        parts.push(Part::Field(std::mem::take(field)));
        Ok(())
    };
    while let Some(c) = rest.chars().next() {
        rest = &rest[c.len_utf8()..];
        match c {
            '.' => flush(&mut field, &mut parts)?,
            '[' => {
                if !field.is_empty() {
                    flush(&mut field, &mut parts)?;
                }
                let close = rest
                    .find(']')
                    .ok_or_else(|| format!("${{{body}}}: an index is not closed"))?;
                let index = rest[..close]
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| format!("${{{body}}}: {:?} is not an index", &rest[..close]))?;
                parts.push(Part::Index(index));
                rest = &rest[close + 1..];
                if rest.starts_with('.') {
                    rest = &rest[1..];
                }
            }
            c if c.is_whitespace() => {
                return Err(format!("${{{body}}}: a path has no spaces"));
            }
            c => field.push(c),
        }
    }
    if !field.is_empty() {
        flush(&mut field, &mut parts)?;
    }
    match parts.first() {
        Some(Part::Field(root)) if root == "input" || root == "steps" => Ok(parts),
        _ => Err(format!(
            "${{{body}}}: an expression starts with input or steps.ID"
        )),
    }
}

fn lookup<'v>(scope: &'v Value, body: &str) -> Result<&'v Value, String> {
    let parts = parse_path(body)?;
    let mut v = scope;
    let mut walked = String::new();
    for part in &parts {
        v = match part {
            Part::Field(f) => {
                if !walked.is_empty() {
                    walked.push('.');
                }
                walked.push_str(f);
                v.get(f.as_str())
            }
            Part::Index(i) => {
                walked.push_str(&format!("[{i}]"));
                v.get(*i)
            }
        }
        .ok_or_else(|| format!("${{{body}}}: {walked} names nothing"))?;
    }
    Ok(v)
}

/// `template` with every expression replaced from `scope` (`{"input": ..., "steps": {...}}`).
pub fn evaluate(template: &Value, scope: &Value) -> Result<Value, String> {
    Ok(match template {
        Value::String(text) => {
            let found = exprs(text)?;
            match found.as_slice() {
                [] => template.clone(),
                [one] if one.start == 0 && one.end == text.len() => {
                    lookup(scope, one.body)?.clone()
                }
                _ => {
                    let mut out = String::with_capacity(text.len());
                    let mut at = 0;
                    for e in &found {
                        out.push_str(&text[at..e.start]);
                        match lookup(scope, e.body)? {
                            Value::String(s) => out.push_str(s),
                            other => out.push_str(&other.to_string()),
                        }
                        at = e.end;
                    }
                    out.push_str(&text[at..]);
                    Value::String(out)
                }
            }
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| evaluate(v, scope))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), evaluate(v, scope)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// Every expression's body in a template.
fn bodies(template: &Value, out: &mut Vec<String>) -> Result<(), String> {
    match template {
        Value::String(text) => {
            for e in exprs(text)? {
                out.push(e.body.to_string());
            }
        }
        Value::Array(items) => {
            for v in items {
                bodies(v, out)?;
            }
        }
        Value::Object(map) => {
            for v in map.values() {
                bodies(v, out)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Parses and checks a definition: step ids, tool names, and that every expression is well
/// formed and names only the input or an earlier step. `field` names the configuration in
/// errors (`tool.config`).
pub fn parse(field: &str, config: &str) -> Result<Composite, NexusError> {
    let c: Composite = serde_json::from_str(config).map_err(|e| {
        NexusError::invalid(
            field,
            format!("is not a composite definition ({{\"steps\": [...], \"output\": ...}}): {e}"),
        )
    })?;
    if c.steps.is_empty() || c.steps.len() > MAX_STEPS {
        return Err(NexusError::invalid(
            format!("{field}.steps"),
            format!("has {} steps; 1 to {MAX_STEPS}", c.steps.len()),
        ));
    }
    let mut seen: Vec<&str> = Vec::new();
    for (i, step) in c.steps.iter().enumerate() {
        let at = format!("{field}.steps[{i}]");
        let id_ok = step
            .id
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase())
            && step
                .id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !id_ok || seen.contains(&step.id.as_str()) {
            return Err(NexusError::invalid(
                format!("{at}.id"),
                format!(
                    "{:?} is not a new step id (a-z, 0-9, _, starting with a letter)",
                    step.id
                ),
            ));
        }
        if step.tool != "echo" {
            super::validate_name(&format!("{at}.tool"), &step.tool)?;
        }
        check_refs(&format!("{at}.args"), &step.args, &seen)?;
        seen.push(&step.id);
    }
    if let Some(output) = &c.output {
        check_refs(&format!("{field}.output"), output, &seen)?;
    }
    Ok(c)
}

fn check_refs(field: &str, template: &Value, earlier: &[&str]) -> Result<(), NexusError> {
    let mut found = Vec::new();
    bodies(template, &mut found).map_err(|e| NexusError::invalid(field, e))?;
    for body in found {
        let parts = parse_path(&body).map_err(|e| NexusError::invalid(field, e))?;
        if let Some(Part::Field(root)) = parts.first() {
            if root == "steps" {
                match parts.get(1) {
                    Some(Part::Field(id)) if earlier.contains(&id.as_str()) => {}
                    _ => {
                        return Err(NexusError::invalid(
                            field,
                            format!("${{{body}}} names no earlier step"),
                        ))
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn expressions_take_values_whole_or_spliced() {
        let scope = json!({"input": {"q": "moon", "items": [{"id": 7}], "n": 3},
                           "steps": {"a": {"hits": [1, 2]}}});
        assert_eq!(evaluate(&json!("${input.n}"), &scope).unwrap(), json!(3));
        assert_eq!(
            evaluate(&json!("${steps.a.hits}"), &scope).unwrap(),
            json!([1, 2])
        );
        assert_eq!(
            evaluate(&json!("id ${input.items[0].id} of ${input.q}"), &scope).unwrap(),
            json!("id 7 of moon")
        );
        assert_eq!(
            evaluate(&json!({"k": ["${input.q}", 1]}), &scope).unwrap(),
            json!({"k": ["moon", 1]})
        );
        // Secrets are left for the runner.
        assert_eq!(
            evaluate(&json!("Bearer ${secrets.TOKEN}"), &scope).unwrap(),
            json!("Bearer ${secrets.TOKEN}")
        );
        let e = evaluate(&json!("${input.items[3]}"), &scope).unwrap_err();
        assert!(e.contains("input.items[3] names nothing"), "{e}");
        assert!(evaluate(&json!("${nope}"), &scope).is_err());
        assert!(evaluate(&json!("${input.q"), &scope).is_err());
    }

    #[test]
    fn definitions_are_checked_when_registered() {
        let ok = r#"{"steps": [{"id": "a", "tool": "memory.get", "args": {"key": "${input.k}"}},
                               {"id": "b", "tool": "echo", "args": {"text": "${steps.a.value}"}}],
                     "output": "${steps.b}"}"#;
        assert_eq!(parse("tool.config", ok).unwrap().steps.len(), 2);
        let forward = r#"{"steps": [{"id": "a", "tool": "echo", "args": {"t": "${steps.b}"}},
                                    {"id": "b", "tool": "echo"}]}"#;
        let e = parse("tool.config", forward).unwrap_err().to_string();
        assert!(
            e.contains("tool.config.steps[0].args") && e.contains("no earlier step"),
            "{e}"
        );
        let twice = r#"{"steps": [{"id": "a", "tool": "echo"}, {"id": "a", "tool": "echo"}]}"#;
        assert!(parse("tool.config", twice)
            .unwrap_err()
            .to_string()
            .contains("steps[1].id"));
        assert!(parse("tool.config", r#"{"steps": []}"#).is_err());
        assert!(parse("tool.config", r#"{"steps": [{"id": "a"}]}"#).is_err());
    }
}
