//! ScheduleService over gRPC.

use std::sync::Arc;

use nexus_proto::v1 as pb;
use nexus_proto::v1::schedule_service_server::ScheduleService as ScheduleServiceRpc;
use tonic::{Request, Response, Status};

use super::{consistency, handle};
use crate::error::NexusError;
use crate::schedules::{Overlap, RetryPolicy, RunRecord, ScheduleRecord, Spec};
use crate::service::schedules::{ScheduleInput, ScheduleService};

pub struct SchedulesApi {
    pub schedules: Arc<ScheduleService>,
}

fn schedule(s: ScheduleRecord) -> pb::Schedule {
    let spec_text = s.spec.describe();
    let (spec, zone) = match s.spec {
        Spec::Cron { expr, zone } => (pb::schedule::Spec::Cron(expr), zone),
        Spec::Every { every_ms } => (pb::schedule::Spec::EveryMs(every_ms), String::new()),
        Spec::At { at_ms } => (pb::schedule::Spec::AtMs(at_ms), String::new()),
    };
    pb::Schedule {
        name: s.name,
        description: s.description,
        spec: Some(spec),
        zone,
        tool: s.tool,
        args: s.args,
        overlap: match s.overlap {
            Overlap::Skip => pb::Overlap::Skip,
            Overlap::Queue => pb::Overlap::Queue,
            Overlap::Allow => pb::Overlap::Allow,
        } as i32,
        jitter_ms: s.jitter_ms,
        catch_up_ms: Some(s.catch_up_ms),
        retry: Some(retry_pb(&s.retry)),
        keep_runs: s.keep_runs,
        paused: s.paused,
        owner: s.owner,
        next_due_ms: s.next_due_ms,
        active: s.active,
        runs: s.runs,
        fired: s.fired,
        created_at_ms: s.created_at_ms,
        updated_at_ms: s.updated_at_ms,
        spec_text,
    }
}

fn run(r: RunRecord) -> pb::Run {
    pb::Run {
        id: r.id(),
        state: r.state.name().into(),
        schedule: r.schedule,
        due_ms: r.due_ms,
        attempt: r.attempt,
        node: r.node,
        first_started_ms: r.first_started_ms,
        started_ms: r.started_ms,
        finished_ms: r.finished_ms,
        output: r.output,
        error: r.error,
        retry_at_ms: r.retry_at_ms,
        interrupted: r.interrupted,
        skipped: r.skipped,
        skipped_through_ms: r.skipped_through_ms,
    }
}

/// A request's retry policy, each field not given (0) its default.
pub(super) fn retry_policy(r: Option<pb::RetryPolicy>) -> RetryPolicy {
    let defaults = RetryPolicy::default();
    let Some(r) = r else { return defaults };
    let or = |v: u64, d: u64| if v == 0 { d } else { v };
    RetryPolicy {
        max_attempts: if r.max_attempts == 0 {
            defaults.max_attempts
        } else {
            r.max_attempts
        },
        initial_backoff_ms: or(r.initial_backoff_ms, defaults.initial_backoff_ms),
        max_backoff_ms: or(
            r.max_backoff_ms,
            defaults.max_backoff_ms.max(r.initial_backoff_ms),
        ),
        timeout_ms: or(r.timeout_ms, defaults.timeout_ms),
    }
}

pub(super) fn retry_pb(r: &RetryPolicy) -> pb::RetryPolicy {
    pb::RetryPolicy {
        max_attempts: r.max_attempts,
        initial_backoff_ms: r.initial_backoff_ms,
        max_backoff_ms: r.max_backoff_ms,
        timeout_ms: r.timeout_ms,
    }
}

/// A request's schedule, checked field by field (the service checks the rest).
fn input(s: pb::Schedule) -> Result<ScheduleInput, NexusError> {
    let zone_given = !s.zone.is_empty();
    let spec = match s.spec {
        Some(pb::schedule::Spec::Cron(expr)) => Spec::Cron {
            expr,
            zone: if s.zone.is_empty() {
                "UTC".into()
            } else {
                s.zone
            },
        },
        Some(pb::schedule::Spec::EveryMs(every_ms)) => Spec::Every { every_ms },
        Some(pb::schedule::Spec::AtMs(at_ms)) => Spec::At { at_ms },
        None => {
            return Err(NexusError::invalid(
                "spec",
                "is required: one of cron, every_ms or at_ms",
            ))
        }
    };
    if zone_given && !matches!(spec, Spec::Cron { .. }) {
        return Err(NexusError::invalid(
            "zone",
            "applies to a cron expression only",
        ));
    }
    let overlap = match pb::Overlap::try_from(s.overlap) {
        Ok(pb::Overlap::Unspecified | pb::Overlap::Skip) => Overlap::Skip,
        Ok(pb::Overlap::Queue) => Overlap::Queue,
        Ok(pb::Overlap::Allow) => Overlap::Allow,
        Err(_) => {
            return Err(NexusError::invalid(
                "overlap",
                format!("{} is not an Overlap value", s.overlap),
            ))
        }
    };
    let retry = retry_policy(s.retry);
    Ok(ScheduleInput {
        name: s.name,
        description: s.description,
        spec,
        tool: s.tool,
        args: s.args,
        overlap,
        jitter_ms: s.jitter_ms,
        catch_up_ms: s.catch_up_ms,
        retry,
        keep_runs: s.keep_runs,
        paused: s.paused,
    })
}

