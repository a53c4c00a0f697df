//! Calls to applications' `sessiond.v1.ClaimProvider` services: the
//! [`ClaimSource`] that FetchAndSetClaim and refetching validators use.
//!
//! Each claim key maps to a provider address (or to the default one). Every
//! call carries a deadline; a provider that is unreachable, fails or is late
//! gives CLAIM_PROVIDER_UNAVAILABLE naming the claim key, and nothing about
//! the session changes. Provider answers are never logged.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use tonic::transport::{Channel, Endpoint};

use super::convert::{json_to_struct, value_to_json};
use crate::claims::{ClaimError, ClaimSource, FetchRequest};
use crate::error::Result;
use crate::metrics::Metrics;
use crate::pb;
use crate::pb::claim_provider_client::ClaimProviderClient;
use crate::store::BoxFuture;

/// Claim providers reached over gRPC.
#[derive(Debug, Clone)]
pub struct GrpcClaimSource {
    by_key: HashMap<String, Channel>,
    default: Option<Channel>,
    timeout: Duration,
    metrics: std::sync::Arc<Metrics>,
}

fn channel(url: &str, timeout: Duration) -> std::result::Result<Channel, String> {
    Ok(Endpoint::from_shared(url.to_owned())
        .map_err(|e| format!("`{url}` is not a valid address: {e}"))?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect_lazy())
}

impl GrpcClaimSource {
    /// Providers by claim key, and the one for every other key. Connections
    /// are made lazily, on first use.
    pub fn new(
        by_key: &[(String, String)],
        default: Option<&str>,
        timeout: Duration,
        metrics: std::sync::Arc<Metrics>,
    ) -> std::result::Result<Self, String> {
        Ok(Self {
            by_key: by_key
                .iter()
                .map(|(k, url)| Ok((k.clone(), channel(url, timeout)?)))
                .collect::<std::result::Result<_, String>>()?,
            default: default.map(|url| channel(url, timeout)).transpose()?,
            timeout,
            metrics,
        })
    }
}

impl ClaimSource for GrpcClaimSource {
    fn fetch(&self, request: FetchRequest) -> BoxFuture<Result<Option<Value>, ClaimError>> {
        let channel = self
            .by_key
            .get(&request.claim_key)
            .or(self.default.as_ref())
            .cloned();
        let timeout = self.timeout;
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let claim_key = request.claim_key.clone();
            let Some(channel) = channel else {
                return Err(ClaimError::NoProvider { claim_key });
            };
            let unavailable = |detail: String| ClaimError::ProviderUnavailable {
                claim_key: claim_key.clone(),
                detail,
            };
            let mut call = tonic::Request::new(pb::FetchClaimRequest {
                user_id: request.user_id,
                tenant_id: request.tenant_id,
                claim_key: request.claim_key,
                access_token_payload: Some(json_to_struct(&request.payload)),
                session_handle: request.session_handle,
            });
            call.set_timeout(timeout);
            let reply =
                tokio::time::timeout(timeout, ClaimProviderClient::new(channel).fetch_claim(call))
                    .await;
            let result = match reply {
                Err(_) => Err(unavailable(format!("no answer within {timeout:?}"))),
                Ok(Err(status)) => {
                    tracing::warn!(claim_key = %claim_key, code = ?status.code(), "claim provider failed");
                    Err(unavailable(format!("it answered {:?}", status.code())))
                }
                Ok(Ok(reply)) => reply
                    .into_inner()
                    .value
                    .map(|v| {
                        value_to_json("value", v)
                            .map_err(|_| unavailable("it answered a value that is not JSON".into()))
                    })
                    .transpose(),
            };
            metrics.claim_provider_call(match &result {
                Ok(Some(_)) => "value",
                Ok(None) => "no_value",
                Err(_) => "error",
            });
            result
        })
    }
}
