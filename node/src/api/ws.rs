//! The WebSocket API at `/ws` on the HTTP port (with its TLS when `[tls] http` is on): JSON
//! messages to subscribe to events, publish them and call tools (`memory.remember` and
//! `memory.recall` among them), with request ids, heartbeats and backpressure. The message
//! schema: docs/websocket.md.
//!
//! Admission is `api::gate`'s, as for gRPC and `/mcp`: a bearer token in the upgrade request,
//! or (browsers cannot set headers) a first `auth` message within [`AUTH_WITHIN`]. Each
//! message is then authorized as the gRPC method it stands for (`events.subscribe`,
//! `events.publish`, `tools.call` on the tool) and counted against the tenant's rate.
//!
//! Bounded: [`MAX_SESSIONS`] per node, [`MAX_SUBSCRIPTIONS`] and [`MAX_IN_FLIGHT`] requests
//! per session, messages of at most [`MAX_MESSAGE`]; what the node sends waits in a queue of
//! [`QUEUE`] messages, and a client that lets it fill (it stopped reading) is told (close
//! code 1013) and dropped: it never holds up the node or other clients. The node pings every
//! [`PING_EVERY`] and drops a client it has heard nothing from for [`IDLE`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify, Semaphore};

use crate::auth::Authenticator;
use crate::error::{code_of, NexusError};
use crate::events::NewEvent;
use crate::iam::rbac;
use crate::service::events::EventService;
use crate::service::tools::{Reporter, ToolService};
use crate::service::Caller;

/// WebSocket sessions a node holds at once.
pub const MAX_SESSIONS: usize = 1024;
/// Event subscriptions of one session.
pub const MAX_SUBSCRIPTIONS: usize = 32;
/// Requests (publishes, calls) one session may have in progress.
pub const MAX_IN_FLIGHT: usize = 16;
/// Largest message a client may send.
pub const MAX_MESSAGE: usize = 1 << 20;
/// Messages waiting to be sent to one client; a client that lets them pile up is dropped.
pub const QUEUE: usize = 1024;
/// A browser's first `auth` message must come within this long.
pub const AUTH_WITHIN: Duration = Duration::from_secs(10);
pub const PING_EVERY: Duration = Duration::from_secs(20);
pub const IDLE: Duration = Duration::from_secs(60);
/// Longest one message may take to write before the client counts as gone.
const WRITE_WITHIN: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct WsState {
    pub auth: Arc<Authenticator>,
    pub events: Arc<EventService>,
    pub tools: Arc<ToolService>,
    pub sessions: Arc<Semaphore>,
    /// Web origins whose pages may open a socket on a node without authentication
    /// (`[mcp] allowed_origins`).
    pub allowed_origins: Arc<Vec<String>>,
}

impl WsState {
    pub fn new(
        auth: Arc<Authenticator>,
        events: Arc<EventService>,
        tools: Arc<ToolService>,
        allowed_origins: Vec<String>,
    ) -> Self {
        WsState {
            auth,
            events,
            tools,
            sessions: Arc::new(Semaphore::new(MAX_SESSIONS)),
            allowed_origins: Arc::new(allowed_origins),
        }
    }
}

pub fn router(state: WsState) -> axum::Router {
    axum::Router::new()
        .route("/ws", get(upgrade))
        .with_state(state)
}

