//! Events: publishing (a replicated write) and subscriptions (`events` for the records, the
//! numbering and retention).
//!
//! A subscription reads the tenant's events after a number from this node's state, sends
//! those its patterns match, and waits for the next applied change; every node applies every
//! event, so a subscriber may use any node. Delivery is at least once: a subscriber that
//! reconnects with the last number it processed gets everything after it that retention
//! kept (and a precise error when retention took some). Nothing is buffered per subscriber
//! beyond a bounded channel: the events are on disk. A subscriber that does not take an event
//! within [`SLOW_SUBSCRIBER`] is dropped with RESOURCE_EXHAUSTED naming the number to resume
//! after; it never holds up the node or other subscribers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::cluster::ReadConsistency;
use crate::command::{self, Cluster, Op, Reply};
use crate::error::NexusError;
use crate::events::{self, EventOp, EventRecord, EventReply, NewEvent};
use crate::memory::now_ms;
use crate::store::blocking;

use super::Caller;

/// Most events one publish carries.
pub const MAX_PUBLISH: usize = 100;
/// Most patterns of one subscription.
pub const MAX_PATTERNS: usize = 16;
/// Most subscriptions a node serves at once.
pub const MAX_SUBSCRIPTIONS: usize = 4096;
/// Longest a subscriber may leave an event untaken before it is dropped.
pub const SLOW_SUBSCRIBER: Duration = Duration::from_secs(5);
/// Events a subscription holds ready for its subscriber.
const QUEUE: usize = 64;
/// Events read from disk at a time.
const PAGE: usize = 256;
/// Most listed at once.
pub const MAX_LIST: usize = 1000;

/// How a subscription ended other than by its subscriber leaving.
pub type Ended = mpsc::Receiver<NexusError>;

pub struct EventService {
    node: Arc<Cluster>,
    subscriptions: Arc<AtomicUsize>,
}

