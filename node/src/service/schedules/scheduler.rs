//! The leader's scheduler, which fires due times and runs their targets.
//!
//! The scheduler runs on every node and acts only while its node leads. Each pass reads every
//! schedule (few per tenant; the pass costs a scan of the `schedules` family) and:
//! - fires the next due time once it (plus its jitter) has come: one `ScheduleOp::Fire`, the
//!   commit point, recording the run and the next due time together (and, after downtime, the
//!   due times older than the catch-up window as one skipped record);
//! - starts a run's next attempt when its retry is due, a queued due time once nothing is in
//!   progress, and a new attempt for a run another leader started and never finished
//!   (`Start`, conditional on the run's state and attempt);
//! - runs each started attempt in a task of its own, as the schedule's owner with the grants
//!   the owner has now, within the attempt's timeout, and records its outcome (`Finish`).
//!
//! Then it sleeps until the earliest next due time or retry, at most a second, or until a
//! schedule changes. A node that stops leading aborts the attempts it runs; the next leader
//! finds them running and starts them again (at-least-once start, docs/design.md).

use std::sync::Arc;
use std::time::Duration;

use crate::command::Scope;
use crate::error::NexusError;
use crate::memory::now_ms;
use crate::observe::metrics;
use crate::schedules::{
    self, Outcome, RunRecord, RunState, ScheduleOp, ScheduleRecord, ScheduleReply, Spec,
};
use crate::store::blocking;

use super::super::automation::{self, Driver};
use super::{unexpected, ScheduleService};

/// Most due times counted as skipped by walking a cron expression (more count as this).
const MAX_SKIPPED_COUNTED: u64 = 100_000;
/// Longest the scheduler sleeps between passes.
const MAX_IDLE: Duration = automation::MAX_IDLE;
/// How late a due time may start and still count as on time (a window of 0 skips only what
/// is later than this).
const ON_TIME: Duration = Duration::from_secs(1);
/// How soon a fire that failed is tried again.
const RETRY_FIRE: Duration = Duration::from_millis(200);

/// The attempts this node runs, by (tenant, schedule, due time).
pub(super) type Running = automation::Attempts<(String, String, i64)>;

impl Driver for ScheduleService {
    const TOPICS: &'static [&'static str] = &["schedules"];
    const NAME: &'static str = "scheduler";

    fn node(&self) -> &crate::command::Cluster {
        &self.node
    }

    async fn pass(self: &Arc<Self>) -> Result<Duration, NexusError> {
        self.pass_once().await
    }

    /// Aborts every attempt this node runs (it no longer leads): the next leader starts them
    /// again.
    fn abort_all(&self) {
        self.running.abort_all();
    }
}

impl ScheduleService {
    /// The scheduler: on every node, acting while the node leads, until `stop`.
    pub async fn run(self: Arc<Self>, stop: tokio::sync::watch::Receiver<bool>) {
        automation::drive(self, stop).await
    }

    fn runs_here(&self, tenant: &str, name: &str, due_ms: i64, attempt: u32) -> bool {
        self.running
            .runs(&(tenant.to_string(), name.to_string(), due_ms), attempt)
    }

    /// One pass over every schedule; returns how long to sleep.
    async fn pass_once(self: &Arc<Self>) -> Result<Duration, NexusError> {
        let store = self.node.store.clone();
        let all = blocking(move || schedules::all(&store)).await?;
        let now = now_ms();
        let mut wake = now + MAX_IDLE.as_millis() as i64;
        // Due ones fire together: their proposals share Raft entries instead of queueing
        // one behind another.
        let mut fires = tokio::task::JoinSet::new();
        for (tenant, s) in &all {
            if !s.paused && s.next_due_ms != 0 {
                let start_at =
                    s.next_due_ms + jitter_ms(tenant, &s.name, s.next_due_ms, s.jitter_ms) as i64;
                if now >= start_at {
                    let (this, tenant, s) = (self.clone(), tenant.clone(), s.clone());
                    fires.spawn(async move {
                        let r = this.fire(&tenant, &s, now).await;
                        if let Err(e) = &r {
                            tracing::debug!(error = %e, tenant, schedule = s.name, "firing");
                        }
                        r.is_ok()
                    });
                } else {
                    wake = wake.min(start_at);
                }
            }
        }
        while let Some(fired) = fires.join_next().await {
            wake = match fired {
                // Catching up: look again at once.
                Ok(true) => wake.min(now),
                // Refused (this node's state is behind the log, the tenant is gone) or not
                // committed: looked at again shortly, not in a loop.
                _ => wake.min(now + RETRY_FIRE.as_millis() as i64),
            };
        }
        for (tenant, s) in &all {
            if s.active > 0 || s.queued_due_ms != 0 {
                match self.tend(tenant, s, now).await {
                    Ok(next) => wake = wake.min(next),
                    Err(e) => {
                        tracing::debug!(error = %e, tenant, schedule = s.name, "starting attempts")
                    }
                }
            }
        }
        Ok(Duration::from_millis((wake - now_ms()).max(0) as u64))
    }

