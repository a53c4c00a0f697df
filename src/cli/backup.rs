//! `sessiond backup` (an online backup of a running server, to a file) and
//! `sessiond restore` (offline, into an empty data directory, optionally
//! replaying the old store's write-ahead log on top).
//!
//! `restore` must never write into a data directory that holds a store.

use std::path::Path;
use std::process::ExitCode;

use tonic::Request;

use crate::pb;
use crate::pb::admin_service_client::AdminServiceClient;

use super::client::{Client, Connection, from_status};
use super::{EXIT_FAILED, Outcome, exit, fail};

/// `sessiond backup --out FILE`: an online backup of a running server.
pub async fn backup(out: &Path, conn: &Connection) -> ExitCode {
    exit(run_backup(out, conn).await)
}

pub(super) async fn run_backup(out: &Path, conn: &Connection) -> Outcome {
    use tokio::io::AsyncWriteExt;
    let client = Client::connect(conn).await?;
    let mut request = Request::new(pb::BackupRequest {});
    if let Some(key) = &client.api_key {
        request
            .metadata_mut()
            .insert(crate::api::API_KEY_HEADER, key.clone());
    }
    let mut stream = AdminServiceClient::new(client.channel.clone())
        .backup(request)
        .await
        .map_err(from_status)?
        .into_inner();
    let partial = out.with_extension("partial");
    let io = |e: std::io::Error| {
        fail(
            EXIT_FAILED,
            format!("cannot write {}: {e}", partial.display()),
        )
    };
    // The backup holds signing keys (unless sealed) and the refresh MAC
    // secret: readable by its owner only.
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(&partial).await.map_err(io)?;
    while let Some(chunk) = stream.message().await.map_err(from_status)? {
        file.write_all(&chunk.data).await.map_err(io)?;
    }
    file.sync_all().await.map_err(io)?;
    drop(file);
    let check = partial.clone();
    let summary = tokio::task::spawn_blocking(move || {
        std::fs::File::open(&check)
            .map_err(crate::backup::BackupError::from)
            .and_then(|f| crate::backup::verify(std::io::BufReader::new(f)))
    })
    .await
    .map_err(|e| fail(EXIT_FAILED, e.to_string()))?
    .map_err(|e| {
        fail(
            EXIT_FAILED,
            format!("the backup received is not intact: {e}"),
        )
    })?;
    tokio::fs::rename(&partial, out).await.map_err(|e| {
        fail(
            EXIT_FAILED,
            format!("cannot move the backup to {}: {e}", out.display()),
        )
    })?;
    println!("{}", out.display());
    eprintln!("backup written: {summary}");
    Ok(())
}

/// `sessiond restore FILE`: restores a backup into an empty data directory
/// (the server must not be running on it), and with `--replay-log` brings
/// it up to the last write acknowledged in the store the backup was taken
/// of.
pub async fn restore(file: &Path, data_dir: &Path, replay_log: Option<&Path>) -> ExitCode {
    exit(run_restore(file, data_dir, replay_log).await)
}

/// Opens the store in `data_dir`, runs `work` on it, and waits until it is
/// closed (its final flush done and its lock let go).
pub(super) async fn with_store<T>(
    data_dir: &Path,
    work: impl AsyncFnOnce(&dyn crate::store::Store) -> Outcome<T>,
) -> Outcome<T> {
    // sled's threads may hold the directory for a moment after an earlier
    // handle's close.
    let mut attempts = 0;
    let store = loop {
        match crate::store::SledStore::open(
            data_dir,
            crate::config::DEFAULT_STORE_CACHE_BYTES,
            None,
        ) {
            Err(crate::store::StoreError::Locked(_)) if attempts < 250 => {
                attempts += 1;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            opened => break opened.map_err(|e| fail(EXIT_FAILED, e.to_string()))?,
        }
    };
    let (closed_tx, closed) = std::sync::mpsc::channel::<()>();
    store.on_close(closed_tx);
    let outcome = work(store.as_ref()).await;
    drop(store);
    let _ = tokio::task::spawn_blocking(move || {
        closed.recv_timeout(std::time::Duration::from_secs(30))
    })
    .await;
    outcome
}

pub(super) async fn run_restore(
    file: &Path,
    data_dir: &Path,
    replay_log: Option<&Path>,
) -> Outcome {
    let open = |path: &Path| {
        std::fs::File::open(path)
            .map(std::io::BufReader::new)
            .map_err(|e| fail(EXIT_FAILED, format!("cannot read {}: {e}", path.display())))
    };
    let checked = crate::backup::verify(open(file)?)
        .map_err(|e| fail(EXIT_FAILED, format!("{}: {e}", file.display())))?;
    if std::fs::read_dir(data_dir).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(fail(
            EXIT_FAILED,
            format!(
                "the data directory {} is not empty; restore only into an empty one",
                data_dir.display()
            ),
        ));
    }
    let replay = match replay_log {
        Some(from) => Some((from, replay_position(file, &checked, from)?)),
        None => None,
    };
    let summary = with_store(data_dir, async |store| {
        crate::backup::restore(store, open(file)?)
            .await
            .map_err(|e| fail(EXIT_FAILED, format!("restore failed: {e}")))
    })
    .await?;
    eprintln!("restored {summary}");
    if let Some((from, position)) = replay {
        let copied = crate::store::copy_log_since(from, position, data_dir)
            .map_err(|e| fail(EXIT_FAILED, format!("--replay-log: {e}")))?;
        // Opening the store replays the copied log; closing it flushes.
        with_store(data_dir, async |_| Ok(())).await?;
        eprintln!(
            "replayed {} of {} since the backup",
            crate::text::count(copied as u64, "log segment", "log segments"),
            from.display()
        );
    }
    println!("{}", data_dir.display());
    Ok(())
}

/// Where in the log of `from` a replay onto the backup in `file` starts,
/// after checking that the log is that store's.
pub(super) fn replay_position(
    file: &Path,
    backup: &crate::backup::Summary,
    from: &Path,
) -> Outcome<u64> {
    let (Some(position), Some(id)) = (backup.log_position, &backup.store_id) else {
        return Err(fail(
            EXIT_FAILED,
            format!(
                "{} records no log position (it was taken by an earlier version): \
                 restore it without --replay-log",
                file.display()
            ),
        ));
    };
    let theirs = crate::store::read_store_id(from)
        .map_err(|e| fail(EXIT_FAILED, format!("--replay-log: {e}")))?;
    if theirs.as_deref() != Some(id.as_str()) {
        return Err(fail(
            EXIT_FAILED,
            format!(
                "--replay-log: {} is not the data directory {} was taken of",
                from.display(),
                file.display()
            ),
        ));
    }
    Ok(position)
}
