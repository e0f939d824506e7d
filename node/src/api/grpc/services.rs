//! The tonic service implementations: thin adapters from the wire to the domain services.

use std::sync::Arc;

use nexus_proto::v1 as pb;
use nexus_proto::v1::cluster_service_server::ClusterService;
use nexus_proto::v1::conversation_service_server::ConversationService;
use nexus_proto::v1::memory_service_server::MemoryService;
use nexus_proto::v1::search_service_server::SearchService;
use tonic::{Request, Response, Status};

use super::{consistency, convert, handle};
use crate::cluster::{MembershipChange, NexusNode, ReadConsistency};
use crate::command::Cluster;
use crate::config::Fusion;
use crate::memory::conversations::{ListMessagesRequest, NewMessageRequest};
use crate::memory::kv;
use crate::memory::semantic::RememberRequest;
use crate::search::fulltext::{FullTextIndex, SearchRequest};
use crate::search::recall::{RecallMode, RecallRequest, Recaller};
use crate::search::vector::PointKind;
use crate::service::kv::KvService;
use crate::service::semantic::SemanticService;

fn recall_mode(mode: i32) -> Result<RecallMode, crate::error::NexusError> {
    match pb::RecallMode::try_from(mode) {
        Ok(pb::RecallMode::Hybrid) => Ok(RecallMode::Hybrid),
        Ok(pb::RecallMode::Vector) => Ok(RecallMode::Vector),
        Ok(pb::RecallMode::Bm25) => Ok(RecallMode::Bm25),
        Err(_) => Err(crate::error::NexusError::invalid(
            "mode",
            format!("{mode} is not a RecallMode value"),
        )),
    }
}

pub struct MemoryApi {
    pub kv: Arc<KvService>,
    pub semantic: Arc<SemanticService>,
    pub recaller: Arc<Recaller>,
}

#[tonic::async_trait]
impl MemoryService for MemoryApi {
    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        handle("memory.put", request, |p, r| async move {
            let item = self
                .kv
                .put(
                    &p.scope(),
                    kv::PutRequest {
                        namespace: r.namespace,
                        key: r.key,
                        value: r.value,
                        ttl_ms: r.ttl_ms,
                        expected_version: r.expected_version,
                    },
                )
                .await?;
            Ok(pb::PutResponse {
                item: Some(convert::memory_item(item)),
            })
        })
        .await
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        handle("memory.get", request, |p, r| async move {
            let item = self
                .kv
                .get(&p.tenant, &r.namespace, &r.key, consistency(r.consistency)?)
                .await?;
            Ok(pb::GetResponse {
                item: Some(convert::memory_item(item)),
            })
        })
        .await
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        handle("memory.delete", request, |p, r| async move {
            let version = self
                .kv
                .delete(&p.scope(), &r.namespace, &r.key, r.expected_version)
                .await?;
            Ok(pb::DeleteResponse {
                deleted_version: version,
            })
        })
        .await
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        handle("memory.list", request, |p, r| async move {
            let (items, next) = self
                .kv
                .list(
                    &p.tenant,
                    kv::ListRequest {
                        namespace: r.namespace,
                        prefix: r.prefix,
                        page_size: r.page_size,
                        page_token: r.page_token,
                        consistency: consistency(r.consistency)?,
                    },
                )
                .await?;
            Ok(pb::ListResponse {
                items: items.into_iter().map(convert::memory_item).collect(),
                next_page_token: next,
            })
        })
        .await
    }

    async fn remember(
        &self,
        request: Request<pb::RememberRequest>,
    ) -> Result<Response<pb::RememberResponse>, Status> {
        handle("memory.remember", request, |p, r| async move {
            let record = self
                .semantic
                .remember(
                    &p.scope(),
                    RememberRequest {
                        namespace: r.namespace,
                        text: r.text,
                        metadata: r.metadata.into_iter().collect(),
                        importance: r.importance,
                    },
                )
                .await?;
            Ok(pb::RememberResponse {
                memory: Some(convert::semantic(record)),
                notice: self.recaller.notice(None).unwrap_or_default().into(),
            })
        })
        .await
    }

    async fn forget(
        &self,
        request: Request<pb::ForgetRequest>,
    ) -> Result<Response<pb::ForgetResponse>, Status> {
        handle("memory.forget", request, |p, r| async move {
            self.semantic.forget(&p.scope(), &r.id).await?;
            Ok(pb::ForgetResponse {})
        })
        .await
    }

    async fn get_semantic(
        &self,
        request: Request<pb::GetSemanticRequest>,
    ) -> Result<Response<pb::SemanticMemory>, Status> {
        handle("memory.get_semantic", request, |p, r| async move {
            let record = self
                .semantic
                .get(&p.tenant, &r.id, consistency(r.consistency)?)
                .await?;
            Ok(convert::semantic(record))
        })
        .await
    }

    async fn recall(
        &self,
        request: Request<pb::RecallRequest>,
    ) -> Result<Response<pb::RecallResponse>, Status> {
        handle("memory.recall", request, |p, r| async move {
            let mode = recall_mode(r.mode)?;
            let hits = self
                .recaller
                .recall(
                    &p.tenant,
                    &RecallRequest {
                        query: r.query,
                        k: r.k,
                        namespace: r.namespace,
                        metadata: r.metadata.into_iter().collect(),
                        since_ms: r.since_ms,
                        until_ms: r.until_ms,
                        min_score: r.min_score,
                        consistency: consistency(r.consistency)?,
                        mode,
                        sources: r
                            .sources
                            .iter()
                            .map(|&s| match pb::RecallSource::try_from(s) {
                                Ok(pb::RecallSource::Memories) => Ok(PointKind::Memory),
                                Ok(pb::RecallSource::Messages) => Ok(PointKind::Message),
                                _ => Err(crate::error::NexusError::invalid(
                                    "sources",
                                    format!("{s} is not a RecallSource (MEMORIES or MESSAGES)"),
                                )),
                            })
                            .collect::<Result<_, _>>()?,
                        conversation_id: r.conversation_id,
                        fusion: match pb::Fusion::try_from(r.fusion) {
                            Ok(pb::Fusion::Unspecified) => None,
                            Ok(pb::Fusion::Convex) => Some(Fusion::Convex),
                            Ok(pb::Fusion::Rrf) => Some(Fusion::Rrf),
                            Err(_) => {
                                return Err(crate::error::NexusError::invalid(
                                    "fusion",
                                    format!("{} is not a Fusion (CONVEX or RRF)", r.fusion),
                                ))
                            }
                        },
                        vector_weight: r.vector_weight,
                        importance_weight: r.importance_weight,
                        recency_weight: r.recency_weight,
                        recency_half_life_ms: r.recency_half_life_ms,
                    },
                )
                .await?;
            Ok(pb::RecallResponse {
                hits: hits.into_iter().map(convert::recall_hit).collect(),
                notice: self.recaller.notice(Some(mode)).unwrap_or_default().into(),
            })
        })
        .await
    }
}

