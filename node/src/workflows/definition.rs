//! A workflow definition, and its JSON document (docs/workflows.md):
//!
//! ```json
//! {"name": "onboard", "description": "…", "retry": {"max_attempts": 3},
//!  "steps": [
//!    {"id": "fetch", "tool": "http.request", "args": {"url": "${input.url}"}},
//!    {"id": "pause", "after": ["fetch"], "sleep_ms": 5000},
//!    {"id": "approval", "after": ["fetch"], "wait_event": {"topic": "approve.${run.id}", "timeout_ms": 3600000}},
//!    {"id": "store", "after": ["pause", "approval"],
//!     "when": {"path": "steps.approval.output.data.ok", "equals": true},
//!     "tool": "memory.put", "args": {"namespace": "done", "key": "${run.id}", "value": "${steps.fetch.output}"}}
//!  ]}
//! ```
//!
//! Steps form a DAG through `after`: a step starts once every step it comes after succeeded
//! or was skipped (fan-in), and several steps after one run at once (fan-out). A step whose
//! `when` is false is skipped; one that fails after its retries fails the run.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::template;
use crate::error::NexusError;
use crate::schedules::RetryPolicy;

/// Most steps of a workflow.
pub const MAX_STEPS: usize = 32;
/// Longest step id and workflow name.
pub const MAX_ID_BYTES: usize = 64;
/// Longest sleep and wait.
pub const MAX_WAIT_MS: u64 = 7 * 24 * 3_600_000;
/// A wait for an event that does not say how long.
pub const DEFAULT_EVENT_TIMEOUT_MS: u64 = 3_600_000;
/// Largest arguments of a step, JSON text.
pub const MAX_ARGS_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowDef {
    pub name: String,
    pub description: String,
    pub steps: Vec<StepDef>,
    /// Each step's retry policy unless it has its own.
    pub retry: RetryPolicy,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepDef {
    pub id: String,
    pub after: Vec<String>,
    pub when: Option<Condition>,
    pub action: Action,
    pub retry: Option<RetryPolicy>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Action {
    /// Calls a tool with JSON arguments (text; placeholders filled at the call).
    Tool { tool: String, args: String },
    /// Waits this long from the step's first start (a new leader waits out what is left).
    Sleep { ms: u64 },
    /// Waits for the first event matching `topic` (a pattern; placeholders filled at the
    /// start) published after the step started; fails after `timeout_ms`.
    Event { topic: String, timeout_ms: u64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Condition {
    /// A placeholder path: `input.x`, `steps.ID.output.y`.
    pub path: String,
    pub test: Test,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Test {
    /// The value at the path equals this JSON (text).
    Equals(String),
    NotEquals(String),
    /// The path names a value (true) or none (false).
    Exists(bool),
}

impl Condition {
    /// Whether the condition holds in a run's context.
    pub fn holds(&self, context: &Value) -> bool {
        let found = template::lookup(context, &self.path);
        let json = |text: &str| serde_json::from_str::<Value>(text).unwrap_or(Value::Null);
        match &self.test {
            Test::Equals(v) => found == Some(&json(v)),
            Test::NotEquals(v) => found != Some(&json(v)),
            Test::Exists(want) => found.is_some_and(|v| !v.is_null()) == *want,
        }
    }
}

impl WorkflowDef {
    pub fn approx_size(&self) -> usize {
        self.name.len()
            + self.description.len()
            + self
                .steps
                .iter()
                .map(|s| {
                    s.id.len()
                        + s.after.iter().map(|a| a.len() + 2).sum::<usize>()
                        + match &s.action {
                            Action::Tool { tool, args } => tool.len() + args.len(),
                            Action::Sleep { .. } => 8,
                            Action::Event { topic, .. } => topic.len() + 8,
                        }
                        + 64
                })
                .sum::<usize>()
            + 64
    }

    /// The definition as its JSON document.
    pub fn to_json(&self) -> Value {
        let retry = |r: &RetryPolicy| {
            json!({"max_attempts": r.max_attempts, "initial_backoff_ms": r.initial_backoff_ms,
                   "max_backoff_ms": r.max_backoff_ms, "timeout_ms": r.timeout_ms})
        };
        let steps: Vec<Value> = self
            .steps
            .iter()
            .map(|s| {
                let mut m = Map::new();
                m.insert("id".into(), json!(s.id));
                if !s.after.is_empty() {
                    m.insert("after".into(), json!(s.after));
                }
                match &s.action {
                    Action::Tool { tool, args } => {
                        m.insert("tool".into(), json!(tool));
                        m.insert(
                            "args".into(),
                            serde_json::from_str(args).unwrap_or(Value::Null),
                        );
                    }
                    Action::Sleep { ms } => {
                        m.insert("sleep_ms".into(), json!(ms));
                    }
                    Action::Event { topic, timeout_ms } => {
                        m.insert(
                            "wait_event".into(),
                            json!({"topic": topic, "timeout_ms": timeout_ms}),
                        );
                    }
                }
                if let Some(c) = &s.when {
                    let parse = |t: &str| serde_json::from_str(t).unwrap_or(Value::Null);
                    let (k, v) = match &c.test {
                        Test::Equals(t) => ("equals", parse(t)),
                        Test::NotEquals(t) => ("not_equals", parse(t)),
                        Test::Exists(b) => ("exists", json!(b)),
                    };
                    m.insert("when".into(), json!({"path": c.path, k: v}));
                }
                if let Some(r) = &s.retry {
                    m.insert("retry".into(), retry(r));
                }
                Value::Object(m)
            })
            .collect();
        json!({"name": self.name, "description": self.description, "retry": retry(&self.retry), "steps": steps})
    }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> NexusError {
    NexusError::invalid(field, message)
}

/// A step id or workflow name: 1 to [`MAX_ID_BYTES`] of `a-z`, `0-9`, `-`, `_`, starting
/// with a letter or digit (a step id is a path segment of placeholders: no dots).
pub fn validate_id(field: &str, id: &str, dots: bool) -> Result<(), NexusError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_BYTES
        && id
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && id.chars().all(|c| {
            c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || c == '-'
                || c == '_'
                || (dots && c == '.')
        });
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!(
                "{:?} is not a valid name: 1 to {MAX_ID_BYTES} of a-z, 0-9, '-', '_'{}, starting with a letter or digit",
                crate::error::excerpt(id, 80),
                if dots { ", '.'" } else { "" }
            ),
        ))
    }
}

/// A retry policy from a document (fields not given keep their defaults).
pub fn parse_retry(field: &str, v: &Value) -> Result<RetryPolicy, NexusError> {
    let Value::Object(m) = v else {
        return Err(invalid(field, "must be an object"));
    };
    let mut r = RetryPolicy::default();
    for (k, v) in m {
        let n = v
            .as_u64()
            .ok_or_else(|| invalid(format!("{field}.{k}"), "must be a whole number"))?;
        match k.as_str() {
            "max_attempts" => r.max_attempts = n.min(u64::from(u32::MAX)) as u32,
            "initial_backoff_ms" => r.initial_backoff_ms = n,
            "max_backoff_ms" => r.max_backoff_ms = n,
            "timeout_ms" => r.timeout_ms = n,
            other => {
                return Err(invalid(
                    format!("{field}.{other}"),
                    "is not a retry field (max_attempts, initial_backoff_ms, max_backoff_ms, timeout_ms)",
                ))
            }
        }
    }
    Ok(r)
}

fn string_field<'a>(
    m: &'a Map<String, Value>,
    field: &str,
    key: &str,
) -> Result<Option<&'a str>, NexusError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(invalid(format!("{field}.{key}"), "must be a string")),
    }
}