/// Counts a subscription while it lives.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl EventService {
    pub fn new(node: Arc<Cluster>) -> Self {
        EventService {
            node,
            subscriptions: Arc::default(),
        }
    }

    /// Publishes events to the caller's tenant; returns the numbers they got.
    pub async fn publish(
        &self,
        caller: &Caller,
        events: Vec<NewEvent>,
    ) -> Result<(u64, u64), NexusError> {
        if events.is_empty() || events.len() > MAX_PUBLISH {
            return Err(NexusError::invalid(
                "events",
                format!("has {}; 1 to {MAX_PUBLISH}", events.len()),
            ));
        }
        let mut checked = Vec::with_capacity(events.len());
        for (i, mut e) in events.into_iter().enumerate() {
            events::validate_topic(&format!("events[{i}].topic"), &e.topic)?;
            if e.data.trim().is_empty() {
                e.data = "null".into();
            }
            if e.data.len() > events::MAX_DATA_BYTES {
                return Err(NexusError::invalid(
                    format!("events[{i}].data"),
                    format!(
                        "is {} bytes; at most {}",
                        e.data.len(),
                        events::MAX_DATA_BYTES
                    ),
                ));
            }
            let v: serde_json::Value = serde_json::from_str(&e.data).map_err(|err| {
                NexusError::invalid(format!("events[{i}].data"), format!("is not JSON: {err}"))
            })?;
            // Stored compact, as every node will hand it out.
            e.data = v.to_string();
            checked.push(e);
        }
        let op = EventOp::Publish {
            events: checked,
            source: caller.subject.clone(),
            at_ms: now_ms(),
        };
        match command::propose(&self.node, &caller.scope(), Op::Event(op)).await? {
            Reply::Event(EventReply::Published {
                first_seq,
                last_seq,
            }) => Ok((first_seq, last_seq)),
            other => Err(NexusError::internal(format!("unexpected reply: {other:?}"))),
        }
    }

    /// Events after `after_seq` that match any of `patterns`, at most `limit`, and the number
    /// to list after next.
    pub async fn list(
        &self,
        tenant: &str,
        patterns: Vec<String>,
        after_seq: u64,
        limit: usize,
        consistency: ReadConsistency,
    ) -> Result<(Vec<EventRecord>, u64), NexusError> {
        let patterns = check_patterns(patterns)?;
        if limit == 0 || limit > MAX_LIST {
            return Err(NexusError::invalid(
                "limit",
                format!("is {limit}; 1 to {MAX_LIST}"),
            ));
        }
        self.node.read_barrier(consistency).await?;
        let log = events::log(&self.node.store, tenant)?;
        check_kept(&log, after_seq)?;
        let (store, t) = (self.node.store.clone(), tenant.to_string());
        Ok(blocking(move || {
            events::read_after(&store, &t, after_seq, limit, limit * 16, |topic| {
                patterns.iter().any(|p| events::matches(p, topic))
            })
        })
        .await?)
    }

    /// Subscribes to the tenant's events that match any of `patterns`: those after
    /// `after_seq`, or (None) those published from now on. Returns the events as they come
    /// and, once the subscription ends on the node's side, why.
    pub async fn subscribe(
        &self,
        tenant: &str,
        patterns: Vec<String>,
        after_seq: Option<u64>,
    ) -> Result<(mpsc::Receiver<EventRecord>, Ended), NexusError> {
        let patterns = check_patterns(patterns)?;
        let count = self.subscriptions.fetch_add(1, Ordering::SeqCst);
        let slot = Slot(self.subscriptions.clone());
        if count >= MAX_SUBSCRIPTIONS {
            return Err(NexusError::ResourceExhausted {
                limit: "event subscriptions per node".into(),
                message: format!("this node serves {MAX_SUBSCRIPTIONS} already; use another"),
            });
        }
        // Watch before reading, so that nothing applied in between is missed.
        let mut changes = self.node.store.watch_changes();
        let log = events::log(&self.node.store, tenant)?;
        let mut cursor = match after_seq {
            Some(n) => {
                check_kept(&log, n)?;
                n
            }
            None => log.last_seq(),
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let (end_tx, end_rx) = mpsc::channel(1);
        let store = self.node.store.clone();
        let tenant = tenant.to_string();
        tokio::spawn(async move {
            let _slot = slot;
            let patterns = Arc::new(patterns);
            loop {
                // Everything there is after the cursor, a page at a time.
                loop {
                    // Retention may have taken events while the subscriber lagged.
                    if let Err(e) = events::log(&store, &tenant)
                        .map_err(NexusError::from)
                        .and_then(|log| check_kept(&log, cursor))
                    {
                        let _ = end_tx.try_send(e);
                        return;
                    }
                    let (s, t, p) = (store.clone(), tenant.clone(), patterns.clone());
                    let read = blocking(move || {
                        events::read_after(&s, &t, cursor, PAGE, PAGE * 4, |topic| {
                            p.iter().any(|p| events::matches(p, topic))
                        })
                    })
                    .await;
                    let (page, last) = match read {
                        Ok(r) => r,
                        Err(e) => {
                            let _ = end_tx.try_send(NexusError::from(e));
                            return;
                        }
                    };
                    let more = last > cursor;
                    for e in page {
                        let seq = e.seq;
                        match tokio::time::timeout(SLOW_SUBSCRIBER, tx.send(e)).await {
                            Ok(Ok(())) => cursor = seq,
                            // The subscriber left.
                            Ok(Err(_)) => return,
                            Err(_) => {
                                let _ = end_tx.try_send(NexusError::ResourceExhausted {
                                    limit: "event subscriber speed".into(),
                                    message: format!(
                                        "the subscriber took no event for {} s and was dropped; subscribe again with after_seq {cursor}",
                                        SLOW_SUBSCRIBER.as_secs()
                                    ),
                                });
                                return;
                            }
                        }
                    }
                    cursor = cursor.max(last);
                    if !more {
                        break;
                    }
                }
                // Then the next change of this tenant's events, or the subscriber leaving.
                loop {
                    tokio::select! {
                        _ = tx.closed() => return,
                        change = changes.recv() => match change {
                            Ok(c) if c.concerns("events", &tenant) => break,
                            Ok(_) => {}
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                        },
                    }
                }
            }
        });
        Ok((rx, end_rx))
    }

    /// The tenant's log position: (oldest kept, newest).
    pub fn position(&self, tenant: &str) -> Result<(u64, u64), NexusError> {
        let log = events::log(&self.node.store, tenant)?;
        Ok((log.first_seq, log.last_seq()))
    }
}

fn check_patterns(patterns: Vec<String>) -> Result<Vec<String>, NexusError> {
    if patterns.is_empty() || patterns.len() > MAX_PATTERNS {
        return Err(NexusError::invalid(
            "patterns",
            format!(
                "has {}; 1 to {MAX_PATTERNS} (\">\" for every topic)",
                patterns.len()
            ),
        ));
    }
    for (i, p) in patterns.iter().enumerate() {
        events::validate_pattern(&format!("patterns[{i}]"), p)?;
    }
    Ok(patterns)
}

/// Ok when every event after `after_seq` is still kept.
fn check_kept(log: &events::EventLog, after_seq: u64) -> Result<(), NexusError> {
    if log.first_seq > 0 && after_seq + 1 < log.first_seq {
        return Err(NexusError::precondition(
            "after_seq",
            format!(
                "events {} to {} are no longer kept (retention: the newest {} and 7 days); the oldest kept is {}: resume after {}",
                after_seq + 1,
                log.first_seq - 1,
                events::KEEP_EVENTS,
                log.first_seq,
                log.first_seq - 1
            ),
        ));
    }
    Ok(())
}