pub struct ConversationApi {
    pub conversations: Arc<crate::service::conversations::ConversationService>,
}

#[tonic::async_trait]
impl ConversationService for ConversationApi {
    async fn create_conversation(
        &self,
        request: Request<pb::CreateConversationRequest>,
    ) -> Result<Response<pb::Conversation>, Status> {
        handle("conversation.create", request, |p, r| async move {
            let c = self
                .conversations
                .create(&p.scope(), &r.id, &r.title, &r.metadata)
                .await?;
            Ok(convert::conversation(c))
        })
        .await
    }

    async fn append_messages(
        &self,
        request: Request<pb::AppendMessagesRequest>,
    ) -> Result<Response<pb::AppendMessagesResponse>, Status> {
        handle("conversation.append", request, |p, r| async move {
            let messages = r
                .messages
                .into_iter()
                .map(|m| NewMessageRequest {
                    role: m.role,
                    content: m.content,
                    metadata: m.metadata,
                    input_tokens: m.input_tokens,
                    output_tokens: m.output_tokens,
                })
                .collect();
            let appended = self
                .conversations
                .append(&p.scope(), &r.conversation_id, messages)
                .await?;
            Ok(pb::AppendMessagesResponse {
                messages: appended.into_iter().map(convert::message).collect(),
            })
        })
        .await
    }

    async fn get_conversation(
        &self,
        request: Request<pb::GetConversationRequest>,
    ) -> Result<Response<pb::Conversation>, Status> {
        handle("conversation.get", request, |p, r| async move {
            let c = self
                .conversations
                .get(&p.tenant, &r.id, consistency(r.consistency)?)
                .await?;
            Ok(convert::conversation(c))
        })
        .await
    }

    async fn list_conversations(
        &self,
        request: Request<pb::ListConversationsRequest>,
    ) -> Result<Response<pb::ListConversationsResponse>, Status> {
        handle("conversation.list", request, |p, r| async move {
            let (list, next) = self
                .conversations
                .list(
                    &p.tenant,
                    r.page_size,
                    &r.page_token,
                    consistency(r.consistency)?,
                )
                .await?;
            Ok(pb::ListConversationsResponse {
                conversations: list.into_iter().map(convert::conversation).collect(),
                next_page_token: next,
            })
        })
        .await
    }