    /// Fires `s`'s next due time: the catch-up decision, then the `Fire` commit point, then
    /// the attempt.
    async fn fire(
        self: &Arc<Self>,
        tenant: &str,
        s: &ScheduleRecord,
        now: i64,
    ) -> Result<(), NexusError> {
        let expected = s.next_due_ms;
        let (skipped, skipped_through_ms, due, next_due_ms) = plan_fire(s, now)?;
        let op = ScheduleOp::Fire {
            name: s.name.clone(),
            expected_ms: expected,
            skipped,
            skipped_through_ms,
            due_ms: due,
            next_due_ms,
            node: self.node.id,
            at_ms: now,
        };
        let ScheduleReply::Fired { run } = self.propose(&Scope::system(tenant), op).await? else {
            return Err(NexusError::internal("unexpected reply to fire"));
        };
        if skipped > 0 {
            metrics::SCHEDULE_RUNS
                .with_label_values(&["skipped"])
                .inc_by(skipped);
            tracing::warn!(
                tenant,
                schedule = s.name,
                skipped,
                "due times older than the catch-up window were skipped"
            );
        }
        if let Some(run) = run {
            match run.state {
                RunState::Running => {
                    let late = now
                        - run.due_ms
                        - jitter_ms(tenant, &s.name, run.due_ms, s.jitter_ms) as i64;
                    metrics::SCHEDULE_LATENESS.observe(late.max(0) as f64 / 1000.0);
                    self.spawn(tenant, s.clone(), run);
                }
                other => metrics::SCHEDULE_RUNS
                    .with_label_values(&[other.name()])
                    .inc(),
            }
        }
        Ok(())
    }

    /// Starts what `s`'s runs need: due retries (and replays), a queued due time once nothing
    /// is in progress, and new attempts of runs no one here runs (a leader started them and
    /// stopped leading). Returns when to look again.
    async fn tend(
        self: &Arc<Self>,
        tenant: &str,
        s: &ScheduleRecord,
        now: i64,
    ) -> Result<i64, NexusError> {
        let (store, t, n) = (self.node.store.clone(), tenant.to_string(), s.name.clone());
        let runs = blocking(move || {
            schedules::runs(&store, &t, &n, schedules::MAX_KEEP_RUNS as usize + 8)
        })
        .await?;
        let mut wake = i64::MAX;
        for r in runs {
            match r.state {
                RunState::Waiting if r.retry_at_ms <= now => {
                    self.start(tenant, s, &r, RunState::Waiting, now).await?;
                }
                RunState::Waiting => wake = wake.min(r.retry_at_ms),
                RunState::Running if !self.runs_here(tenant, &s.name, r.due_ms, r.attempt) => {
                    if r.attempt < s.retry.max_attempts {
                        tracing::warn!(tenant, run = r.id(), attempt = r.attempt, "a run's attempt was started by a leader that stopped leading; starting it again");
                        self.start(tenant, s, &r, RunState::Running, now).await?;
                    } else {
                        let op = ScheduleOp::Finish {
                            name: s.name.clone(),
                            due_ms: r.due_ms,
                            attempt: r.attempt,
                            outcome: Outcome::Failed {
                                error: "the leader running its last attempt stopped leading before it finished".into(),
                                retry_at_ms: 0,
                            },
                            at_ms: now,
                        };
                        self.propose(&Scope::system(tenant), op).await?;
                        metrics::SCHEDULE_RUNS.with_label_values(&["dead"]).inc();
                    }
                }
                RunState::Queued if s.active == 0 => {
                    self.start(tenant, s, &r, RunState::Queued, now).await?;
                }
                _ => {}
            }
        }
        Ok(wake)
    }

    async fn start(
        self: &Arc<Self>,
        tenant: &str,
        s: &ScheduleRecord,
        r: &RunRecord,
        from: RunState,
        now: i64,
    ) -> Result<(), NexusError> {
        let op = ScheduleOp::Start {
            name: s.name.clone(),
            due_ms: r.due_ms,
            from,
            from_attempt: r.attempt,
            attempt: r.attempt + 1,
            node: self.node.id,
            at_ms: now,
        };
        match self.propose(&Scope::system(tenant), op).await? {
            ScheduleReply::Run(run) => {
                self.spawn(tenant, s.clone(), run);
                Ok(())
            }
            other => Err(unexpected(other)),
        }
    }