fn http_status(e: &NexusError) -> StatusCode {
    match e {
        NexusError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        NexusError::PermissionDenied(_) => StatusCode::FORBIDDEN,
        NexusError::ResourceExhausted { .. } => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

async fn admit(
    s: &WsState,
    headers: &HeaderMap,
    source: Option<std::net::IpAddr>,
) -> Result<Caller, NexusError> {
    let metadata = tonic::metadata::MetadataMap::from_headers(headers.clone());
    let request_id = uuid::Uuid::now_v7().to_string();
    super::gate::admit(super::gate::Knock {
        auth: Some(&s.auth),
        metadata: &metadata,
        source,
        method: "ws",
        target: "",
        request_id: &request_id,
    })
    .await
}

async fn upgrade(
    State(s): State<WsState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    // Without authentication anything that reaches the port acts as the local user: a web
    // page the user visits must not (cross-site WebSocket hijacking, DNS rebinding). A
    // browser always sends Origin; other clients send none.
    if !s.auth.enabled() {
        if let Some(origin) = headers.get(axum::http::header::ORIGIN) {
            let origin = origin.to_str().unwrap_or_default();
            if !s.allowed_origins.iter().any(|o| o == origin) {
                return (
                    StatusCode::FORBIDDEN,
                    format!("origin {origin:?} may not open a socket on a node without authentication; list it in [mcp] allowed_origins\n"),
                )
                    .into_response();
            }
        }
    }
    let Ok(permit) = s.sessions.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("this node holds {MAX_SESSIONS} WebSocket sessions; use another\n"),
        )
            .into_response();
    };
    // A token in the upgrade request is checked before upgrading (a refusal is an HTTP
    // status); without one, the first message must carry it.
    let caller = if headers.contains_key(axum::http::header::AUTHORIZATION) || !s.auth.enabled() {
        match admit(&s, &headers, Some(remote.ip())).await {
            Ok(c) => Some(c),
            Err(e) => return (http_status(&e), format!("{e}\n")).into_response(),
        }
    } else {
        None
    };
    ws.max_message_size(MAX_MESSAGE)
        .on_upgrade(move |socket| async move {
            let _permit = permit;
            session(s, socket, caller, remote).await;
        })
}

/// What the session's writer is told besides messages to send.
struct Outbox {
    tx: mpsc::Sender<Message>,
    /// Set when the queue filled: the writer closes with 1013 and the session ends.
    too_slow: Notify,
}

