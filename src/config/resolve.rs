//! Resolution: flags and environment over the file over the defaults,
//! each value parsed, the whole validated, and what the server needs
//! loaded: the TLS certificate, key and client CA become a rustls
//! configuration, the key-encryption keys become a [`Kek`]. The server
//! and a reload use what this returns, and never read those again.
//!
//! This file must never let an error out without the setting it is about,
//! located by `ConfigError::locate` to where the user gave it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::error::{ConfigError, bad};
use super::file::{FileConfig, FileKeys, FileSize, read_file};
use super::units::{parse_duration, parse_size};
use super::{ApiKey, Config, KEK_ENV, LogFormat, PREVIOUS_KEK_ENV, Secret, ServeArgs};
use crate::tls::{ServerTls, TlsFiles};
use crate::token::kek::Kek;

impl Config {
    /// Resolves flags and environment (in `args`) over the file named by
    /// `args.config`, over the defaults, validates the result and loads the
    /// TLS files and key-encryption keys it names. An error
    /// names the setting as the user set it (see [`Origin`](super::Origin)).
    pub fn resolve(args: &ServeArgs) -> Result<Self, ConfigError> {
        let (file, keys) = match &args.config {
            Some(path) => {
                let (file, keys) = read_file(path).map_err(|e| e.locate(&args.sources, None))?;
                (file, Some(FileKeys { path, keys }))
            }
            None => (FileConfig::default(), None),
        };
        Self::resolve_values(args, file).map_err(|e| e.locate(&args.sources, keys.as_ref()))
    }

