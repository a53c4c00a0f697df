//! `sessiond.v1.AdminService`: the signing keys' states and online backups.

use std::io::Write;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::convert::timestamp;
use crate::pb;
use crate::pb::admin_service_server::AdminService;
use crate::store::SessionStore;
use crate::token::keys::KeyRing;

/// Size of the chunks a backup is streamed in.
const CHUNK: usize = 64 * 1024;

/// The gRPC face of operator actions.
pub struct AdminApi {
    keys: Arc<KeyRing>,
    store: Arc<dyn SessionStore>,
}

impl std::fmt::Debug for AdminApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminApi")
    }
}

impl AdminApi {
    /// Serves the key ring and backups of `store`.
    pub fn new(keys: Arc<KeyRing>, store: Arc<dyn SessionStore>) -> Self {
        Self { keys, store }
    }
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
        self.tx
            .blocking_send(Ok(pb::BackupChunk { data }))
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

    type BackupStream = ReceiverStream<Result<pb::BackupChunk, Status>>;

    async fn backup(
        &self,
        _req: Request<pb::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        let (tx, rx) = mpsc::channel(8);
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let mut out = ChunkSender {
                buf: Vec::with_capacity(CHUNK),
                tx: tx.clone(),
            };
            match crate::backup::write(store.as_ref(), &mut out) {
                Ok(summary) => tracing::info!(%summary, "backup streamed"),
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