    async fn list_messages(
        &self,
        request: Request<pb::ListMessagesRequest>,
    ) -> Result<Response<pb::ListMessagesResponse>, Status> {
        handle("conversation.list_messages", request, |p, r| async move {
            let (messages, next) = self
                .conversations
                .list_messages(
                    &p.tenant,
                    ListMessagesRequest {
                        conversation_id: r.conversation_id,
                        page_size: r.page_size,
                        page_token: r.page_token,
                        since_ms: r.since_ms,
                        until_ms: r.until_ms,
                        consistency: consistency(r.consistency)?,
                    },
                )
                .await?;
            Ok(pb::ListMessagesResponse {
                messages: messages.into_iter().map(convert::message).collect(),
                next_page_token: next,
            })
        })
        .await
    }

    async fn delete_conversation(
        &self,
        request: Request<pb::DeleteConversationRequest>,
    ) -> Result<Response<pb::DeleteConversationResponse>, Status> {
        handle("conversation.delete", request, |p, r| async move {
            let n = self.conversations.delete(&p.scope(), &r.id).await?;
            Ok(pb::DeleteConversationResponse {
                deleted_messages: n,
            })
        })
        .await
    }
}

pub struct SearchApi {
    pub recaller: Arc<Recaller>,
}

#[tonic::async_trait]
impl SearchService for SearchApi {
    async fn search(
        &self,
        request: Request<pb::SearchRequest>,
    ) -> Result<Response<pb::SearchResponse>, Status> {
        handle("search.search", request, |p, r| async move {
            let kinds = r
                .kinds
                .iter()
                .map(|k| convert::hit_kind(*k))
                .collect::<Result<Vec<_>, _>>()?;
            let req = SearchRequest {
                query: r.query,
                kinds,
                namespace: r.namespace,
                conversation_id: r.conversation_id,
                role: r.role,
                since_ms: r.since_ms,
                until_ms: r.until_ms,
                limit: r.limit,
                consistency: consistency(r.consistency)?,
            };
            let hits = self
                .recaller
                .search(&p.tenant, &req, recall_mode(r.mode)?)
                .await?;
            Ok(pb::SearchResponse {
                hits: hits.into_iter().map(convert::fused_hit).collect(),
            })
        })
        .await
    }
}

pub struct ClusterApi {
    pub node: Arc<Cluster>,
    pub index: Arc<FullTextIndex>,
}

impl ClusterApi {
    /// The members after a change: a read barrier first, so that a follower that forwarded
    /// the change shows it too.
    async fn members(&self) -> Result<pb::MembershipResponse, crate::error::NexusError> {
        self.node
            .read_barrier(ReadConsistency::Linearizable)
            .await?;
        Ok(pb::MembershipResponse {
            members: convert::status(self.node.status(), 0).members,
        })
    }
}

#[tonic::async_trait]
impl ClusterService for ClusterApi {
    async fn add_member(
        &self,
        request: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        handle("cluster.add_member", request, |p, r| async move {
            let node = NexusNode {
                peer_addr: r.peer_addr,
                api_addr: r.api_addr,
            };
            self.node
                .change_membership(MembershipChange::AddLearner { id: r.id, node }, p.on_behalf)
                .await?;
            self.members().await
        })
        .await
    }

    async fn promote_member(
        &self,
        request: Request<pb::PromoteMemberRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        handle("cluster.promote_member", request, |p, r| async move {
            self.node
                .change_membership(MembershipChange::Promote { id: r.id }, p.on_behalf)
                .await?;
            self.members().await
        })
        .await
    }

    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        handle("cluster.remove_member", request, |p, r| async move {
            self.node
                .change_membership(MembershipChange::Remove { id: r.id }, p.on_behalf)
                .await?;
            self.members().await
        })
        .await
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        handle("cluster.transfer_leader", request, |p, r| async move {
            if r.id == 0 {
                return Err(crate::error::NexusError::invalid("id", "must not be 0"));
            }
            self.node.transfer_leader(r.id, p.on_behalf).await?;
            // The old leader saw r.id take over; this node's term is that of the new
            // leader once it has heard from it (transfer_leader waits for that).
            let s = self.node.status();
            Ok(pb::TransferLeaderResponse {
                leader_id: r.id,
                term: s.term,
            })
        })
        .await
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        handle("cluster.status", request, |_, _| async move {
            Ok(convert::status(self.node.status(), self.index.watermark()))
        })
        .await
    }
}