    fn resolve_values(args: &ServeArgs, file: FileConfig) -> Result<Self, ConfigError> {
        let mut c = Self::with_data_dir(
            args.data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("./data")),
        );
        c.database_url = args.database_url.clone().or(file.database_url);
        if let Some(url) = &c.database_url {
            check_database_url(url)?;
        }
        if let Some(n) = count_setting(
            "database-pool-size",
            &args.database_pool_size,
            file.database_pool_size,
        )? {
            if !(1..=MAX_DATABASE_POOL_SIZE).contains(&n) {
                return Err(bad(
                    "database-pool-size",
                    format!("must be between 1 and {MAX_DATABASE_POOL_SIZE}"),
                ));
            }
            c.database_pool_size = n as usize;
        }
        if let Some(v) = args.listen.as_ref().or(file.listen.as_ref()) {
            c.listen = v.trim().parse().map_err(|_| {
                bad(
                    "listen",
                    format!("`{v}` is not an address like 127.0.0.1:50051"),
                )
            })?;
        }
        let keys = if args.api_keys.is_empty() {
            file.api_keys
        } else {
            args.api_keys.clone()
        };
        c.api_keys = keys
            .iter()
            .map(|k| k.trim())
            .filter(|k| !k.is_empty())
            .enumerate()
            .map(|(i, k)| ApiKey::parse(k, i).map_err(|m| bad("api-key", m)))
            .collect::<Result<_, _>>()?;
        let dur =
            |setting: &'static str, a: &Option<String>, f: Option<String>, into: &mut Duration| {
                if let Some(v) = a.clone().or(f) {
                    *into = parse_duration(&v).map_err(|m| bad(setting, m))?;
                }
                Ok::<(), ConfigError>(())
            };
        dur(
            "access-token-lifetime",
            &args.access_token_lifetime,
            file.access_token_lifetime,
            &mut c.access_token_lifetime,
        )?;
        dur(
            "refresh-token-lifetime",
            &args.refresh_token_lifetime,
            file.refresh_token_lifetime,
            &mut c.refresh_token_lifetime,
        )?;
        dur(
            "session-max-lifetime",
            &args.session_max_lifetime,
            file.session_max_lifetime,
            &mut c.session_max_lifetime,
        )?;
        dur(
            "session-idle-timeout",
            &args.session_idle_timeout,
            file.session_idle_timeout,
            &mut c.session_idle_timeout,
        )?;
        if let Some(n) = count_setting(
            "max-sessions-per-user",
            &args.max_sessions_per_user,
            file.max_sessions_per_user,
        )? {
            if n > MAX_SESSIONS_PER_USER {
                return Err(bad(
                    "max-sessions-per-user",
                    format!("must be between 0 (no limit) and {MAX_SESSIONS_PER_USER}"),
                ));
            }
            c.max_sessions_per_user = n as usize;
        }
        if let Some(v) = args
            .session_limit_action
            .as_ref()
            .or(file.session_limit_action.as_ref())
        {
            c.session_limit_action = match v.trim() {
                "evict-oldest" => crate::session::LimitAction::EvictOldest,
                "refuse" => crate::session::LimitAction::Refuse,
                other => {
                    return Err(bad(
                        "session-limit-action",
                        format!("`{other}` is not evict-oldest or refuse"),
                    ));
                }
            };
        }
        dur(
            "refresh-grace-period",
            &args.refresh_grace_period,
            file.refresh_grace_period,
            &mut c.refresh_grace_period,
        )?;
        dur(
            "key-rotation-interval",
            &args.key_rotation_interval,
            file.key_rotation_interval,
            &mut c.key_rotation_interval,
        )?;
        dur(
            "sweep-interval",
            &args.sweep_interval,
            file.sweep_interval,
            &mut c.sweep_interval,
        )?;
        dur(
            "drain-timeout",
            &args.drain_timeout,
            file.drain_timeout,
            &mut c.drain_timeout,
        )?;
        if let Some(v) = args
            .signing_algorithm
            .as_ref()
            .or(file.signing_algorithm.as_ref())
        {
            c.signing_algorithm = v
                .trim()
                .parse()
                .map_err(|m: String| bad("signing-algorithm", m))?;
        }
        c.issuer = args.issuer.clone().or(file.issuer);
        if let Some(n) = size_setting(
            "max-payload-size",
            &args.max_payload_size,
            file.max_payload_size,
        )? {
            c.max_payload_bytes = n as usize;
        }
        if let Some(v) = args.log.clone().or(file.log) {
            c.log = v;
        }
        if let Some(v) = args.log_format.as_ref().or(file.log_format.as_ref()) {
            c.log_format = match v.trim() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => return Err(bad("log-format", format!("`{other}` is not text or json"))),
            };
        }
        dur(
            "claim-provider-timeout",
            &args.claim_provider_timeout,
            file.claim_provider_timeout,
            &mut c.claim_provider_timeout,
        )?;
        c.claim_providers = if args.claim_providers.is_empty() {
            file.claim_providers.into_iter().collect()
        } else {
            pairs("claim-provider", "KEY=URL", &args.claim_providers)?
        };
        c.default_claim_provider = args
            .default_claim_provider
            .clone()
            .or(file.default_claim_provider);
        c.client_secrets = if args.client_secrets.is_empty() {
            file.client_secrets
                .into_iter()
                .map(|(t, s)| (t, Secret::new(s)))
                .collect()
        } else {
            args.client_secrets
                .iter()
                .map(|p| {
                    p.split_once('=')
                        .map(|(t, s)| (t.trim().to_owned(), Secret::new(s.trim())))
                        .ok_or_else(|| bad("client-secret", "expected TENANT=SECRET"))
                })
                .collect::<Result<_, _>>()?
        };
        c.cors_origins = if args.cors_origins.is_empty() {
            file.cors_origins
        } else {
            args.cors_origins.clone()
        };
        if let Some(name) = args.authz_cookie_name.clone().or(file.authz_cookie_name) {
            c.authz_cookie_name = name;
        }
        c.authz_claim_headers = if args.authz_claim_headers.is_empty() {
            file.authz_claim_headers.into_iter().collect()
        } else {
            pairs(
                "authz-claim-header",
                "CLAIM=HEADER",
                &args.authz_claim_headers,
            )?
        };
        if let Some(n) = size_setting(
            "max-bucket-size",
            &args.max_bucket_size,
            file.max_bucket_size,
        )? {
            c.max_bucket_bytes = n as usize;
        }
        if let Some(n) = size_setting(
            "store-cache-size",
            &args.store_cache_size,
            file.store_cache_size,
        )? {
            c.store_cache_bytes = n;
        }
        if let Some(n) = size_setting(
            "store-reserved-space",
            &args.store_reserved_space,
            file.store_reserved_space,
        )? {
            c.store_reserved_bytes = n;
        }
        if let Some(n) = size_setting(
            "log-archive-size",
            &args.log_archive_size,
            file.log_archive_size,
        )? {
            c.log_archive_bytes = n;
        }
        let l = &mut c.limits;
        if let Some(n) = size_setting(
            "max-message-size",
            &args.max_message_size,
            file.max_message_size,
        )? {
            l.max_message_bytes = n as usize;
        }
        if let Some(n) = count_setting("max-json-depth", &args.max_json_depth, file.max_json_depth)?
        {
            l.max_json_depth = n as usize;
        }
        if let Some(n) = count_setting(
            "max-handles-per-call",
            &args.max_handles_per_call,
            file.max_handles_per_call,
        )? {
            l.max_handles_per_call = n as usize;
        }
        if let Some(n) = count_setting(
            "max-concurrent-requests",
            &args.max_concurrent_requests,
            file.max_concurrent_requests,
        )? {
            l.max_concurrent_requests = n as usize;
        }
        if let Some(n) = count_setting(
            "max-concurrent-streams",
            &args.max_concurrent_streams,
            file.max_concurrent_streams,
        )? {
            l.max_concurrent_streams = u32::try_from(n).unwrap_or(u32::MAX);
        }
        if let Some(n) = count_setting(
            "max-connections",
            &args.max_connections,
            file.max_connections,
        )? {
            l.max_connections = n as usize;
        }
        if let Some(n) = size_setting(
            "max-header-list-size",
            &args.max_header_list_size,
            file.max_header_list_size,
        )? {
            l.max_header_list_bytes = u32::try_from(n).unwrap_or(u32::MAX);
        }
        dur(
            "request-timeout",
            &args.request_timeout,
            file.request_timeout,
            &mut c.limits.request_timeout,
        )?;
        dur(
            "idle-timeout",
            &args.idle_timeout,
            file.idle_timeout,
            &mut c.limits.idle_timeout,
        )?;
        if let Some(n) = count_setting(
            "token-cache-size",
            &args.token_cache_size,
            file.token_cache_size,
        )? {
            c.token_cache_size = n as usize;
        }
        let tls_cert = args.tls_cert.clone().or(file.tls_cert);
        let tls_key = args.tls_key.clone().or(file.tls_key);
        let tls_client_ca = args.tls_client_ca.clone().or(file.tls_client_ca);
        let tls = match (tls_cert, tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert,
                key,
                client_ca: tls_client_ca,
            }),
            (None, None) if tls_client_ca.is_none() => None,
            (None, None) => return Err(bad("tls-client-ca", "needs --tls-cert and --tls-key")),
            (Some(_), None) => return Err(bad("tls-key", "--tls-cert needs --tls-key")),
            (None, Some(_)) => return Err(bad("tls-cert", "--tls-key needs --tls-cert")),
        };
        let kek = read_kek(
            "key-encryption-key-file",
            args.key_encryption_key_file
                .clone()
                .or(file.key_encryption_key_file),
            KEK_ENV,
        )?;
        let previous_kek = read_kek(
            "previous-key-encryption-key-file",
            args.previous_key_encryption_key_file
                .clone()
                .or(file.previous_key_encryption_key_file),
            PREVIOUS_KEK_ENV,
        )?;
        c.validate()?;
        // Loaded last, after every cheaper check, as they always were: a
        // configuration with several faults reports the same one first.
        c.tls = tls
            .map(ServerTls::load)
            .transpose()
            .map_err(|e| bad(e.setting, e.message))?;
        c.key_encryption_key = open_keks(kek, previous_kek)?;
        Ok(c)
    }
}

