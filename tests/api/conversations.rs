//! Conversations: every error case gets its precise status and changes nothing.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversation_errors_are_precise_and_change_nothing() {
    let (_dir, _nexus, mut c) = node().await;
    let conv = c
        .conversations
        .create_conversation(pb::CreateConversationRequest {
            id: "chat-1".into(),
            title: "t".into(),
            metadata: "{\"a\":1}".into(),
        })
        .await
        .unwrap()
        .into_inner();
    c.conversations
        .append_messages(pb::AppendMessagesRequest {
            conversation_id: conv.id.clone(),
            messages: vec![pb::NewMessage {
                role: "user".into(),
                content: "hello".into(),
                ..Default::default()
            }],
        })
        .await
        .unwrap();
    let log_before = last_log_index(&mut c).await;
    let append = |role: &str, content: String, metadata: &str| pb::AppendMessagesRequest {
        conversation_id: "chat-1".into(),
        messages: vec![pb::NewMessage {
            role: role.into(),
            content,
            metadata: metadata.into(),
            ..Default::default()
        }],
    };

    assert_status(
        c.conversations
            .append_messages(append("user", "x".repeat((256 << 10) + 1), ""))
            .await,
        Code::InvalidArgument,
        "messages[0].content",
    );
    assert_status(
        c.conversations
            .append_messages(append("User!", "x".into(), ""))
            .await,
        Code::InvalidArgument,
        "messages[0].role",
    );
    assert_status(
        c.conversations
            .append_messages(append("user", "x".into(), "[1]"))
            .await,
        Code::InvalidArgument,
        "messages[0].metadata",
    );
    assert_status(
        c.conversations
            .append_messages(pb::AppendMessagesRequest {
                conversation_id: "chat-1".into(),
                messages: vec![],
            })
            .await,
        Code::InvalidArgument,
        "messages",
    );
    assert_status(
        c.conversations
            .create_conversation(pb::CreateConversationRequest {
                id: "has space".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "id",
    );
    assert_status(
        c.conversations
            .create_conversation(pb::CreateConversationRequest {
                metadata: "nope".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "metadata",
    );
    assert_status(
        c.conversations
            .list_messages(pb::ListMessagesRequest {
                conversation_id: "chat-1".into(),
                since_ms: 10,
                until_ms: 5,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "until_ms",
    );
    assert_status(
        c.conversations
            .list_conversations(pb::ListConversationsRequest {
                page_size: 5000,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "page_size",
    );
    assert_eq!(
        last_log_index(&mut c).await,
        log_before,
        "invalid requests propose nothing"
    );

    assert_status(
        c.conversations
            .create_conversation(pb::CreateConversationRequest {
                id: "chat-1".into(),
                ..Default::default()
            })
            .await,
        Code::AlreadyExists,
        "chat-1",
    );
    let mut unknown = append("user", "x".into(), "");
    unknown.conversation_id = "nope".into();
    assert_status(
        c.conversations.append_messages(unknown).await,
        Code::NotFound,
        "nope",
    );
    assert_status(
        c.conversations
            .get_conversation(pb::GetConversationRequest {
                id: "nope".into(),
                consistency: 0,
            })
            .await,
        Code::NotFound,
        "nope",
    );
    assert_status(
        c.conversations
            .list_messages(pb::ListMessagesRequest {
                conversation_id: "nope".into(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "nope",
    );
    assert_status(
        c.conversations
            .delete_conversation(pb::DeleteConversationRequest { id: "nope".into() })
            .await,
        Code::NotFound,
        "nope",
    );

    let after = c
        .conversations
        .get_conversation(pb::GetConversationRequest {
            id: "chat-1".into(),
            consistency: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        after,
        pb::Conversation {
            updated_at_ms: after.updated_at_ms,
            ..conv.clone()
        }
        .clone_with_count(1)
    );
    let messages = c
        .conversations
        .list_messages(pb::ListMessagesRequest {
            conversation_id: "chat-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .messages;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].content, "hello");
}

trait WithCount {
    fn clone_with_count(self, n: u64) -> Self;
}

impl WithCount for pb::Conversation {
    fn clone_with_count(mut self, n: u64) -> Self {
        self.message_count = n;
        self
    }
}
