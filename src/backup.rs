//! Backups: a store export written as one self-checking file, and its
//! restore into an empty data directory.
//!
//! Format (version 2): the magic line `SESSIOND-BACKUP\n`, a version byte,
//! then entries `kind(1) | key length(4, BE) | key | value length(4, BE) |
//! value`, then an end entry (kind 0xFF) followed by the SHA-256 of every
//! byte before it. Values are JSON records (sessions, buckets, keys), raw
//! bytes (server secrets), or, first, the id of the store (its `store-id`)
//! and its log position when the backup began (8 bytes, BE), from which a
//! replay of that store's write-ahead log brings the restored store up to
//! date. Version 1 is version 2 without the
//! log position; both are read. Indexes are not backed up: restore rebuilds
//! them.
//!
//! A backup is taken online by iterating the store, so every record that
//! existed when it began (and was not deleted meanwhile) is in it. A file is
//! checked end to end before anything is restored from it.

mod records;

use std::io::{self, Read, Write};

use aws_lc_rs::digest;
use serde_json::Value;

use self::records::{BucketsJson, KeyJson, SessionJson};
use crate::store::{Exported, Store, StoreError};

/// The first line of every backup.
pub const MAGIC: &[u8] = b"SESSIOND-BACKUP\n";
/// The format version written.
pub const VERSION: u8 = 2;
/// The oldest format version read.
const OLDEST_VERSION: u8 = 1;

const SESSION: u8 = 1;
const USER_DATA: u8 = 2;
const KEY: u8 = 3;
const SECRET: u8 = 4;
const LOG_POSITION: u8 = 5;
const STORE_ID: u8 = 6;
const END: u8 = 0xFF;

/// What a backup holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Sessions.
    pub sessions: u64,
    /// Users with buckets.
    pub user_data: u64,
    /// Signing keys.
    pub keys: u64,
    /// Server secrets.
    pub secrets: u64,
    /// The store's log position when the backup began, if it has a log.
    pub log_position: Option<u64>,
    /// The id of the store the backup was taken of, if it has one.
    pub store_id: Option<String>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::text::count;
        write!(
            f,
            "{}, {}, {}, {}",
            count(self.sessions, "session", "sessions"),
            count(self.user_data, "user's buckets", "users' buckets"),
            count(self.keys, "signing key", "signing keys"),
            count(self.secrets, "server secret", "server secrets"),
        )
    }
}

/// Why a backup could not be written, read or restored.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Reading or writing the file failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The file is not a complete, intact backup.
    #[error("not a valid sessiond backup: {0}")]
    Invalid(String),
}

fn invalid(message: impl Into<String>) -> BackupError {
    BackupError::Invalid(message.into())
}

/// Writes entries and the trailing checksum.
struct Writer<W: Write> {
    out: W,
    hash: digest::Context,
}

impl<W: Write> Writer<W> {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.hash.update(bytes);
        self.out.write_all(bytes)
    }

    fn entry(&mut self, kind: u8, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.put(&[kind])?;
        for part in [key, value] {
            let len = u32::try_from(part.len()).map_err(|_| io::Error::other("entry too large"))?;
            self.put(&len.to_be_bytes())?;
            self.put(part)?;
        }
        Ok(())
    }
}

fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialise")
}

/// Writes a backup of `store` to `out`. `out` is written to as the store
/// is read: when it blocks, run this off the async executor (on a blocking
/// thread, through `Handle::block_on`).
pub async fn write(store: &dyn Store, out: impl Write + Send) -> Result<Summary, BackupError> {
    let mut w = Writer {
        out,
        hash: digest::Context::new(&digest::SHA256),
    };
    w.put(MAGIC)?;
    w.put(&[VERSION])?;
    let mut summary = Summary {
        log_position: store.log_position().await,
        store_id: store.store_id().await,
        ..Summary::default()
    };
    if let Some(id) = &summary.store_id {
        w.entry(STORE_ID, b"store", id.as_bytes())?;
    }
    if let Some(position) = summary.log_position {
        w.entry(LOG_POSITION, b"wal", &position.to_be_bytes())?;
    }
    let mut io_error = None;
    store.export(&mut |item| {
        let written = match &item {
            Exported::Session(r) => {
                summary.sessions += 1;
                w.entry(SESSION, r.handle.as_bytes(), &json(&SessionJson::from(&**r)))
            }
            Exported::UserData {
                tenant_id,
                user_id,
                data,
            } => {
                summary.user_data += 1;
                let value = serde_json::json!({ "tenant_id": tenant_id, "user_id": user_id, "data": BucketsJson::from(data) });
                w.entry(USER_DATA, user_id.as_bytes(), &json(&value))
            }
            Exported::Key(k) => {
                summary.keys += 1;
                w.entry(KEY, k.kid.as_bytes(), &json(&KeyJson::from(k)))
            }
            Exported::Secret { name, value } => {
                summary.secrets += 1;
                w.entry(SECRET, name.as_bytes(), value)
            }
        };
        written.map_err(|e| {
            let message = e.to_string();
            io_error = Some(e);
            StoreError::Backend(message)
        })
    })
    .await
    .map_err(|e| match io_error.take() {
        Some(io) => BackupError::Io(io),
        None => BackupError::Store(e),
    })?;
    let checksum = w.hash.clone().finish();
    w.out.write_all(&[END])?;
    w.out.write_all(checksum.as_ref())?;
    w.out.flush()?;
    Ok(summary)
}