/// The key-encryption key, opening also what the previous one sealed, from
/// their texts.
fn open_keks(
    kek: Option<Secret>,
    previous: Option<Secret>,
) -> Result<Option<Arc<Kek>>, ConfigError> {
    let kek = kek
        .map(|text| Kek::from_text(text.expose()).map_err(|m| bad("key-encryption-key", m)))
        .transpose()?;
    let previous = previous
        .map(|text| {
            Kek::from_text(text.expose()).map_err(|m| bad("previous-key-encryption-key", m))
        })
        .transpose()?;
    Ok(match (kek, previous) {
        (Some(kek), Some(previous)) => Some(Arc::new(kek.with_previous(previous))),
        (Some(kek), None) => Some(Arc::new(kek)),
        (None, Some(_)) => {
            return Err(bad(
                "previous-key-encryption-key",
                "needs the key-encryption key that replaces it (--key-encryption-key-file)",
            ));
        }
        (None, None) => None,
    })
}

/// Most connections one process may keep to the database.
const MAX_DATABASE_POOL_SIZE: u64 = 1000;

/// Highest --max-sessions-per-user: each create under the limit reads the
/// user's live sessions in its tenant.
const MAX_SESSIONS_PER_USER: u64 = 10_000;

/// Checks a database URL without connecting: its scheme, its `sslmode`,
/// and that the client can read it. The error never repeats the URL, which
/// may hold a password.
fn check_database_url(url: &Secret) -> Result<(), ConfigError> {
    let text = url.expose();
    if !(text.starts_with("postgres://") || text.starts_with("postgresql://")) {
        return Err(bad(
            "database-url",
            "must be a postgres:// URL, such as postgres://user:password@host:5432/db?sslmode=require",
        ));
    }
    crate::store::PostgresStore::check_url(url).map_err(|e| bad("database-url", e.to_string()))
}