#[tonic::async_trait]
impl ScheduleServiceRpc for SchedulesApi {
    async fn add_schedule(
        &self,
        request: Request<pb::Schedule>,
    ) -> Result<Response<pb::Schedule>, Status> {
        handle("schedules.add", request, |caller, req| async move {
            let input = input(req)?;
            self.schedules
                .put(&caller, input, false)
                .await
                .map(schedule)
        })
        .await
    }

    async fn update_schedule(
        &self,
        request: Request<pb::Schedule>,
    ) -> Result<Response<pb::Schedule>, Status> {
        handle("schedules.update", request, |caller, req| async move {
            let input = input(req)?;
            self.schedules.put(&caller, input, true).await.map(schedule)
        })
        .await
    }

    async fn get_schedule(
        &self,
        request: Request<pb::GetScheduleRequest>,
    ) -> Result<Response<pb::Schedule>, Status> {
        handle("schedules.get", request, |caller, req| async move {
            let c = consistency(req.consistency)?;
            self.schedules
                .get(&caller.tenant, &req.name, c)
                .await
                .map(schedule)
        })
        .await
    }

    async fn list_schedules(
        &self,
        request: Request<pb::ListSchedulesRequest>,
    ) -> Result<Response<pb::ListSchedulesResponse>, Status> {
        handle("schedules.list", request, |caller, req| async move {
            let c = consistency(req.consistency)?;
            let all = self.schedules.list(&caller.tenant, c).await?;
            Ok(pb::ListSchedulesResponse {
                schedules: all.into_iter().map(schedule).collect(),
            })
        })
        .await
    }

    async fn delete_schedule(
        &self,
        request: Request<pb::DeleteScheduleRequest>,
    ) -> Result<Response<pb::DeleteScheduleResponse>, Status> {
        handle("schedules.delete", request, |caller, req| async move {
            let runs = self.schedules.delete(&caller, &req.name).await?;
            Ok(pb::DeleteScheduleResponse { runs })
        })
        .await
    }

    async fn pause_schedule(
        &self,
        request: Request<pb::PauseScheduleRequest>,
    ) -> Result<Response<pb::Schedule>, Status> {
        handle("schedules.pause", request, |caller, req| async move {
            self.schedules
                .set_paused(&caller, &req.name, true)
                .await
                .map(schedule)
        })
        .await
    }

    async fn resume_schedule(
        &self,
        request: Request<pb::PauseScheduleRequest>,
    ) -> Result<Response<pb::Schedule>, Status> {
        handle("schedules.resume", request, |caller, req| async move {
            self.schedules
                .set_paused(&caller, &req.name, false)
                .await
                .map(schedule)
        })
        .await
    }

    async fn preview_schedule(
        &self,
        request: Request<pb::PreviewScheduleRequest>,
    ) -> Result<Response<pb::PreviewScheduleResponse>, Status> {
        handle("schedules.next", request, |caller, req| async move {
            let count = if req.count == 0 {
                5
            } else {
                req.count as usize
            };
            let due = self
                .schedules
                .preview(&caller.tenant, &req.name, count)
                .await?;
            Ok(pb::PreviewScheduleResponse {
                due: due
                    .into_iter()
                    .map(|(due_ms, starts_ms)| pb::DueTime { due_ms, starts_ms })
                    .collect(),
            })
        })
        .await
    }

    async fn list_runs(
        &self,
        request: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        handle("schedules.runs", request, |caller, req| async move {
            let c = consistency(req.consistency)?;
            let limit = match req.limit {
                0 => 100,
                n if n > crate::schedules::MAX_KEEP_RUNS => {
                    return Err(NexusError::invalid(
                        "limit",
                        format!("is {n}; at most {}", crate::schedules::MAX_KEEP_RUNS),
                    ))
                }
                n => n as usize,
            };
            let runs = self
                .schedules
                .runs(&caller.tenant, &req.name, limit, req.dead, c)
                .await?;
            Ok(pb::ListRunsResponse {
                runs: runs.into_iter().map(run).collect(),
            })
        })
        .await
    }

    async fn replay_run(
        &self,
        request: Request<pb::ReplayRunRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        handle("schedules.replay", request, |caller, req| async move {
            self.schedules
                .replay(&caller, &req.name, req.due_ms)
                .await
                .map(run)
        })
        .await
    }
}