fn parse_step(field: &str, v: &Value) -> Result<StepDef, NexusError> {
    let Value::Object(m) = v else {
        return Err(invalid(field, "must be an object"));
    };
    for k in m.keys() {
        if ![
            "id",
            "after",
            "when",
            "tool",
            "args",
            "sleep_ms",
            "wait_event",
            "retry",
        ]
        .contains(&k.as_str())
        {
            return Err(invalid(
                format!("{field}.{k}"),
                "is not a step field (id, after, when, tool, args, sleep_ms, wait_event, retry)",
            ));
        }
    }
    let id = string_field(m, field, "id")?
        .ok_or_else(|| invalid(format!("{field}.id"), "is required"))?
        .to_string();
    validate_id(&format!("{field}.id"), &id, false)?;
    let after = match m.get("after") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, a)| {
                a.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| invalid(format!("{field}.after[{i}]"), "must be a step id"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(invalid(
                format!("{field}.after"),
                "must be a list of step ids",
            ))
        }
    };
    let kinds = ["tool", "sleep_ms", "wait_event"]
        .iter()
        .filter(|k| m.contains_key(**k))
        .count();
    if kinds != 1 {
        return Err(invalid(
            field,
            "needs exactly one of tool (with args), sleep_ms or wait_event",
        ));
    }
    let action = if let Some(tool) = string_field(m, field, "tool")? {
        if tool.is_empty() {
            return Err(invalid(format!("{field}.tool"), "is empty"));
        }
        let args = match m.get("args") {
            None | Some(Value::Null) => "{}".to_string(),
            Some(a @ Value::Object(_)) => a.to_string(),
            Some(_) => return Err(invalid(format!("{field}.args"), "must be a JSON object")),
        };
        if args.len() > MAX_ARGS_BYTES {
            return Err(invalid(
                format!("{field}.args"),
                format!("is {} bytes; at most {MAX_ARGS_BYTES}", args.len()),
            ));
        }
        Action::Tool {
            tool: tool.to_string(),
            args,
        }
    } else if let Some(ms) = m.get("sleep_ms") {
        if m.contains_key("args") {
            return Err(invalid(
                format!("{field}.args"),
                "applies to a tool step only",
            ));
        }
        let ms = ms
            .as_u64()
            .filter(|ms| *ms > 0 && *ms <= MAX_WAIT_MS)
            .ok_or_else(|| invalid(format!("{field}.sleep_ms"), "must be 1 ms to 7 days"))?;
        Action::Sleep { ms }
    } else {
        if m.contains_key("args") {
            return Err(invalid(
                format!("{field}.args"),
                "applies to a tool step only",
            ));
        }
        let f = format!("{field}.wait_event");
        let Some(Value::Object(w)) = m.get("wait_event") else {
            return Err(invalid(f, "must be an object with topic (and timeout_ms)"));
        };
        let topic = string_field(w, &f, "topic")?
            .ok_or_else(|| invalid(format!("{f}.topic"), "is required"))?
            .to_string();
        // Checked as a pattern with its placeholders standing for one token each.
        let probe = fill_probe(&topic);
        crate::events::validate_pattern(&format!("{f}.topic"), &probe)?;
        let timeout_ms = match w.get("timeout_ms") {
            None | Some(Value::Null) => DEFAULT_EVENT_TIMEOUT_MS,
            Some(v) => v
                .as_u64()
                .filter(|ms| *ms > 0 && *ms <= MAX_WAIT_MS)
                .ok_or_else(|| invalid(format!("{f}.timeout_ms"), "must be 1 ms to 7 days"))?,
        };
        Action::Event { topic, timeout_ms }
    };
    let when = match m.get("when") {
        None | Some(Value::Null) => None,
        Some(Value::Object(w)) => {
            let f = format!("{field}.when");
            let path = string_field(w, &f, "path")?
                .ok_or_else(|| invalid(format!("{f}.path"), "is required"))?
                .to_string();
            let tests: Vec<&str> = ["equals", "not_equals", "exists"]
                .into_iter()
                .filter(|k| w.contains_key(*k))
                .collect();
            if tests.len() != 1 || w.len() != 2 {
                return Err(invalid(
                    f,
                    "needs path and exactly one of equals, not_equals or exists",
                ));
            }
            let test = match tests[0] {
                "equals" => Test::Equals(w["equals"].to_string()),
                "not_equals" => Test::NotEquals(w["not_equals"].to_string()),
                _ => Test::Exists(
                    w["exists"]
                        .as_bool()
                        .ok_or_else(|| invalid(format!("{f}.exists"), "must be true or false"))?,
                ),
            };
            Some(Condition { path, test })
        }
        Some(_) => return Err(invalid(format!("{field}.when"), "must be an object")),
    };
    let retry = match m.get("retry") {
        None | Some(Value::Null) => None,
        Some(r) => Some(parse_retry(&format!("{field}.retry"), r)?),
    };
    Ok(StepDef {
        id,
        after,
        when,
        action,
        retry,
    })
}