fn size_setting(
    setting: &'static str,
    arg: &Option<String>,
    file: Option<FileSize>,
) -> Result<Option<u64>, ConfigError> {
    let parsed = match (arg, file) {
        (Some(v), _) => parse_size(v),
        (None, Some(FileSize::Bytes(n))) => Ok(n),
        (None, Some(FileSize::Text(v))) => parse_size(&v),
        (None, None) => return Ok(None),
    };
    parsed.map(Some).map_err(|m| bad(setting, m))
}

fn count_setting(
    setting: &'static str,
    arg: &Option<String>,
    file: Option<u64>,
) -> Result<Option<u64>, ConfigError> {
    match (arg, file) {
        (Some(v), _) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| bad(setting, format!("`{v}` is not a whole number"))),
        (None, n) => Ok(n),
    }
}

/// A key-encryption key's text: from the file `setting` names, or else the
/// environment variable `env`.
fn read_kek(
    setting: &'static str,
    file: Option<PathBuf>,
    env: &str,
) -> Result<Option<Secret>, ConfigError> {
    match file {
        Some(path) => Ok(Some(Secret::new(std::fs::read_to_string(&path).map_err(
            |e| bad(setting, format!("cannot read {}: {e}", path.display())),
        )?))),
        None => Ok(std::env::var(env).ok().map(Secret::new)),
    }
}

/// `NAME=VALUE` settings as pairs, trimmed; `form` names the shape in the
/// error for one without `=`.
fn pairs(
    setting: &'static str,
    form: &str,
    given: &[String],
) -> Result<Vec<(String, String)>, ConfigError> {
    given
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| bad(setting, format!("`{p}` is not {form}")))
        })
        .collect()
}