impl Outbox {
    /// Queues a message; false (and the session told to end) when the client let the queue
    /// fill.
    fn send(&self, v: Value) -> bool {
        match self
            .tx
            .try_send(Message::Text(Utf8Bytes::from(v.to_string())))
        {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.too_slow.notify_one();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    fn error(&self, id: &Value, e: &NexusError) -> bool {
        self.send(
            json!({"type": "error", "id": id, "code": code_name(e), "message": e.to_string()}),
        )
    }
}

/// The gRPC name of an error's code: `INVALID_ARGUMENT`.
fn code_name(e: &NexusError) -> String {
    let mut out = String::new();
    for (i, c) in format!("{:?}", code_of(e)).chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

async fn session(s: WsState, socket: WebSocket, caller: Option<Caller>, remote: SocketAddr) {
    use futures_util::{SinkExt, StreamExt};
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::channel::<Message>(QUEUE);
    let outbox = Arc::new(Outbox {
        tx,
        too_slow: Notify::new(),
    });
    // The writer: the queue to the socket, pings, and the close when the client is too slow.
    let writer_box = outbox.clone();
    let writer = tokio::spawn(async move {
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        loop {
            let msg = tokio::select! {
                biased;
                _ = writer_box.too_slow.notified() => {
                    crate::observe::metrics::SHED.with_label_values(&["ws_slow_consumer"]).inc();
                    let close = Message::Close(Some(CloseFrame {
                        code: 1013,
                        reason: Utf8Bytes::from_static("the client did not read what it was sent; dropped"),
                    }));
                    let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(close)).await;
                    return;
                }
                m = rx.recv() => match m {
                    Some(m) => m,
                    None => return,
                },
                _ = ping.tick() => Message::Ping(Default::default()),
            };
            let closing = matches!(msg, Message::Close(_));
            match tokio::time::timeout(WRITE_WITHIN, sink.send(msg)).await {
                Ok(Ok(())) if !closing => {}
                _ => return,
            }
        }
    });

    let mut caller = caller;
    if let Some(c) = &caller {
        outbox.send(json!({"type": "ready", "tenant": c.tenant, "subject": c.subject}));
    }
    let auth_deadline = Instant::now() + AUTH_WITHIN;
    let mut subscriptions: HashMap<String, tokio::task::AbortHandle> = HashMap::new();
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut last_heard = Instant::now();
    let close = |code: u16, reason: &'static str| {
        let _ = outbox.tx.try_send(Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        })));
    };
    loop {
        let wait = if caller.is_none() {
            auth_deadline.saturating_duration_since(Instant::now())
        } else {
            IDLE.saturating_sub(last_heard.elapsed())
        };
        let frame = tokio::select! {
            f = stream.next() => f,
            _ = tokio::time::sleep(wait) => {
                if caller.is_none() {
                    close(1008, "no auth message within 10 s");
                } else {
                    close(1001, "nothing heard for 60 s");
                }
                break;
            }
            _ = outbox.tx.closed() => break,
        };
        let text = match frame {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Binary(_))) => {
                close(1003, "messages are JSON text");
                break;
            }
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            // Pings are answered by the library; any frame means the client is there.
            Some(Ok(_)) => {
                last_heard = Instant::now();
                continue;
            }
        };
        last_heard = Instant::now();
        let msg: Value = match serde_json::from_str(text.as_str()) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                outbox.error(
                    &Value::Null,
                    &NexusError::invalid("message", "is not a JSON object"),
                );
                continue;
            }
        };
        let id = msg.get("id").cloned().unwrap_or(Value::Null);
        let kind = msg["type"].as_str().unwrap_or_default().to_string();
        // Before anything else, a browser authenticates.
        let Some(c) = caller.clone() else {
            if kind != "auth" {
                outbox.error(
                    &id,
                    &NexusError::Unauthenticated(
                        "send {\"type\": \"auth\", \"token\": ...} first".into(),
                    ),
                );
                close(1008, "not authenticated");
                break;
            }
            let token = msg["token"].as_str().unwrap_or_default();
            let mut headers = HeaderMap::new();
            if let Ok(v) = format!("Bearer {token}").parse() {
                headers.insert(axum::http::header::AUTHORIZATION, v);
            }
            match admit(&s, &headers, Some(remote.ip())).await {
                Ok(c) => {
                    outbox.send(json!({"type": "ready", "id": id, "tenant": c.tenant, "subject": c.subject}));
                    caller = Some(c);
                }
                Err(e) => {
                    outbox.error(&id, &e);
                    close(1008, "authentication failed");
                    break;
                }
            }
            continue;
        };
        match kind.as_str() {
            "ping" => {
                outbox.send(json!({"type": "pong", "id": id}));
            }
            "subscribe" => {
                let Some(sid) = id.as_str().filter(|s| !s.is_empty()).map(str::to_string) else {
                    outbox.error(
                        &id,
                        &NexusError::invalid("id", "a subscription needs a string id"),
                    );
                    continue;
                };
                if let Err(e) = allowed(&s, &c, "events.subscribe", "") {
                    outbox.error(&id, &e);
                    continue;
                }
                if subscriptions.contains_key(&sid) {
                    outbox.error(
                        &id,
                        &NexusError::AlreadyExists(format!("subscription {sid} exists")),
                    );
                    continue;
                }
                if subscriptions.len() >= MAX_SUBSCRIPTIONS {
                    outbox.error(
                        &id,
                        &NexusError::ResourceExhausted {
                            limit: "subscriptions per WebSocket".into(),
                            message: format!("at most {MAX_SUBSCRIPTIONS}; unsubscribe from one"),
                        },
                    );
                    continue;
                }
                let patterns: Vec<String> = msg["patterns"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|p| p.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                let after = msg["after_seq"].as_u64();
                match s.events.subscribe(&c.tenant, patterns, after).await {
                    Err(e) => {
                        outbox.error(&id, &e);
                    }
                    Ok((mut events, mut ended)) => {
                        outbox.send(json!({"type": "subscribed", "id": sid}));
                        let (out, sid2) = (outbox.clone(), sid.clone());
                        let task = tokio::spawn(async move {
                            while let Some(e) = events.recv().await {
                                let data: Value =
                                    serde_json::from_str(&e.data).unwrap_or(Value::Null);
                                if !out.send(json!({"type": "event", "id": sid2, "seq": e.seq, "topic": e.topic,
                                                     "data": data, "source": e.source, "at_ms": e.at_ms})) {
                                    return;
                                }
                            }
                            if let Ok(e) = ended.try_recv() {
                                out.error(&Value::String(sid2), &e);
                            }
                        });
                        subscriptions.insert(sid, task.abort_handle());
                    }
                }
            }
            "unsubscribe" => {
                let sid = id.as_str().unwrap_or_default();
                match subscriptions.remove(sid) {
                    Some(task) => {
                        task.abort();
                        outbox.send(json!({"type": "unsubscribed", "id": sid}));
                    }
                    None => {
                        outbox.error(&id, &NexusError::NotFound(format!("no subscription {sid}")));
                    }
                }
            }
            "publish" | "call" => {
                let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                    outbox.error(
                        &id,
                        &NexusError::ResourceExhausted {
                            limit: "requests in flight per WebSocket".into(),
                            message: format!("at most {MAX_IN_FLIGHT}; wait for a reply"),
                        },
                    );
                    continue;
                };
                let (s, out) = (s.clone(), outbox.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    let reply = if kind == "publish" {
                        publish(&s, &c, &msg)
                            .await
                            .map(|seq| json!({"type": "published", "id": id, "seq": seq}))
                    } else {
                        call(&s, &c, &msg).await.map(|(output, version, us)| {
                            json!({"type": "result", "id": id, "output": output, "version": version, "duration_us": us})
                        })
                    };
                    match reply {
                        Ok(v) => out.send(v),
                        Err(e) => out.error(&id, &e),
                    };
                });
            }
            "auth" => {
                outbox.error(
                    &id,
                    &NexusError::precondition("type", "already authenticated"),
                );
            }
            other => {
                outbox.error(&id, &NexusError::invalid(
                    "type",
                    format!("{other:?} is not a message type: auth, subscribe, unsubscribe, publish, call, ping"),
                ));
            }
        }
    }
    for (_, task) in subscriptions {
        task.abort();
    }
    drop(outbox);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
}