/// A topic with each placeholder standing in as one token, to check its shape.
fn fill_probe(topic: &str) -> String {
    let mut out = String::new();
    let mut rest = topic;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        match rest[start..].find('}') {
            Some(end) => {
                out.push('x');
                rest = &rest[start + end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Parses and checks a definition document: fields, step ids, the DAG (every `after` names a
/// step; no cycle) and every placeholder (`input.*`, `run.id`, `workflow`, or the output of
/// a step this one comes after, directly or not). Tools and retry bounds are the service's.
pub fn parse(doc: &str, now_ms: i64) -> Result<WorkflowDef, NexusError> {
    let v: Value = serde_json::from_str(doc)
        .map_err(|e| invalid("definition", format!("is not JSON: {e}")))?;
    let Value::Object(m) = &v else {
        return Err(invalid("definition", "must be a JSON object"));
    };
    for k in m.keys() {
        if !["name", "description", "retry", "steps"].contains(&k.as_str()) {
            return Err(invalid(
                k.clone(),
                "is not a workflow field (name, description, retry, steps)",
            ));
        }
    }
    let name = string_field(m, "definition", "name")?
        .ok_or_else(|| invalid("name", "is required"))?
        .to_string();
    validate_id("name", &name, true)?;
    let description = string_field(m, "definition", "description")?
        .unwrap_or_default()
        .to_string();
    if description.len() > 1024 {
        return Err(invalid("description", "is longer than 1024 bytes"));
    }
    let retry = match m.get("retry") {
        None | Some(Value::Null) => RetryPolicy::default(),
        Some(r) => parse_retry("retry", r)?,
    };
    let Some(Value::Array(items)) = m.get("steps") else {
        return Err(invalid("steps", "is required: a list of steps"));
    };
    if items.is_empty() || items.len() > MAX_STEPS {
        return Err(invalid(
            "steps",
            format!("has {}; 1 to {MAX_STEPS}", items.len()),
        ));
    }
    let steps: Vec<StepDef> = items
        .iter()
        .enumerate()
        .map(|(i, s)| parse_step(&format!("steps[{i}]"), s))
        .collect::<Result<_, _>>()?;
    check_graph(&steps)?;
    Ok(WorkflowDef {
        name,
        description,
        steps,
        retry,
        created_at_ms: now_ms,
        updated_at_ms: now_ms,
    })
}

/// Every step's ancestors (by index), once the graph is known to be a DAG.
pub fn ancestors(steps: &[StepDef]) -> Vec<Vec<usize>> {
    let index = |id: &str| steps.iter().position(|s| s.id == id);
    let mut out: Vec<Vec<usize>> = Vec::with_capacity(steps.len());
    for (i, _) in steps.iter().enumerate() {
        let mut seen = vec![false; steps.len()];
        let mut stack: Vec<usize> = steps[i].after.iter().filter_map(|a| index(a)).collect();
        while let Some(j) = stack.pop() {
            if !seen[j] {
                seen[j] = true;
                stack.extend(steps[j].after.iter().filter_map(|a| index(a)));
            }
        }
        out.push((0..steps.len()).filter(|j| seen[*j]).collect());
    }
    out
}

fn check_graph(steps: &[StepDef]) -> Result<(), NexusError> {
    for (i, s) in steps.iter().enumerate() {
        if steps[..i].iter().any(|o| o.id == s.id) {
            return Err(invalid(
                format!("steps[{i}].id"),
                format!("{} names two steps", s.id),
            ));
        }
    }
    for (i, s) in steps.iter().enumerate() {
        for (j, a) in s.after.iter().enumerate() {
            if !steps.iter().any(|o| &o.id == a) {
                return Err(invalid(
                    format!("steps[{i}].after[{j}]"),
                    format!("{a} is not a step of this workflow"),
                ));
            }
        }
    }
    // Kahn's algorithm: whatever is left is on a cycle.
    let mut indegree: Vec<usize> = steps.iter().map(|s| s.after.len()).collect();
    let mut done = vec![false; steps.len()];
    while let Some(i) = (0..steps.len()).find(|i| !done[*i] && indegree[*i] == 0) {
        done[i] = true;
        for (j, s) in steps.iter().enumerate() {
            indegree[j] -= s.after.iter().filter(|a| **a == steps[i].id).count();
        }
    }
    if let Some(i) = done.iter().position(|d| !d) {
        return Err(invalid(
            format!("steps[{i}].after"),
            format!("step {} is on a cycle", steps[i].id),
        ));
    }
    let ancestors = ancestors(steps);
    for (i, s) in steps.iter().enumerate() {
        let mut texts: Vec<(String, String)> = Vec::new();
        match &s.action {
            Action::Tool { args, .. } => texts.push((format!("steps[{i}].args"), args.clone())),
            Action::Event { topic, .. } => {
                texts.push((format!("steps[{i}].wait_event.topic"), topic.clone()))
            }
            Action::Sleep { .. } => {}
        }
        if let Some(c) = &s.when {
            texts.push((format!("steps[{i}].when.path"), format!("${{{}}}", c.path)));
        }
        for (field, text) in texts {
            for path in template::references(&text) {
                let ok = match path.split('.').collect::<Vec<_>>().as_slice() {
                    ["input", ..] | ["run", "id"] | ["workflow"] => true,
                    ["steps", id, "output", ..] => steps
                        .iter()
                        .position(|o| o.id == *id)
                        .is_some_and(|j| ancestors[i].contains(&j)),
                    _ => false,
                };
                if !ok {
                    return Err(invalid(
                        field,
                        format!(
                            "${{{path}}} is not input.*, run.id, workflow, or steps.ID.output of a step this one comes after"
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}