    /// Runs a started attempt in a task of its own and records its outcome.
    fn spawn(self: &Arc<Self>, tenant: &str, s: ScheduleRecord, run: RunRecord) {
        let key = (tenant.to_string(), s.name.clone(), run.due_ms);
        let this = self.clone();
        let tenant = tenant.to_string();
        let attempt = run.attempt;
        self.running.spawn(key, attempt, async move {
            let result =
                automation::within(s.retry.timeout_ms, this.call_target(&tenant, &s, &run)).await;
            let now = now_ms();
            let outcome = match result {
                Ok(output) => Outcome::Succeeded { output },
                Err(e) => Outcome::Failed {
                    retry_at_ms: automation::retry_at(
                        &s.retry,
                        run.attempt,
                        &e,
                        automation::seed(&tenant, &s.name, run.due_ms, u64::from(run.attempt)),
                        now,
                    ),
                    error: e.to_string(),
                },
            };
            let label = match &outcome {
                Outcome::Succeeded { .. } => "succeeded",
                Outcome::Failed { retry_at_ms: 0, .. } => "dead",
                Outcome::Failed { .. } => "failed",
            };
            metrics::SCHEDULE_RUNS.with_label_values(&[label]).inc();
            let op = ScheduleOp::Finish {
                name: s.name.clone(),
                due_ms: run.due_ms,
                attempt: run.attempt,
                outcome,
                at_ms: now,
            };
            if let Err(e) = this.propose(&Scope::system(&tenant), op).await {
                // The next leader finds the attempt running and starts it again.
                tracing::warn!(error = %e, tenant, run = run.id(), "recording a run's outcome");
            }
        });
    }

    /// Calls the schedule's tool as its owner, with the owner's grants as they are now.
    async fn call_target(
        &self,
        tenant: &str,
        s: &ScheduleRecord,
        run: &RunRecord,
    ) -> Result<String, NexusError> {
        automation::call_as_owner(
            &self.tools,
            &self.node.store,
            automation::Acting {
                tenant,
                owner: &s.owner,
                request_id: format!("{}#{}", run.id(), run.attempt),
                action: "schedules.run",
            },
            &s.tool,
            &fill_run(&s.args, run),
        )
        .await
    }
}

/// What firing `s` now does, from its stored next due time: how many due times are too late
/// to run (and the last of them), the due time to start (None: none is due within the
/// window), and the next due time after them all.
fn plan_fire(s: &ScheduleRecord, now: i64) -> Result<(u64, i64, Option<i64>, i64), NexusError> {
    let expected = s.next_due_ms;
    // Due times older than the window are skipped together; the oldest within it fires.
    // Late is counted from when a due time was to start (its jitter, at most `jitter_ms`)
    // and past a grace that any pass may take (so a window of 0 still runs what is on time).
    let horizon = now - s.catch_up_ms as i64 - s.jitter_ms as i64 - ON_TIME.as_millis() as i64;
    let (skipped, skipped_through_ms, due) = if expected >= horizon {
        (0, 0, Some(expected))
    } else {
        // The due times too old: from `expected` through the last before the horizon.
        let last_skipped = last_before(&s.spec, s.created_at_ms, expected, horizon)?;
        let skipped = s.spec.count_between(
            s.created_at_ms,
            expected - 1,
            last_skipped,
            MAX_SKIPPED_COUNTED,
        )?;
        let within = s
            .spec
            .next_after(s.created_at_ms, last_skipped)?
            .filter(|t| *t <= now);
        (skipped, last_skipped, within)
    };
    let next_due_ms = match due {
        Some(d) => s.spec.next_after(s.created_at_ms, d)?,
        None => s.spec.next_after(s.created_at_ms, now)?,
    }
    .unwrap_or(0);
    Ok((skipped, skipped_through_ms, due, next_due_ms))
}

/// The last due time before `horizon` from `expected` on (expected itself when none later).
fn last_before(spec: &Spec, anchor: i64, expected: i64, horizon: i64) -> Result<i64, NexusError> {
    let mut last = expected;
    if let Spec::Every { every_ms } = spec {
        let every = *every_ms as i64;
        let n = (horizon - 1 - anchor).div_euclid(every);
        return Ok((anchor + n * every).max(expected));
    }
    let mut at = expected;
    for _ in 0..MAX_SKIPPED_COUNTED {
        match spec.next_after(anchor, at)? {
            Some(t) if t < horizon => {
                last = t;
                at = t;
            }
            _ => break,
        }
    }
    Ok(last)
}

/// The jitter of one due time: the same on every node, up to `jitter_ms`.
pub fn jitter_ms(tenant: &str, name: &str, due_ms: i64, jitter_ms: u64) -> u64 {
    if jitter_ms == 0 {
        0
    } else {
        automation::seed(tenant, name, due_ms, 0) % (jitter_ms + 1)
    }
}