/// The message's permission, as the gRPC method it stands for, and the tenant's rate.
fn allowed(s: &WsState, c: &Caller, method: &str, target: &str) -> Result<(), NexusError> {
    rbac::authorize(method, target, c)?;
    if s.auth.enabled() {
        s.auth.admit(c)?;
    }
    Ok(())
}

/// The caller, with its writes audited as `action`.
fn acting(c: &Caller, action: &str) -> Caller {
    let mut c = c.clone();
    if let Some(b) = &mut c.on_behalf {
        b.context.action = action.to_string();
        b.context.request_id = uuid::Uuid::now_v7().to_string();
        b.context.at_ms = crate::memory::now_ms();
    }
    c
}

async fn publish(s: &WsState, c: &Caller, msg: &Value) -> Result<u64, NexusError> {
    allowed(s, c, "events.publish", "")?;
    let topic = msg["topic"]
        .as_str()
        .ok_or_else(|| NexusError::invalid("topic", "is required"))?;
    let data = msg.get("data").cloned().unwrap_or(Value::Null).to_string();
    let (seq, _) = s
        .events
        .publish(
            &acting(c, "events.publish"),
            vec![NewEvent {
                topic: topic.to_string(),
                data,
            }],
        )
        .await
        // The fields as this message names them (`topic`, `data`).
        .map_err(|e| match e {
            NexusError::InvalidArgument { field, message } => {
                NexusError::invalid(field.trim_start_matches("events[0]."), message)
            }
            other => other,
        })?;
    Ok(seq)
}

async fn call(s: &WsState, c: &Caller, msg: &Value) -> Result<(Value, String, u64), NexusError> {
    let tool = msg["tool"]
        .as_str()
        .ok_or_else(|| NexusError::invalid("tool", "is required"))?;
    allowed(s, c, "tools.call", tool)?;
    let args = msg
        .get("args")
        .cloned()
        .unwrap_or_else(|| json!({}))
        .to_string();
    let out = s
        .tools
        .call(&acting(c, "tools.call"), tool, &args, Reporter::default())
        .await?;
    Ok((out.output, out.version, out.duration.as_micros() as u64))
}
