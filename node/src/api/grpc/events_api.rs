//! EventService over gRPC.

use std::sync::Arc;

use nexus_proto::v1 as pb;
use nexus_proto::v1::event_service_server::EventService as EventServiceRpc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use super::{consistency, handle, to_status};
use crate::events::{EventRecord, NewEvent};
use crate::service::events::EventService;

pub struct EventsApi {
    pub events: Arc<EventService>,
}

fn event(e: EventRecord) -> pb::Event {
    pb::Event {
        seq: e.seq,
        topic: e.topic,
        data: e.data,
        source: e.source,
        at_ms: e.at_ms,
    }
}

type Subscription =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::Event, Status>> + Send>>;

#[tonic::async_trait]
impl EventServiceRpc for EventsApi {
    async fn publish(
        &self,
        request: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        handle("events.publish", request, |caller, req| async move {
            let events = req
                .events
                .into_iter()
                .map(|e| NewEvent {
                    topic: e.topic,
                    data: e.data,
                })
                .collect();
            let (first_seq, last_seq) = self.events.publish(&caller, events).await?;
            Ok(pb::PublishResponse {
                first_seq,
                last_seq,
            })
        })
        .await
    }

    type SubscribeStream = Subscription;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Subscription>, Status> {
        handle("events.subscribe", request, |caller, req| async move {
            let (events, ended) = self
                .events
                .subscribe(&caller.tenant, req.patterns, req.after_seq)
                .await?;
            // The events, then why the node ended the subscription (if it did).
            let stream = ReceiverStream::new(events)
                .map(|e| Ok(event(e)))
                .chain(ReceiverStream::new(ended).map(|e| Err(to_status(e))));
            Ok(Box::pin(stream) as Subscription)
        })
        .await
    }

    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        handle("events.list", request, |caller, req| async move {
            let c = consistency(req.consistency)?;
            let limit = if req.limit == 0 {
                100
            } else {
                req.limit as usize
            };
            let (events, next_after_seq) = self
                .events
                .list(&caller.tenant, req.patterns, req.after_seq, limit, c)
                .await?;
            let (first_seq, last_seq) = self.events.position(&caller.tenant)?;
            Ok(pb::ListEventsResponse {
                events: events.into_iter().map(event).collect(),
                next_after_seq,
                first_seq,
                last_seq,
            })
        })
        .await
    }
}
