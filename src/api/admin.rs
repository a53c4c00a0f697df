//! `sessiond.v1.AdminService`: the signing keys' states, online backups and
//! the list of every session. The auth layer admits only admin keys here.

use std::io::Write;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::convert::timestamp;
use super::error::invalid;
use crate::pb;
use crate::pb::admin_service_server::AdminService;
use crate::session::SessionManager;
use crate::store::Store;
use crate::token::keys::KeyRing;

/// Size of the chunks a backup is streamed in.
const CHUNK: usize = 64 * 1024;

/// Sessions per ListAllSessions page when the caller asks for no size.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Most sessions per ListAllSessions page.
pub const MAX_PAGE_SIZE: usize = 1000;
/// Longest handle a page token may carry (handles are 36 characters).
const MAX_CURSOR: usize = 256;

/// The gRPC face of operator actions.
pub struct AdminApi {
    keys: Arc<KeyRing>,
    store: Arc<dyn Store>,
    sessions: Arc<SessionManager>,
}

impl std::fmt::Debug for AdminApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminApi")
    }
}

impl AdminApi {
    /// Serves the key ring, backups of `store` and the list of `sessions`.
    pub fn new(keys: Arc<KeyRing>, store: Arc<dyn Store>, sessions: Arc<SessionManager>) -> Self {
        Self {
            keys,
            store,
            sessions,
        }
    }
}

/// The page size a ListAllSessions request asks for.
fn page_size(requested: i32) -> Result<usize, Status> {
    match usize::try_from(requested) {
        Ok(0) => Ok(DEFAULT_PAGE_SIZE),
        Ok(n) if n <= MAX_PAGE_SIZE => Ok(n),
        _ => Err(invalid(
            "page_size",
            &format!("must be between 1 and {MAX_PAGE_SIZE} (0 for {DEFAULT_PAGE_SIZE})"),
        )),
    }
}

/// The page token that continues after `handle`.
fn page_token(handle: &str) -> String {
    URL_SAFE_NO_PAD.encode(handle)
}

/// The handle a page token continues after; `None` for the first page.
fn cursor(token: &str) -> Result<Option<String>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .filter(|handle| !handle.is_empty() && handle.len() <= MAX_CURSOR)
        .map(Some)
        .ok_or_else(|| {
            invalid(
                "page_token",
                "is not a page token of this server; pass next_page_token as it came, \
                 or none for the first page",
            )
        })
}

/// Buffers a blocking writer's bytes into chunks sent to the response stream.
struct ChunkSender {
    buf: Vec<u8>,
    tx: mpsc::Sender<Result<pb::BackupChunk, Status>>,
}

impl ChunkSender {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        // Written from a blocking thread that drives the export through
        // `Handle::block_on`: leave the runtime's context to wait.
        let tx = &self.tx;
        tokio::task::block_in_place(|| tx.blocking_send(Ok(pb::BackupChunk { data })))
            .map_err(|_| std::io::Error::other("the client went away"))
    }
}

impl Write for ChunkSender {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn list_signing_keys(
        &self,
        _req: Request<pb::ListSigningKeysRequest>,
    ) -> Result<Response<pb::ListSigningKeysResponse>, Status> {
        let keys = self
            .keys
            .list()
            .into_iter()
            .map(|k| pb::SigningKeyInfo {
                kid: k.kid,
                alg: k.alg,
                state: k.state.as_str().to_owned(),
                created: Some(timestamp(k.created_ms)),
                signs_from: Some(timestamp(k.signs_from_ms)),
                retires_at: k.retires_at_ms.map(timestamp),
            })
            .collect();
        Ok(Response::new(pb::ListSigningKeysResponse { keys }))
    }

    async fn list_all_sessions(
        &self,
        req: Request<pb::ListAllSessionsRequest>,
    ) -> Result<Response<pb::ListAllSessionsResponse>, Status> {
        let req = req.into_inner();
        let limit = page_size(req.page_size)?;
        let after = cursor(&req.page_token)?;
        let tenant = req
            .tenant_id
            .as_deref()
            .map(|t| crate::input::TenantId::parse("tenant_id", t))
            .transpose()?;
        let page = self
            .sessions
            .list_all(tenant.as_ref(), after.as_deref(), limit)
            .await?;
        let next_page_token = match page.sessions.last() {
            Some(last) if page.more => page_token(&last.handle),
            _ => String::new(),
        };
        let sessions = page
            .sessions
            .into_iter()
            .map(|s| pb::ListedSession {
                session_handle: s.handle,
                user_id: s.user_id,
                tenant_id: s.tenant_id,
                time_created: Some(timestamp(s.created_at_ms)),
                expiry: Some(timestamp(s.expires_at_ms)),
                last_active_time: Some(timestamp(s.last_active_ms)),
                device: super::devices::pb_device(s.device),
            })
            .collect();
        Ok(Response::new(pb::ListAllSessionsResponse {
            sessions,
            next_page_token,
        }))
    }

    type BackupStream = ReceiverStream<Result<pb::BackupChunk, Status>>;

    async fn backup(
        &self,
        _req: Request<pb::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        let (tx, rx) = mpsc::channel(8);
        let store = self.store.clone();
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let mut out = ChunkSender {
                buf: Vec::with_capacity(CHUNK),
                tx: tx.clone(),
            };
            match runtime.block_on(crate::backup::write(store.as_ref(), &mut out)) {
                Ok(summary) => {
                    tracing::info!(%summary, "backup streamed");
                    // The log archive now only needs to reach back to this
                    // backup's start and the one before.
                    if let Some(position) = summary.log_position
                        && let Err(e) = runtime.block_on(store.backup_taken(position))
                    {
                        tracing::warn!(error = %e, "the log archive was not trimmed");
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "backup failed");
                    let _ = tx.blocking_send(Err(Status::internal(
                        "the backup failed; see the server log",
                    )));
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::StatusExt;

    fn field(status: Status) -> String {
        let details = status.get_error_details();
        details.bad_request().expect("BadRequest").field_violations[0]
            .field
            .clone()
    }

    #[test]
    fn page_sizes_are_bounded() {
        assert_eq!(page_size(0).unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(1).unwrap(), 1);
        assert_eq!(page_size(1000).unwrap(), MAX_PAGE_SIZE);
        for bad in [-1, 1001, i32::MAX, i32::MIN] {
            let status = page_size(bad).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{bad}");
            assert_eq!(field(status), "page_size");
        }
    }

    #[test]
    fn page_tokens_round_trip_and_others_are_refused() {
        let handle = "0b6d2c1e-8f5a-4c3b-9d7e-1a2b3c4d5e6f";
        assert_eq!(
            cursor(&page_token(handle)).unwrap().as_deref(),
            Some(handle)
        );
        assert_eq!(cursor("").unwrap(), None);
        let too_long = page_token(&"x".repeat(MAX_CURSOR + 1));
        for bad in ["not base64!", "_w", "AA==", too_long.as_str()] {
            let status = cursor(bad).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{bad}");
            assert_eq!(field(status), "page_token");
        }
    }
}
