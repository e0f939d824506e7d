//! WorkflowService over gRPC.

use std::sync::Arc;

use nexus_proto::v1 as pb;
use nexus_proto::v1::workflow_service_server::WorkflowService as WorkflowServiceRpc;
use tonic::{Request, Response, Status};

use super::{consistency, handle};
use crate::service::workflows::WorkflowService;
use crate::workflows::{Action, RunRecord, WorkflowDef};

pub struct WorkflowsApi {
    pub workflows: Arc<WorkflowService>,
}

fn workflow(d: WorkflowDef) -> pb::Workflow {
    pb::Workflow {
        definition: d.to_json().to_string(),
        steps: d.steps.len() as u32,
        name: d.name,
        description: d.description,
        created_at_ms: d.created_at_ms,
        updated_at_ms: d.updated_at_ms,
    }
}

fn run(r: RunRecord) -> pb::WorkflowRun {
    let steps = r
        .steps
        .iter()
        .zip(&r.def.steps)
        .map(|(s, d)| pb::WorkflowStep {
            id: s.id.clone(),
            kind: match d.action {
                Action::Tool { .. } => "tool",
                Action::Sleep { .. } => "sleep",
                Action::Event { .. } => "wait_event",
            }
            .into(),
            state: s.state.name().into(),
            attempt: s.attempt,
            node: s.node,
            first_started_ms: s.first_started_ms,
            started_ms: s.started_ms,
            finished_ms: s.finished_ms,
            output: s.output.clone(),
            error: s.error.clone(),
            retry_at_ms: s.retry_at_ms,
            interrupted: s.interrupted,
        })
        .collect();
    pb::WorkflowRun {
        id: r.id,
        workflow: r.workflow,
        state: r.state.name().into(),
        input: r.input,
        owner: r.owner,
        steps,
        created_at_ms: r.created_at_ms,
        finished_ms: r.finished_ms,
        error: r.error,
    }
}

#[tonic::async_trait]
impl WorkflowServiceRpc for WorkflowsApi {
    async fn put_workflow(
        &self,
        request: Request<pb::PutWorkflowRequest>,
    ) -> Result<Response<pb::Workflow>, Status> {
        handle("workflows.put", request, |caller, req| async move {
            self.workflows
                .put(&caller, &req.definition, false)
                .await
                .map(workflow)
        })
        .await
    }

    async fn update_workflow(
        &self,
        request: Request<pb::PutWorkflowRequest>,
    ) -> Result<Response<pb::Workflow>, Status> {
        handle("workflows.put", request, |caller, req| async move {
            self.workflows
                .put(&caller, &req.definition, true)
                .await
                .map(workflow)
        })
        .await
    }

    async fn get_workflow(
        &self,
        request: Request<pb::GetWorkflowRequest>,
    ) -> Result<Response<pb::Workflow>, Status> {
        handle("workflows.get", request, |caller, req| async move {
            let c = consistency(req.consistency)?;
            self.workflows
                .get(&caller.tenant, &req.name, c)
                .await
                .map(workflow)
        })
        .await
    }

    async fn list_workflows(
        &self,
        request: Request<pb::ListWorkflowsRequest>,
    ) -> Result<Response<pb::ListWorkflowsResponse>, Status> {
        handle("workflows.list", request, |caller, req| async move {
            let c = consistency(req.consistency)?;
            let all = self.workflows.list(&caller.tenant, c).await?;
            Ok(pb::ListWorkflowsResponse {
                workflows: all.into_iter().map(workflow).collect(),
            })
        })
        .await
    }

    async fn delete_workflow(
        &self,
        request: Request<pb::GetWorkflowRequest>,
    ) -> Result<Response<pb::DeleteWorkflowResponse>, Status> {
        handle("workflows.delete", request, |caller, req| async move {
            self.workflows.delete(&caller, &req.name).await?;
            Ok(pb::DeleteWorkflowResponse {})
        })
        .await
    }

    async fn start_workflow(
        &self,
        request: Request<pb::StartWorkflowRequest>,
    ) -> Result<Response<pb::StartWorkflowResponse>, Status> {
        handle("workflows.start", request, |caller, req| async move {
            let (r, existing) = self
                .workflows
                .start(&caller, &req.workflow, &req.input, &req.id)
                .await?;
            Ok(pb::StartWorkflowResponse {
                run: Some(run(r)),
                existing,
            })
        })
        .await
    }

    async fn cancel_workflow_run(
        &self,
        request: Request<pb::CancelWorkflowRunRequest>,
    ) -> Result<Response<pb::WorkflowRun>, Status> {
        handle("workflows.cancel", request, |caller, req| async move {
            self.workflows
                .cancel(&caller, &req.id, &req.reason)
                .await
                .map(run)
        })
        .await
    }

    async fn get_workflow_run(
        &self,
        request: Request<pb::GetWorkflowRunRequest>,
    ) -> Result<Response<pb::WorkflowRun>, Status> {
        handle("workflows.get_run", request, |caller, req| async move {
            let c = consistency(req.consistency)?;
            self.workflows
                .run(&caller.tenant, &req.id, c)
                .await
                .map(run)
        })
        .await
    }

    async fn list_workflow_runs(
        &self,
        request: Request<pb::ListWorkflowRunsRequest>,
    ) -> Result<Response<pb::ListWorkflowRunsResponse>, Status> {
        handle("workflows.list_runs", request, |caller, req| async move {
            let c = consistency(req.consistency)?;
            let runs = self
                .workflows
                .runs(
                    &caller.tenant,
                    &req.workflow,
                    &req.state,
                    req.limit as usize,
                    c,
                )
                .await?;
            Ok(pb::ListWorkflowRunsResponse {
                runs: runs.into_iter().map(run).collect(),
            })
        })
        .await
    }
}