fn early() -> BackupError {
    invalid("the file ends early (an interrupted backup?)")
}

/// Reads exactly `n` bytes, adding them to the running checksum.
fn take(
    input: &mut impl Read,
    n: usize,
    hash: &mut digest::Context,
) -> Result<Vec<u8>, BackupError> {
    let mut buf = vec![0u8; n];
    input.read_exact(&mut buf).map_err(|_| early())?;
    hash.update(&buf);
    Ok(buf)
}

/// Reads one length-prefixed part of an entry.
fn part(input: &mut impl Read, hash: &mut digest::Context) -> Result<Vec<u8>, BackupError> {
    let len = u32::from_be_bytes(take(input, 4, hash)?.try_into().expect("4 bytes")) as usize;
    if len > 64 * 1024 * 1024 {
        return Err(invalid("an entry is impossibly large"));
    }
    take(input, len, hash)
}

fn decode_entry(
    kind: u8,
    key: Vec<u8>,
    value: &[u8],
    summary: &mut Summary,
) -> Result<Exported, BackupError> {
    let corrupt =
        |what: &str, e: serde_json::Error| invalid(format!("a {what} entry does not decode: {e}"));
    Ok(match kind {
        SESSION => {
            summary.sessions += 1;
            Exported::Session(
                serde_json::from_slice::<SessionJson>(value)
                    .map_err(|e| corrupt("session", e))?
                    .try_into()
                    .map(Box::new)
                    .map_err(|e| invalid(format!("a session entry does not decode: {e}")))?,
            )
        }
        USER_DATA => {
            summary.user_data += 1;
            let v: Value = serde_json::from_slice(value).map_err(|e| corrupt("bucket", e))?;
            let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
            let (Some(tenant_id), Some(user_id)) = (field("tenant_id"), field("user_id")) else {
                return Err(invalid("a bucket entry names no user"));
            };
            let data: BucketsJson =
                serde_json::from_value(v.get("data").cloned().unwrap_or_default())
                    .map_err(|e| corrupt("bucket", e))?;
            Exported::UserData {
                tenant_id,
                user_id,
                data: data.into(),
            }
        }
        KEY => {
            summary.keys += 1;
            Exported::Key(
                serde_json::from_slice::<KeyJson>(value)
                    .map_err(|e| corrupt("key", e))?
                    .into(),
            )
        }
        SECRET => {
            summary.secrets += 1;
            Exported::Secret {
                name: String::from_utf8(key)
                    .map_err(|_| invalid("a secret's name is not UTF-8"))?,
                value: value.to_vec(),
            }
        }
        other => return Err(invalid(format!("unknown entry kind {other}"))),
    })
}

/// A backup being read, one item at a time.
struct Reader<R> {
    input: R,
    hash: digest::Context,
    summary: Summary,
}

impl<R: Read> Reader<R> {
    /// Checks the header and the format version.
    fn open(mut input: R) -> Result<Self, BackupError> {
        let mut hash = digest::Context::new(&digest::SHA256);
        if take(&mut input, MAGIC.len(), &mut hash)? != MAGIC {
            return Err(invalid("it does not start with the sessiond backup header"));
        }
        let version = take(&mut input, 1, &mut hash)?[0];
        if !(OLDEST_VERSION..=VERSION).contains(&version) {
            return Err(invalid(format!(
                "format version {version} is not supported (expected {OLDEST_VERSION} to {VERSION})"
            )));
        }
        Ok(Self {
            input,
            hash,
            summary: Summary::default(),
        })
    }

    /// The next item; `None` once the end and its checksum were read and
    /// checked.
    fn next_item(&mut self) -> Result<Option<Exported>, BackupError> {
        let input = &mut self.input;
        let hash = &mut self.hash;
        let summary = &mut self.summary;
        loop {
            let mut kind = [0u8; 1];
            input.read_exact(&mut kind).map_err(|_| early())?;
            if kind[0] == END {
                let mut expected = [0u8; 32];
                input
                    .read_exact(&mut expected)
                    .map_err(|_| invalid("the checksum is missing"))?;
                if hash.clone().finish().as_ref() != expected {
                    return Err(invalid("the checksum does not match (the file is damaged)"));
                }
                let mut rest = Vec::new();
                input.read_to_end(&mut rest)?;
                if !rest.is_empty() {
                    return Err(invalid("there are bytes after the checksum"));
                }
                return Ok(None);
            }
            hash.update(&kind);
            let key = part(input, hash)?;
            let value = part(input, hash)?;
            if kind[0] == LOG_POSITION {
                let position = <[u8; 8]>::try_from(value.as_slice())
                    .map_err(|_| invalid("the log position is not 8 bytes"))?;
                summary.log_position = Some(u64::from_be_bytes(position));
                continue;
            }
            if kind[0] == STORE_ID {
                summary.store_id = Some(
                    String::from_utf8(value).map_err(|_| invalid("the store id is not UTF-8"))?,
                );
                continue;
            }
            return decode_entry(kind[0], key, &value, summary).map(Some);
        }
    }
}

