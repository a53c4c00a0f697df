//! The optional TOML configuration file: its keys (the flag names with
//! underscores) and the raw values it holds.
//!
//! This file only reads and deserializes the file; it must never validate
//! or default a setting, which [`super::resolve`] does for flags,
//! environment and file alike.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::error::{ConfigError, bad};
use crate::secret::Secret;

/// The optional configuration file; keys are the flag names with underscores.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    pub(super) listen: Option<String>,
    pub(super) data_dir: Option<PathBuf>,
    pub(super) database_url: Option<Secret>,
    pub(super) database_pool_size: Option<u64>,
    #[serde(default)]
    pub(super) api_keys: Vec<String>,
    pub(super) access_token_lifetime: Option<String>,
    pub(super) refresh_token_lifetime: Option<String>,
    pub(super) session_max_lifetime: Option<String>,
    pub(super) session_idle_timeout: Option<String>,
    pub(super) max_sessions_per_user: Option<u64>,
    pub(super) session_limit_action: Option<String>,
    pub(super) refresh_grace_period: Option<String>,
    pub(super) signing_algorithm: Option<String>,
    pub(super) key_rotation_interval: Option<String>,
    pub(super) issuer: Option<String>,
    pub(super) max_payload_size: Option<FileSize>,
    pub(super) sweep_interval: Option<String>,
    pub(super) drain_timeout: Option<String>,
    pub(super) log: Option<String>,
    pub(super) log_format: Option<String>,
    #[serde(default)]
    pub(super) claim_providers: BTreeMap<String, String>,
    pub(super) default_claim_provider: Option<String>,
    pub(super) claim_provider_timeout: Option<String>,
    #[serde(default)]
    pub(super) client_secrets: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) cors_origins: Vec<String>,
    pub(super) authz_cookie_name: Option<String>,
    #[serde(default)]
    pub(super) authz_claim_headers: BTreeMap<String, String>,
    pub(super) max_bucket_size: Option<FileSize>,
    pub(super) store_cache_size: Option<FileSize>,
    pub(super) store_reserved_space: Option<FileSize>,
    pub(super) log_archive_size: Option<FileSize>,
    pub(super) max_message_size: Option<FileSize>,
    pub(super) max_json_depth: Option<u64>,
    pub(super) max_handles_per_call: Option<u64>,
    pub(super) max_concurrent_requests: Option<u64>,
    pub(super) max_concurrent_streams: Option<u64>,
    pub(super) max_connections: Option<u64>,
    pub(super) max_header_list_size: Option<FileSize>,
    pub(super) request_timeout: Option<String>,
    pub(super) idle_timeout: Option<String>,
    pub(super) key_encryption_key_file: Option<PathBuf>,
    pub(super) previous_key_encryption_key_file: Option<PathBuf>,
    pub(super) tls_cert: Option<PathBuf>,
    pub(super) tls_key: Option<PathBuf>,
    pub(super) tls_client_ca: Option<PathBuf>,
    pub(super) token_cache_size: Option<u64>,
}

/// A size in the file: a number of bytes, or text such as `16KiB`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum FileSize {
    Bytes(u64),
    Text(String),
}

/// The configuration file as read: its path and the keys it sets.
pub(super) struct FileKeys<'a> {
    pub(super) path: &'a Path,
    pub(super) keys: std::collections::BTreeSet<String>,
}

/// The configuration file's settings, and the keys it sets.
pub(super) fn read_file(path: &Path) -> Result<(FileConfig, BTreeSet<String>), ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| bad("config", format!("cannot read {}: {e}", path.display())))?;
    let invalid =
        |e: toml::de::Error| bad("config", format!("{}: {}", path.display(), e.message()));
    let file = toml::from_str(&text).map_err(invalid)?;
    let keys = text.parse::<toml::Table>().map_err(invalid)?.into_iter();
    Ok((file, keys.map(|(key, _)| key).collect()))
}
