//! SecretsService over gRPC.

use std::sync::Arc;

use nexus_proto::v1 as pb;
use nexus_proto::v1::secrets_service_server::SecretsService as SecretsGrpc;
use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

use super::handle;
use crate::secrets::SecretRecord;
use crate::service::secrets::SecretsService;

pub struct SecretsApi {
    pub secrets: Arc<SecretsService>,
}

fn info(r: SecretRecord) -> pb::SecretInfo {
    pb::SecretInfo {
        name: r.name,
        versions: r
            .versions
            .iter()
            .map(|v| pb::SecretVersionInfo {
                version: v.version,
                created_at_ms: v.created_at_ms,
            })
            .collect(),
        created_at_ms: r.created_at_ms,
    }
}

#[tonic::async_trait]
impl SecretsGrpc for SecretsApi {
    async fn set_secret(
        &self,
        request: Request<pb::SetSecretRequest>,
    ) -> Result<Response<pb::SecretInfo>, Status> {
        handle("secrets.set", request, |p, r| async move {
            let value = Zeroizing::new(r.value);
            Ok(info(self.secrets.set(&p.scope(), &r.name, value).await?))
        })
        .await
    }

    async fn get_secret(
        &self,
        request: Request<pb::GetSecretRequest>,
    ) -> Result<Response<pb::GetSecretResponse>, Status> {
        handle("secrets.get", request, |p, r| async move {
            let (version, value) = self.secrets.get(&p.scope(), &r.name, r.version).await?;
            Ok(pb::GetSecretResponse {
                name: r.name,
                version,
                // Leaves the zeroizing buffer here: prost owns the reply's bytes.
                value: value.to_vec(),
            })
        })
        .await
    }

    async fn list_secrets(
        &self,
        request: Request<pb::ListSecretsRequest>,
    ) -> Result<Response<pb::ListSecretsResponse>, Status> {
        handle("secrets.list", request, |p, _| async move {
            Ok(pb::ListSecretsResponse {
                secrets: self
                    .secrets
                    .list(&p.tenant)
                    .await?
                    .into_iter()
                    .map(info)
                    .collect(),
            })
        })
        .await
    }

    async fn delete_secret(
        &self,
        request: Request<pb::DeleteSecretRequest>,
    ) -> Result<Response<pb::DeleteSecretResponse>, Status> {
        handle("secrets.delete", request, |p, r| async move {
            self.secrets.delete(&p.scope(), &r.name).await?;
            Ok(pb::DeleteSecretResponse {})
        })
        .await
    }

    async fn rotate_master_key(
        &self,
        request: Request<pb::RotateMasterKeyRequest>,
    ) -> Result<Response<pb::RotateMasterKeyResponse>, Status> {
        handle("secrets.rotate_master_key", request, |p, _| async move {
            let (rewrapped, current) = self.secrets.rotate_master_key(&p.scope()).await?;
            Ok(pb::RotateMasterKeyResponse {
                rewrapped: rewrapped as u32,
                already_current: current as u32,
                master_key_id: self.secrets.master_key_id().to_string(),
            })
        })
        .await
    }
}