/// Reads a backup, handing each item to `visit`. With `visit` = `None` it
/// only checks the file.
fn read(
    input: impl Read,
    mut visit: Option<&mut dyn FnMut(Exported) -> Result<(), BackupError>>,
) -> Result<Summary, BackupError> {
    let mut reader = Reader::open(input)?;
    while let Some(item) = reader.next_item()? {
        if let Some(visit) = visit.as_mut() {
            visit(item)?;
        }
    }
    Ok(reader.summary)
}

/// Checks a backup end to end without restoring anything.
pub fn verify(input: impl Read) -> Result<Summary, BackupError> {
    read(input, None)
}

/// Restores a verified backup into `store` (which should be empty), then
/// waits until it is durable.
pub async fn restore(store: &dyn Store, input: impl Read) -> Result<Summary, BackupError> {
    let mut reader = Reader::open(input)?;
    while let Some(item) = reader.next_item()? {
        store.import(item).await?;
    }
    store.durable().await?;
    Ok(reader.summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{
        Durability, Generation, KeysAndSecrets, SessionRecord, Sessions, SledStore, TokenHash,
        UserDataStore,
    };
    use serde_json::Map;

    async fn exported(store: &dyn Store) -> Vec<String> {
        let mut items = Vec::new();
        store
            .export(&mut |item| {
                items.push(format!("{item:?}"));
                Ok(())
            })
            .await
            .unwrap();
        items.sort();
        items
    }

    #[test]
    fn the_summary_counts_in_the_right_number() {
        let summary = |n| Summary {
            sessions: n,
            user_data: n,
            keys: n,
            secrets: n,
            ..Summary::default()
        };
        assert_eq!(
            summary(0).to_string(),
            "0 sessions, 0 users' buckets, 0 signing keys, 0 server secrets"
        );
        assert_eq!(
            summary(1).to_string(),
            "1 session, 1 user's buckets, 1 signing key, 1 server secret"
        );
        assert_eq!(
            summary(2).to_string(),
            "2 sessions, 2 users' buckets, 2 signing keys, 2 server secrets"
        );
    }

    #[tokio::test]
    async fn a_backup_restores_everything_and_damage_is_detected() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let source = SledStore::open(a.path(), 8 << 20, None).unwrap();
        for i in 0..3 {
            source
                .create_session(&SessionRecord {
                    handle: format!("h{i}"),
                    user_id: "u".into(),
                    tenant_id: "public".into(),
                    access_payload: Map::new(),
                    data: Map::new(),
                    created_at_ms: 1,
                    expires_at_ms: 10,
                    current: Generation {
                        refresh_hash: TokenHash([9; 32]),
                        anti_csrf_hash: None,
                    },
                    previous: None,
                    rotated_at_ms: 1,
                    last_active_ms: 1,
                    timeouts: Default::default(),
                    device: Default::default(),
                })
                .await
                .unwrap();
        }
        source
            .update_user_data("public", "u", &mut |d| {
                let mut d = d.clone();
                d.private.insert("k".into(), serde_json::json!(1));
                Some(d)
            })
            .await
            .unwrap();
        source.secret("s", &mut || vec![1, 2, 3]).await.unwrap();

        let mut file = Vec::new();
        let written = write(source.as_ref(), &mut file).await.unwrap();
        assert_eq!(
            written,
            Summary {
                sessions: 3,
                user_data: 1,
                keys: 0,
                secrets: 1,
                log_position: Durability::log_position(source.as_ref()).await,
                store_id: Durability::store_id(source.as_ref()).await,
            }
        );
        assert!(written.log_position.is_some() && written.store_id.is_some());
        assert_eq!(verify(&file[..]).unwrap(), written);

        let target = SledStore::open(b.path(), 8 << 20, None).unwrap();
        assert_eq!(restore(target.as_ref(), &file[..]).await.unwrap(), written);
        assert_eq!(
            exported(target.as_ref()).await,
            exported(source.as_ref()).await
        );
        assert_eq!(
            target.user_sessions("u", None).await.unwrap().len(),
            3,
            "indexes rebuilt"
        );

        for i in [0, MAGIC.len() + 3, file.len() / 2, file.len() - 1] {
            let mut damaged = file.clone();
            damaged[i] ^= 0x20;
            assert!(
                verify(&damaged[..]).is_err(),
                "a flipped byte at {i} went unnoticed"
            );
        }
        assert!(
            verify(&file[..file.len() - 10]).is_err(),
            "a truncated file went unnoticed"
        );
    }
}