/// Fills `${run.id}`, `${run.due_ms}` and `${run.attempt}` (JSON-safe: a run id is a schedule
/// name, a slash and digits).
fn fill_run(args: &str, run: &RunRecord) -> String {
    if !args.contains("${run.") {
        return args.to_string();
    }
    args.replace("${run.id}", &run.id())
        .replace("${run.due_ms}", &run.due_ms.to_string())
        .replace("${run.attempt}", &run.attempt.to_string())
}

#[cfg(test)]
mod tests {
    use super::super::validate_args;
    use super::*;
    use crate::schedules::{Overlap, RetryPolicy};
    use crate::service::automation::validate_retry;

    #[test]
    fn skipping_after_downtime_keeps_the_window() {
        let every = Spec::Every { every_ms: 1000 };
        // Made at 0; down from 1000 to 100_500 with a 10 s window: 1000..=90_000 skipped.
        assert_eq!(last_before(&every, 0, 1000, 90_500).unwrap(), 90_000);
        assert_eq!(every.count_between(0, 999, 90_499, 100).unwrap(), 90);
        let cron = Spec::Cron {
            expr: "* * * * * *".into(),
            zone: "UTC".into(),
        };
        assert_eq!(last_before(&cron, 0, 1000, 5500).unwrap(), 5000);
    }

    #[test]
    fn late_due_times_are_skipped_only_past_the_window() {
        let mut s = ScheduleRecord {
            name: "tick".into(),
            description: String::new(),
            spec: Spec::Every { every_ms: 1000 },
            tool: "echo".into(),
            args: "{}".into(),
            owner: "local".into(),
            overlap: Overlap::Skip,
            jitter_ms: 0,
            catch_up_ms: 0,
            retry: RetryPolicy::default(),
            keep_runs: 10,
            paused: false,
            next_due_ms: 10_000,
            active: 0,
            queued_due_ms: 0,
            runs: 0,
            fired: 0,
            created_at_ms: 0,
            updated_at_ms: 0,
        };
        // A few ms late with a window of 0: on time.
        assert_eq!(plan_fire(&s, 10_005).unwrap(), (0, 0, Some(10_000), 11_000));
        // Down from 10 s to 100.5 s, a window of 10 s: 10..=89 s skipped (80), 90 s runs.
        s.catch_up_ms = 10_000;
        assert_eq!(
            plan_fire(&s, 100_500).unwrap(),
            (80, 89_000, Some(90_000), 91_000)
        );
        // A window of 0 after downtime: all skipped, the next one after now.
        s.catch_up_ms = 0;
        assert_eq!(
            plan_fire(&s, 100_500).unwrap(),
            (90, 99_000, Some(100_000), 101_000)
        );
        // Half an hour late because of a jitter of up to an hour: not late.
        s.jitter_ms = 3_600_000;
        s.catch_up_ms = 60_000;
        assert_eq!(plan_fire(&s, 10_000 + 1_800_000).unwrap().0, 0);
    }

    #[test]
    fn jitter_is_the_same_everywhere_and_bounded() {
        let a = jitter_ms("acme", "tick", 5000, 300);
        assert_eq!(a, jitter_ms("acme", "tick", 5000, 300));
        assert!(a <= 300);
        assert_eq!(jitter_ms("acme", "tick", 5000, 0), 0);
        let spread: std::collections::BTreeSet<u64> = (0..50)
            .map(|i| jitter_ms("acme", "tick", i * 1000, 300))
            .collect();
        assert!(spread.len() > 10, "{spread:?}");
    }

    #[test]
    fn args_and_retry_policies_are_checked() {
        validate_args(r#"{"a": 1}"#).unwrap();
        validate_args(r#"{"n": ${secrets.count}}"#).unwrap();
        validate_args("").unwrap();
        for bad in ["[1]", "{", "3"] {
            assert!(validate_args(bad).is_err(), "{bad}");
        }
        validate_retry("retry", &RetryPolicy::default()).unwrap();
        let bad = RetryPolicy {
            max_attempts: 0,
            ..RetryPolicy::default()
        };
        assert!(validate_retry("retry", &bad).is_err());
        let bad = RetryPolicy {
            timeout_ms: 10,
            ..RetryPolicy::default()
        };
        assert!(validate_retry("retry", &bad).is_err());
        let r = RunRecord {
            schedule: "tick".into(),
            due_ms: 5000,
            state: RunState::Running,
            attempt: 2,
            node: 1,
            first_started_ms: 0,
            started_ms: 0,
            finished_ms: 0,
            output: String::new(),
            error: String::new(),
            retry_at_ms: 0,
            interrupted: 0,
            skipped: 0,
            skipped_through_ms: 0,
        };
        assert_eq!(
            fill_run(r#"{"key": "${run.id}", "n": ${run.attempt}}"#, &r),
            r#"{"key": "tick/5000", "n": 2}"#
        );
    }
}
