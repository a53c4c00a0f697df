//! Configuration: raw settings from flags, `SESSIOND_*` environment variables
//! and an optional TOML file, validated into one resolved [`Config`].
//!
//! Precedence is flag or environment variable, then the file, then the
//! default. Every error names the setting it is about as the user gave it
//! (flag, environment variable or file key), and nothing listens
//! before the whole configuration is valid. Secrets are held in [`Secret`],
//! whose `Debug` never prints them.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use clap::parser::ValueSource;
use serde::Deserialize;

pub use crate::token::SigningAlgorithm;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, with the request span's fields.
    Json,
}

pub use crate::api::keys::{ApiKey, KeySecret, Scope};
pub use crate::secret::Secret;

/// Server settings as given on the command line or in the environment.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// TOML file with settings; flags and environment variables override it.
    #[arg(long, env = "SESSIOND_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on for gRPC, gRPC-Web and HTTP [default: 127.0.0.1:50051].
    #[arg(long, env = "SESSIOND_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Directory of the embedded store [default: ./data].
    #[arg(long, env = "SESSIOND_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// API key callers send as `x-api-key` (repeatable): KEY for an admin key, or
    /// NAME:SCOPE:KEY with SCOPE verify, backend or admin; KEY may be sha256:<hex>.
    #[arg(
        long = "api-key",
        env = "SESSIOND_API_KEYS",
        value_name = "KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,
    /// Access token lifetime [default: 1h].
    #[arg(long, env = "SESSIOND_ACCESS_TOKEN_LIFETIME", value_name = "DUR")]
    pub access_token_lifetime: Option<String>,
    /// Refresh token lifetime, sliding on every refresh [default: 100d].
    #[arg(long, env = "SESSIOND_REFRESH_TOKEN_LIFETIME", value_name = "DUR")]
    pub refresh_token_lifetime: Option<String>,
    /// How long a rotated-out refresh token may rotate again [default: 30s, at most 300s].
    #[arg(long, env = "SESSIOND_REFRESH_GRACE_PERIOD", value_name = "DUR")]
    pub refresh_grace_period: Option<String>,
    /// RS256, ES256 or EdDSA [default: ES256].
    #[arg(long, env = "SESSIOND_SIGNING_ALGORITHM", value_name = "ALG")]
    pub signing_algorithm: Option<String>,
    /// How often the rotating signing key is replaced [default: 168h].
    #[arg(long, env = "SESSIOND_KEY_ROTATION_INTERVAL", value_name = "DUR")]
    pub key_rotation_interval: Option<String>,
    /// Issuer URL placed in `iss` and the discovery document [default: http://<listen address>].
    #[arg(long, env = "SESSIOND_ISSUER", value_name = "URL")]
    pub issuer: Option<String>,
    /// Largest access token payload, session data or JWT payload, in bytes of JSON [default: 16KiB].
    #[arg(long, env = "SESSIOND_MAX_PAYLOAD_SIZE", value_name = "BYTES")]
    pub max_payload_size: Option<String>,
    /// How often expired sessions are removed from the store [default: 10m].
    #[arg(long, env = "SESSIOND_SWEEP_INTERVAL", value_name = "DUR")]
    pub sweep_interval: Option<String>,
    /// How long in-flight requests may run after SIGTERM/SIGINT [default: 10s].
    #[arg(long, env = "SESSIOND_DRAIN_TIMEOUT", value_name = "DUR")]
    pub drain_timeout: Option<String>,
    /// Log filter, such as `info` or `sessiond=debug` [default: info].
    #[arg(long = "log", env = "SESSIOND_LOG", value_name = "FILTER")]
    pub log: Option<String>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "SESSIOND_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// ClaimProvider for one claim key, as KEY=URL (repeatable).
    #[arg(
        long = "claim-provider",
        env = "SESSIOND_CLAIM_PROVIDERS",
        value_name = "KEY=URL",
        value_delimiter = ','
    )]
    pub claim_providers: Vec<String>,
    /// ClaimProvider for every claim key without its own.
    #[arg(long, env = "SESSIOND_DEFAULT_CLAIM_PROVIDER", value_name = "URL")]
    pub default_claim_provider: Option<String>,
    /// Deadline of each ClaimProvider call [default: 2s].
    #[arg(long, env = "SESSIOND_CLAIM_PROVIDER_TIMEOUT", value_name = "DUR")]
    pub claim_provider_timeout: Option<String>,
    /// A tenant's client secret for private buckets, as TENANT=SECRET (repeatable).
    #[arg(
        long = "client-secret",
        env = "SESSIOND_CLIENT_SECRETS",
        value_name = "TENANT=SECRET",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub client_secrets: Vec<String>,
    /// Browser origin allowed to call over gRPC-Web, such as https://app.example.com (repeatable).
    #[arg(
        long = "cors-origin",
        env = "SESSIOND_CORS_ORIGINS",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,
    /// Largest public or private bucket, in bytes of JSON [default: 64KiB].
    #[arg(long, env = "SESSIOND_MAX_BUCKET_SIZE", value_name = "BYTES")]
    pub max_bucket_size: Option<String>,
    /// Memory for the embedded store's page cache [default: 40MiB].
    #[arg(long, env = "SESSIOND_STORE_CACHE_SIZE", value_name = "BYTES")]
    pub store_cache_size: Option<String>,
    /// Disk kept for flushed write-ahead log segments, replayed by `restore --replay-log` (0 disables) [default: 1GiB].
    #[arg(long, env = "SESSIOND_LOG_ARCHIVE_SIZE", value_name = "BYTES")]
    pub log_archive_size: Option<String>,
    /// Free disk space under which the embedded store refuses writes (0 disables) [default: 64MiB].
    #[arg(long, env = "SESSIOND_STORE_RESERVED_SPACE", value_name = "BYTES")]
    pub store_reserved_space: Option<String>,
    /// Largest gRPC request message, decoded [default: 4MiB].
    #[arg(long, env = "SESSIOND_MAX_MESSAGE_SIZE", value_name = "BYTES")]
    pub max_message_size: Option<String>,
    /// Deepest nesting of JSON objects and arrays in payloads and buckets [default: 32].
    #[arg(long, env = "SESSIOND_MAX_JSON_DEPTH", value_name = "N")]
    pub max_json_depth: Option<String>,
    /// Most session handles in one RevokeMultipleSessions call [default: 1000].
    #[arg(long, env = "SESSIOND_MAX_HANDLES_PER_CALL", value_name = "N")]
    pub max_handles_per_call: Option<String>,
    /// Calls served at once; more are refused with RESOURCE_EXHAUSTED [default: 1024].
    #[arg(long, env = "SESSIOND_MAX_CONCURRENT_REQUESTS", value_name = "N")]
    pub max_concurrent_requests: Option<String>,
    /// Connections open at once (TLS handshakes included); more wait to be accepted [default: 10000].
    #[arg(long, env = "SESSIOND_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<String>,
    /// HTTP/2 streams one connection may have open [default: 256].
    #[arg(long, env = "SESSIOND_MAX_CONCURRENT_STREAMS", value_name = "N")]
    pub max_concurrent_streams: Option<String>,
    /// Largest HTTP/2 header list a client may send [default: 16KiB].
    #[arg(long, env = "SESSIOND_MAX_HEADER_LIST_SIZE", value_name = "BYTES")]
    pub max_header_list_size: Option<String>,
    /// Longest a call may run before DEADLINE_EXCEEDED (or the client's grpc-timeout, if shorter) [default: 30s].
    #[arg(long, env = "SESSIOND_REQUEST_TIMEOUT", value_name = "DUR")]
    pub request_timeout: Option<String>,
    /// Close connections on which the client sends nothing for this long [default: 10m].
    #[arg(long, env = "SESSIOND_IDLE_TIMEOUT", value_name = "DUR")]
    pub idle_timeout: Option<String>,
    /// Verified access tokens remembered, so a token seen again skips its signature check (0 disables) [default: 10000].
    #[arg(long, env = "SESSIOND_TOKEN_CACHE_SIZE", value_name = "N")]
    pub token_cache_size: Option<String>,
    /// PEM certificate chain: serve TLS (gRPC, gRPC-Web and HTTP) on the port.
    #[arg(
        long,
        env = "SESSIOND_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the certificate.
    #[arg(
        long,
        env = "SESSIOND_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates: require every client to present a certificate they issued (mutual TLS).
    #[arg(long, env = "SESSIOND_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
    /// File holding the key-encryption key (32 bytes, base64 or hex) that seals
    /// signing keys in the store; or set SESSIOND_KEY_ENCRYPTION_KEY.
    #[arg(long, env = "SESSIOND_KEY_ENCRYPTION_KEY_FILE", value_name = "FILE")]
    pub key_encryption_key_file: Option<PathBuf>,
    /// File holding the key-encryption key being replaced: what it sealed is
    /// sealed again under --key-encryption-key-file at start; or set
    /// SESSIOND_PREVIOUS_KEY_ENCRYPTION_KEY.
    #[arg(
        long,
        env = "SESSIOND_PREVIOUS_KEY_ENCRYPTION_KEY_FILE",
        value_name = "FILE"
    )]
    pub previous_key_encryption_key_file: Option<PathBuf>,
    /// Which settings came from a flag and which from an environment
    /// variable, so that an error names what the user actually set.
    #[arg(skip)]
    pub sources: Sources,
}

impl ServeArgs {
    /// Records where each setting in `matches` (the matches these arguments
    /// were parsed from) came from.
    pub fn with_sources(mut self, matches: &clap::ArgMatches) -> Self {
        self.sources = Sources::from_matches(matches);
        self
    }
}

/// Where the settings of a [`ServeArgs`] came from: for each one given, a
/// flag or an environment variable, as clap saw it. Arguments built in code
/// have no record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources {
    /// By clap id (the field name); `None` when nothing was recorded.
    given: Option<std::collections::BTreeMap<String, ValueSource>>,
}

impl Sources {
    /// The sources of the settings present in `matches`.
    pub fn from_matches(matches: &clap::ArgMatches) -> Self {
        let given = matches
            .ids()
            .filter_map(|id| {
                let id = id.as_str();
                Some((id.to_owned(), matches.value_source(id)?))
            })
            .collect();
        Self { given: Some(given) }
    }

    /// Sources as given, by clap id (for tests).
    #[cfg(test)]
    fn of(given: &[(&str, ValueSource)]) -> Self {
        Self {
            given: Some(given.iter().map(|(k, v)| (k.to_string(), *v)).collect()),
        }
    }
}

/// The optional configuration file; keys are the flag names with underscores.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    #[serde(default)]
    api_keys: Vec<String>,
    access_token_lifetime: Option<String>,
    refresh_token_lifetime: Option<String>,
    refresh_grace_period: Option<String>,
    signing_algorithm: Option<String>,
    key_rotation_interval: Option<String>,
    issuer: Option<String>,
    max_payload_size: Option<FileSize>,
    sweep_interval: Option<String>,
    drain_timeout: Option<String>,
    log: Option<String>,
    log_format: Option<String>,
    #[serde(default)]
    claim_providers: std::collections::BTreeMap<String, String>,
    default_claim_provider: Option<String>,
    claim_provider_timeout: Option<String>,
    #[serde(default)]
    client_secrets: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    cors_origins: Vec<String>,
    max_bucket_size: Option<FileSize>,
    store_cache_size: Option<FileSize>,
    store_reserved_space: Option<FileSize>,
    log_archive_size: Option<FileSize>,
    max_message_size: Option<FileSize>,
    max_json_depth: Option<u64>,
    max_handles_per_call: Option<u64>,
    max_concurrent_requests: Option<u64>,
    max_concurrent_streams: Option<u64>,
    max_connections: Option<u64>,
    max_header_list_size: Option<FileSize>,
    request_timeout: Option<String>,
    idle_timeout: Option<String>,
    key_encryption_key_file: Option<PathBuf>,
    previous_key_encryption_key_file: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    token_cache_size: Option<u64>,
}

/// Limits on what callers may ask of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest decoded gRPC request, bytes.
    pub max_message_bytes: usize,
    /// Deepest JSON nesting in payloads and buckets.
    pub max_json_depth: usize,
    /// Most handles per RevokeMultipleSessions call.
    pub max_handles_per_call: usize,
    /// Calls served at once.
    pub max_concurrent_requests: usize,
    /// HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Connections at once.
    pub max_connections: usize,
    /// Largest HTTP/2 header list, bytes.
    pub max_header_list_bytes: u32,
    /// Longest a call may run.
    pub request_timeout: Duration,
    /// Longest a client may stay silent on a connection.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 4 * 1024 * 1024,
            max_json_depth: 32,
            max_handles_per_call: 1000,
            max_concurrent_requests: 1024,
            max_concurrent_streams: 256,
            max_connections: 10_000,
            max_header_list_bytes: 16 * 1024,
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(600),
        }
    }
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

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FileSize {
    Bytes(u64),
    Text(String),
}

/// A configuration error naming the setting at fault, as the user set it:
/// its flag, its environment variable or its key in the configuration file.
#[derive(Debug)]
pub struct ConfigError {
    /// The flag name of the setting (without `--`).
    pub setting: &'static str,
    /// What is wrong with it.
    pub message: String,
    /// Where the value at fault came from.
    pub origin: Origin,
}

/// Where the value of a setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Not worked out (the error was made outside [`Config::resolve`]).
    Unknown,
    /// A flag on the command line, such as `--access-token-lifetime`.
    Flag(String),
    /// An environment variable, such as `SESSIOND_ACCESS_TOKEN_LIFETIME`.
    Env(String),
    /// A key of the configuration file.
    File {
        /// The key, such as `access_token_lifetime`.
        key: String,
        /// The file.
        path: PathBuf,
    },
    /// Nowhere: the setting is at its default (or was set in code), and is
    /// named by its flag and environment variable.
    Unset {
        /// The flag.
        flag: String,
        /// Its environment twin.
        env: Option<String>,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid setting ")?;
        match &self.origin {
            Origin::Unknown => write!(f, "`{}`", self.setting)?,
            Origin::Flag(name) | Origin::Env(name) => f.write_str(name)?,
            Origin::File { key, path } => write!(f, "{key} in {}", path.display())?,
            Origin::Unset { flag, env: None } => f.write_str(flag)?,
            Origin::Unset {
                flag,
                env: Some(env),
            } => write!(f, "{flag} ({env})")?,
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

fn bad(setting: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        message: message.into(),
        origin: Origin::Unknown,
    }
}

/// Settings whose value may also be given directly in an environment
/// variable instead of through the file their flag names: (setting, flag
/// of the file, variable).
const TEXT_IN_ENV: [(&str, &str, &str); 2] = [
    ("key-encryption-key", "key-encryption-key-file", KEK_ENV),
    (
        "previous-key-encryption-key",
        "previous-key-encryption-key-file",
        PREVIOUS_KEK_ENV,
    ),
];

/// The configuration file as read: its path and the keys it sets.
struct FileKeys<'a> {
    path: &'a Path,
    keys: std::collections::BTreeSet<String>,
}

impl ConfigError {
    /// Works out where the value at fault came from: the command line or
    /// the environment (as `sources` recorded them), else the file, else
    /// nowhere. A setting is found by its flag; its file key is its clap
    /// id, which [`FileConfig`] shares.
    fn locate(mut self, sources: &Sources, file: Option<&FileKeys<'_>>) -> Self {
        let alias = TEXT_IN_ENV.iter().find(|(s, _, _)| *s == self.setting);
        let flag = alias.map_or(self.setting, |(_, flag, _)| flag);
        let command = ServeArgs::augment_args(clap::Command::new("sessiond"));
        let Some(arg) = command.get_arguments().find(|a| a.get_long() == Some(flag)) else {
            return self;
        };
        let id = arg.get_id().as_str();
        let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
        let in_file = file.filter(|f| f.keys.contains(id));
        self.origin = match (sources.given.as_ref().map(|g| g.get(id)), in_file) {
            (Some(Some(ValueSource::CommandLine)), _) => Origin::Flag(format!("--{flag}")),
            (Some(Some(ValueSource::EnvVariable)), _) if env.is_some() => {
                Origin::Env(env.expect("checked"))
            }
            // Not given on the command line (or built in code): the file's
            // value is the one in force, if it has one.
            (_, Some(file)) => Origin::File {
                key: id.to_owned(),
                path: file.path.to_owned(),
            },
            _ => match alias {
                Some((_, _, variable)) if std::env::var_os(variable).is_some() => {
                    Origin::Env((*variable).to_owned())
                }
                _ => Origin::Unset {
                    flag: format!("--{flag}"),
                    env,
                },
            },
        };
        self
    }
}

/// Default bytes of the embedded store's page cache.
pub const DEFAULT_STORE_CACHE_BYTES: u64 = 40 * 1024 * 1024;

/// The validated configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Directory of the embedded store.
    pub data_dir: PathBuf,
    /// Accepted `x-api-key` values; empty means loopback-only, no key needed.
    pub api_keys: Vec<ApiKey>,
    /// Access token lifetime.
    pub access_token_lifetime: Duration,
    /// Refresh token lifetime (sliding).
    pub refresh_token_lifetime: Duration,
    /// Window in which a rotated-out refresh token may rotate again.
    pub refresh_grace_period: Duration,
    /// Algorithm of newly generated signing keys.
    pub signing_algorithm: SigningAlgorithm,
    /// Rotating key lifetime as a signer.
    pub key_rotation_interval: Duration,
    /// Issuer URL; `None` means `http://<bound address>`.
    pub issuer: Option<String>,
    /// Largest JSON payload accepted, in bytes.
    pub max_payload_bytes: usize,
    /// Interval of the expired-session sweeper.
    pub sweep_interval: Duration,
    /// Limit on draining in-flight requests at shutdown.
    pub drain_timeout: Duration,
    /// Log filter.
    pub log: String,
    /// Log line format.
    pub log_format: LogFormat,
    /// ClaimProvider addresses by claim key.
    pub claim_providers: Vec<(String, String)>,
    /// ClaimProvider for other claim keys.
    pub default_claim_provider: Option<String>,
    /// Deadline of a ClaimProvider call.
    pub claim_provider_timeout: Duration,
    /// Client secrets by tenant, for private buckets.
    pub client_secrets: Vec<(String, Secret)>,
    /// Browser origins allowed by CORS.
    pub cors_origins: Vec<String>,
    /// Largest bucket, bytes of JSON.
    pub max_bucket_bytes: usize,
    /// Bytes of the embedded store's page cache.
    pub store_cache_bytes: u64,
    /// Free bytes of the store's disk under which writes are refused.
    pub store_reserved_bytes: u64,
    /// Bytes of flushed log segments the store keeps (0: none).
    pub log_archive_bytes: u64,
    /// Limits on calls and connections.
    pub limits: Limits,
    /// The key-encryption key (its text), when signing keys are sealed.
    pub key_encryption_key: Option<Secret>,
    /// The key-encryption key being replaced (its text): what it sealed is
    /// sealed again under `key_encryption_key`.
    pub previous_key_encryption_key: Option<Secret>,
    /// TLS, when configured.
    pub tls: Option<crate::tls::TlsFiles>,
    /// Verified access tokens remembered.
    pub token_cache_size: usize,
}

/// The environment variable that may hold the key-encryption key itself.
pub const KEK_ENV: &str = "SESSIOND_KEY_ENCRYPTION_KEY";
/// The environment variable that may hold the previous key-encryption key.
pub const PREVIOUS_KEK_ENV: &str = "SESSIOND_PREVIOUS_KEY_ENCRYPTION_KEY";

/// Bounds on the refresh grace period (SuperTokens allows 0 to 300 s).
pub const MAX_REFRESH_GRACE: Duration = Duration::from_secs(300);

impl Config {
    /// The defaults, with the store in `data_dir`.
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            data_dir: data_dir.into(),
            api_keys: Vec::new(),
            access_token_lifetime: Duration::from_secs(3600),
            refresh_token_lifetime: Duration::from_secs(100 * 86_400),
            refresh_grace_period: Duration::from_secs(30),
            signing_algorithm: SigningAlgorithm::ES256,
            key_rotation_interval: Duration::from_secs(168 * 3600),
            issuer: None,
            max_payload_bytes: 16 * 1024,
            sweep_interval: Duration::from_secs(600),
            drain_timeout: Duration::from_secs(10),
            log: "info".to_owned(),
            log_format: LogFormat::Text,
            claim_providers: Vec::new(),
            default_claim_provider: None,
            claim_provider_timeout: Duration::from_secs(2),
            client_secrets: Vec::new(),
            cors_origins: Vec::new(),
            max_bucket_bytes: 64 * 1024,
            store_cache_bytes: DEFAULT_STORE_CACHE_BYTES,
            store_reserved_bytes: 64 << 20,
            log_archive_bytes: 1 << 30,
            limits: Limits::default(),
            key_encryption_key: None,
            previous_key_encryption_key: None,
            tls: None,
            token_cache_size: 10_000,
        }
    }

    /// Resolves flags and environment (in `args`) over the file named by
    /// `args.config`, over the defaults, and validates the result. An error
    /// names the setting as the user set it (see [`Origin`]).
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
            args.claim_providers
                .iter()
                .map(|p| {
                    p.split_once('=')
                        .map(|(k, u)| (k.trim().to_owned(), u.trim().to_owned()))
                        .ok_or_else(|| bad("claim-provider", format!("`{p}` is not KEY=URL")))
                })
                .collect::<Result<_, _>>()?
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
        c.tls = match (tls_cert, tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::TlsFiles {
                cert,
                key,
                client_ca: tls_client_ca,
            }),
            (None, None) if tls_client_ca.is_none() => None,
            (None, None) => return Err(bad("tls-client-ca", "needs --tls-cert and --tls-key")),
            (Some(_), None) => return Err(bad("tls-key", "--tls-cert needs --tls-key")),
            (None, Some(_)) => return Err(bad("tls-cert", "--tls-key needs --tls-cert")),
        };
        c.key_encryption_key = read_kek(
            "key-encryption-key-file",
            args.key_encryption_key_file
                .clone()
                .or(file.key_encryption_key_file),
            KEK_ENV,
        )?;
        c.previous_key_encryption_key = read_kek(
            "previous-key-encryption-key-file",
            args.previous_key_encryption_key_file
                .clone()
                .or(file.previous_key_encryption_key_file),
            PREVIOUS_KEK_ENV,
        )?;
        c.validate()?;
        Ok(c)
    }

    /// Checks the relations and ranges of every setting.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        for (i, key) in self.api_keys.iter().enumerate() {
            if self.api_keys[..i].iter().any(|k| k.name == key.name) {
                return Err(bad(
                    "api-key",
                    format!("two API keys are named `{}`", key.name),
                ));
            }
            if let KeySecret::Plain(secret) = &key.secret {
                let k = secret.expose();
                if k.len() < 16 || !k.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(bad(
                        "api-key",
                        format!(
                            "API key `{}` must be at least 16 visible ASCII characters",
                            key.name
                        ),
                    ));
                }
            }
        }
        if self.api_keys.is_empty() && !self.listen.ip().is_loopback() {
            return Err(bad(
                "api-key",
                format!(
                    "no API key is configured, so sessiond listens only on loopback addresses; \
                     set --api-key (SESSIOND_API_KEYS) to listen on {}",
                    self.listen
                ),
            ));
        }
        let secs = Duration::from_secs;
        if self.access_token_lifetime < secs(1) {
            return Err(bad("access-token-lifetime", "must be at least 1s"));
        }
        if self.refresh_token_lifetime < secs(60) {
            return Err(bad("refresh-token-lifetime", "must be at least 1m"));
        }
        if self.refresh_token_lifetime > secs(10 * 365 * 86_400) {
            return Err(bad("refresh-token-lifetime", "must be at most 3650d"));
        }
        if self.access_token_lifetime > self.refresh_token_lifetime {
            return Err(bad(
                "access-token-lifetime",
                "must not be longer than the refresh token lifetime",
            ));
        }
        if self.refresh_grace_period > MAX_REFRESH_GRACE {
            return Err(bad("refresh-grace-period", "must be between 0s and 300s"));
        }
        if self.key_rotation_interval < secs(3600)
            || self.key_rotation_interval > secs(365 * 86_400)
        {
            return Err(bad("key-rotation-interval", "must be between 1h and 365d"));
        }
        if self.issuer.is_none() && !self.listen.ip().is_loopback() {
            return Err(bad(
                "issuer",
                format!(
                    "set --issuer (SESSIOND_ISSUER) to the URL verifiers reach this server at; \
                     http://{} is not one when listening on {}",
                    self.listen,
                    self.listen.ip()
                ),
            ));
        }
        if let Some(issuer) = &mut self.issuer {
            let trimmed = issuer.trim().trim_end_matches('/').to_owned();
            let rest = trimmed
                .strip_prefix("https://")
                .or_else(|| trimmed.strip_prefix("http://"));
            let ok = rest.is_some_and(|r| {
                !r.is_empty()
                    && !r.contains(['?', '#'])
                    && !r.chars().any(|c| c.is_whitespace() || c.is_control())
            });
            if !ok {
                return Err(bad(
                    "issuer",
                    "must be an http:// or https:// URL without query or fragment",
                ));
            }
            *issuer = trimmed;
        }
        if !(1024..=1024 * 1024).contains(&self.max_payload_bytes) {
            return Err(bad("max-payload-size", "must be between 1KiB and 1MiB"));
        }
        if self.sweep_interval < secs(1) {
            return Err(bad("sweep-interval", "must be at least 1s"));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(bad("data-dir", "must not be empty"));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log).map_err(|e| bad("log", e.to_string()))?;
        for (key, url) in &self.claim_providers {
            if key.is_empty() {
                return Err(bad("claim-provider", "the claim key before `=` is empty"));
            }
            check_provider_url("claim-provider", url)?;
        }
        if let Some(url) = &self.default_claim_provider {
            check_provider_url("default-claim-provider", url)?;
        }
        if self.claim_provider_timeout < Duration::from_millis(10)
            || self.claim_provider_timeout > secs(60)
        {
            return Err(bad(
                "claim-provider-timeout",
                "must be between 10ms and 60s",
            ));
        }
        for (tenant, secret) in &self.client_secrets {
            if tenant.is_empty() || crate::input::tenant_id("tenant", tenant).is_err() {
                return Err(bad(
                    "client-secret",
                    "the tenant before `=` must be letters, digits, '-' or '_'",
                ));
            }
            let s = secret.expose();
            if s.len() < 16 || !s.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(bad(
                    "client-secret",
                    format!(
                        "the secret of tenant `{tenant}` must be at least 16 visible ASCII characters"
                    ),
                ));
            }
        }
        for origin in &mut self.cors_origins {
            let o = origin.trim().trim_end_matches('/').to_owned();
            let rest = o
                .strip_prefix("https://")
                .or_else(|| o.strip_prefix("http://"));
            let ok = o == "*"
                || rest.is_some_and(|r| {
                    !r.is_empty()
                        && !r.contains(['/', '?', '#'])
                        && http::HeaderValue::from_str(&o).is_ok()
                });
            if !ok {
                return Err(bad(
                    "cors-origin",
                    format!(
                        "`{o}` is not an origin like https://app.example.com (scheme, host, optional port)"
                    ),
                ));
            }
            *origin = o;
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.max_bucket_bytes) {
            return Err(bad("max-bucket-size", "must be between 1KiB and 16MiB"));
        }
        if !(1 << 20..=1 << 40).contains(&self.store_cache_bytes) {
            return Err(bad("store-cache-size", "must be between 1MiB and 1TiB"));
        }
        if self.store_reserved_bytes > 1 << 40 {
            return Err(bad(
                "store-reserved-space",
                "must be at most 1TiB (0 disables it)",
            ));
        }
        if self.log_archive_bytes > 1 << 40 {
            return Err(bad(
                "log-archive-size",
                "must be at most 1TiB (0 disables it)",
            ));
        }
        let l = &self.limits;
        let largest_json = self.max_bucket_bytes.max(self.max_payload_bytes);
        if l.max_message_bytes < largest_json + 4096 || l.max_message_bytes > 64 * 1024 * 1024 {
            return Err(bad(
                "max-message-size",
                "must be at most 64MiB and leave room for the largest payload or bucket (plus 4KiB)",
            ));
        }
        if !(2..=128).contains(&l.max_json_depth) {
            return Err(bad("max-json-depth", "must be between 2 and 128"));
        }
        if !(1..=100_000).contains(&l.max_handles_per_call) {
            return Err(bad("max-handles-per-call", "must be between 1 and 100000"));
        }
        if !(1..=1_000_000).contains(&l.max_concurrent_requests) {
            return Err(bad(
                "max-concurrent-requests",
                "must be between 1 and 1000000",
            ));
        }
        if !(1..=100_000).contains(&l.max_concurrent_streams) {
            return Err(bad(
                "max-concurrent-streams",
                "must be between 1 and 100000",
            ));
        }
        if self.token_cache_size > 10_000_000 {
            return Err(bad("token-cache-size", "must be at most 10000000"));
        }
        if !(1..=1_000_000).contains(&l.max_connections) {
            return Err(bad("max-connections", "must be between 1 and 1000000"));
        }
        if !(1024..=1024 * 1024).contains(&l.max_header_list_bytes) {
            return Err(bad("max-header-list-size", "must be between 1KiB and 1MiB"));
        }
        if l.request_timeout < Duration::from_millis(100) {
            return Err(bad("request-timeout", "must be at least 100ms"));
        }
        if l.idle_timeout < secs(1) {
            return Err(bad("idle-timeout", "must be at least 1s"));
        }
        if let Some(tls) = &self.tls {
            crate::tls::server_config(tls).map_err(|e| bad(e.setting, e.message))?;
        }
        if let Some(kek) = &self.key_encryption_key {
            crate::token::kek::Kek::from_text(kek.expose())
                .map_err(|m| bad("key-encryption-key", m))?;
        }
        if let Some(previous) = &self.previous_key_encryption_key {
            crate::token::kek::Kek::from_text(previous.expose())
                .map_err(|m| bad("previous-key-encryption-key", m))?;
            if self.key_encryption_key.is_none() {
                return Err(bad(
                    "previous-key-encryption-key",
                    "needs the key-encryption key that replaces it (--key-encryption-key-file)",
                ));
            }
        }
        Ok(())
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

fn check_provider_url(setting: &'static str, url: &str) -> Result<(), ConfigError> {
    let rest = url.strip_prefix("http://").unwrap_or("");
    if rest.is_empty() || rest.contains(char::is_whitespace) {
        return Err(bad(
            setting,
            format!(
                "`{url}` is not an http:// address (TLS to claim providers is not supported yet)"
            ),
        ));
    }
    Ok(())
}

/// The configuration file's settings, and the keys it sets.
fn read_file(path: &Path) -> Result<(FileConfig, std::collections::BTreeSet<String>), ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| bad("config", format!("cannot read {}: {e}", path.display())))?;
    let invalid =
        |e: toml::de::Error| bad("config", format!("{}: {}", path.display(), e.message()));
    let file = toml::from_str(&text).map_err(invalid)?;
    let keys = text.parse::<toml::Table>().map_err(invalid)?.into_iter();
    Ok((file, keys.map(|(key, _)| key).collect()))
}

/// Parses durations written like `2s`, `15m`, `1h`, `100d`, `500ms` or `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    let err = || format!("`{text}` is not a duration like 30s, 15m, 1h or 100d");
    if s.is_empty() {
        return Err(err());
    }
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(err());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let ms_per = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(err()),
        };
        rest = &rest[unit_len..];
        total = n
            .checked_mul(ms_per)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(err)?;
    }
    Ok(Duration::from_millis(total))
}

/// Parses sizes written as bytes (`16384`) or with a `KiB`/`MiB` suffix.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let err = || format!("`{text}` is not a size like 16384, 16KiB or 1MiB");
    let (num, mult) = if let Some(n) = s.strip_suffix("KiB") {
        (n, 1024)
    } else if let Some(n) = s.strip_suffix("MiB") {
        (n, 1024 * 1024)
    } else {
        (s, 1)
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_every_unit() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("100d"), Ok(Duration::from_secs(8_640_000)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["", "10", "h", "1x", "1.5h", "-1s", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("16384"), Ok(16384));
        assert_eq!(parse_size("16KiB"), Ok(16384));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert!(parse_size("lots").is_err());
    }

    fn resolve(f: impl FnOnce(&mut ServeArgs)) -> Result<Config, ConfigError> {
        let mut args = ServeArgs::default();
        f(&mut args);
        Config::resolve(&args)
    }

    #[test]
    fn defaults_resolve() {
        let c = resolve(|_| {}).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(c.access_token_lifetime, Duration::from_secs(3600));
        assert_eq!(c.refresh_token_lifetime, Duration::from_secs(100 * 86400));
        assert_eq!(c.refresh_grace_period, Duration::from_secs(30));
    }

    #[test]
    fn errors_name_the_setting() {
        let e = resolve(|a| a.access_token_lifetime = Some("soon".into())).unwrap_err();
        assert_eq!(e.setting, "access-token-lifetime");
        let e = resolve(|a| a.refresh_grace_period = Some("10m".into())).unwrap_err();
        assert_eq!(e.setting, "refresh-grace-period");
        let e = resolve(|a| a.signing_algorithm = Some("HS256".into())).unwrap_err();
        assert_eq!(e.setting, "signing-algorithm");
        let e = resolve(|a| a.listen = Some("0.0.0.0:50051".into())).unwrap_err();
        assert_eq!(e.setting, "api-key");
        let e = resolve(|a| a.issuer = Some("ftp://x".into())).unwrap_err();
        assert_eq!(e.setting, "issuer");
        let e = resolve(|a| a.api_keys = vec!["short".into()]).unwrap_err();
        assert_eq!(e.setting, "api-key");
        let e = resolve(|a| a.claim_providers = vec!["st-role".into()]).unwrap_err();
        assert_eq!(e.setting, "claim-provider");
        let e = resolve(|a| a.default_claim_provider = Some("https://x".into())).unwrap_err();
        assert_eq!(e.setting, "default-claim-provider");
        let e = resolve(|a| a.store_cache_size = Some("64KiB".into())).unwrap_err();
        assert_eq!(e.setting, "store-cache-size");
        let c = resolve(|a| a.store_cache_size = Some("256MiB".into())).unwrap();
        assert_eq!(c.store_cache_bytes, 256 << 20);
        assert_eq!(c.store_reserved_bytes, 64 << 20, "the default reserve");
        let c = resolve(|a| a.store_reserved_space = Some("0".into())).unwrap();
        assert_eq!(c.store_reserved_bytes, 0);
        let e = resolve(|a| a.store_reserved_space = Some("2TiB".into())).unwrap_err();
        assert_eq!(e.setting, "store-reserved-space");
        assert_eq!(c.log_archive_bytes, 1 << 30, "the default archive");
        let c = resolve(|a| a.log_archive_size = Some("0".into())).unwrap();
        assert_eq!(c.log_archive_bytes, 0);
    }

    /// Arguments parsed as the binary parses them, with their sources.
    fn parsed(argv: &[&str]) -> ServeArgs {
        use clap::{CommandFactory, FromArgMatches};
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let argv = std::iter::once("sessiond").chain(argv.iter().copied());
        let matches = Cli::command().try_get_matches_from(argv).unwrap();
        let cli = Cli::from_arg_matches(&matches).unwrap();
        cli.serve.with_sources(&matches)
    }

    #[test]
    fn errors_name_the_flag_the_variable_or_the_file_key_that_was_set() {
        let e = Config::resolve(&parsed(&["--access-token-lifetime", "15"])).unwrap_err();
        assert_eq!(e.origin, Origin::Flag("--access-token-lifetime".into()));
        assert_eq!(
            e.to_string(),
            "invalid setting --access-token-lifetime: `15` is not a duration like 30s, 15m, 1h or 100d"
        );

        let from_env = ServeArgs {
            access_token_lifetime: Some("15".into()),
            sources: Sources::of(&[("access_token_lifetime", ValueSource::EnvVariable)]),
            ..Default::default()
        };
        let e = Config::resolve(&from_env).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("invalid setting SESSIOND_ACCESS_TOKEN_LIFETIME: `15`"),
            "{e}"
        );
        assert!(!e.to_string().contains("access-token-lifetime"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessiond.toml");
        std::fs::write(&path, "access_token_lifetime = \"15\"\n").unwrap();
        let config = path.to_str().unwrap();
        let e = Config::resolve(&parsed(&["--config", config])).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "invalid setting access_token_lifetime in {config}: `15` is not a duration like 30s, 15m, 1h or 100d"
            )
        );
        // A flag wins over the file, and is what a bad value is blamed on.
        let e = Config::resolve(&parsed(&[
            "--config",
            config,
            "--access-token-lifetime",
            "0s",
        ]))
        .unwrap_err();
        assert_eq!(e.origin, Origin::Flag("--access-token-lifetime".into()));

        // Settings with another name on the command line than their field,
        // and lists from a variable.
        let e = Config::resolve(&parsed(&["--api-key", "short"])).unwrap_err();
        assert_eq!(e.origin, Origin::Flag("--api-key".into()));
        let keys_from_env = ServeArgs {
            api_keys: vec!["short".into()],
            sources: Sources::of(&[("api_keys", ValueSource::EnvVariable)]),
            ..Default::default()
        };
        let e = Config::resolve(&keys_from_env).unwrap_err();
        assert_eq!(e.origin, Origin::Env("SESSIOND_API_KEYS".into()));
        std::fs::write(&path, "[client_secrets]\nacme = \"short\"\n").unwrap();
        let e = Config::resolve(&parsed(&["--config", config])).unwrap_err();
        assert_eq!(e.setting, "client-secret");
        assert_eq!(
            e.origin,
            Origin::File {
                key: "client_secrets".into(),
                path: path.clone()
            }
        );

        // A setting nobody set, blamed for a conflict with one that was set:
        // named by its flag and its variable.
        std::fs::write(&path, "refresh_token_lifetime = \"30m\"\n").unwrap();
        let e = Config::resolve(&parsed(&["--config", config])).unwrap_err();
        assert!(
            e.to_string().starts_with(
                "invalid setting --access-token-lifetime (SESSIOND_ACCESS_TOKEN_LIFETIME): "
            ),
            "{e}"
        );

        // The file itself: named as --config was given.
        let missing = dir.path().join("none.toml");
        let e = Config::resolve(&parsed(&["--config", missing.to_str().unwrap()])).unwrap_err();
        assert_eq!(e.origin, Origin::Flag("--config".into()));

        // A key-encryption key read from the file a flag names.
        let kek = dir.path().join("kek");
        std::fs::write(&kek, "0102").unwrap();
        let e = Config::resolve(&parsed(&[
            "--key-encryption-key-file",
            kek.to_str().unwrap(),
        ]))
        .unwrap_err();
        assert_eq!(e.setting, "key-encryption-key");
        assert_eq!(e.origin, Origin::Flag("--key-encryption-key-file".into()));
    }

    #[test]
    fn a_previous_kek_needs_a_current_one_and_must_parse() {
        let dir = tempfile::tempdir().unwrap();
        let (key, short) = (dir.path().join("kek"), dir.path().join("short"));
        std::fs::write(&key, "01".repeat(32)).unwrap();
        std::fs::write(&short, "0102").unwrap();
        let e = resolve(|a| a.previous_key_encryption_key_file = Some(key.clone())).unwrap_err();
        assert_eq!(e.setting, "previous-key-encryption-key");
        assert!(e.to_string().contains("needs"), "{e}");
        let both = |previous: &PathBuf| {
            let previous = previous.clone();
            let key = key.clone();
            move |a: &mut ServeArgs| {
                a.key_encryption_key_file = Some(key);
                a.previous_key_encryption_key_file = Some(previous);
            }
        };
        let e = resolve(both(&short)).unwrap_err();
        assert_eq!(e.setting, "previous-key-encryption-key");
        let c = resolve(both(&key)).unwrap();
        assert!(c.key_encryption_key.is_some() && c.previous_key_encryption_key.is_some());
        let e = resolve(|a| a.previous_key_encryption_key_file = Some(dir.path().join("none")))
            .unwrap_err();
        assert_eq!(e.setting, "previous-key-encryption-key-file", "unreadable");
    }

    #[test]
    fn a_key_allows_a_public_listen_address() {
        let public = |a: &mut ServeArgs| {
            a.listen = Some("0.0.0.0:50051".into());
            a.api_keys = vec!["0123456789abcdef0123".into()];
        };
        let e = resolve(public).unwrap_err();
        assert_eq!(e.setting, "issuer", "a wildcard address is no issuer");
        let c = resolve(|a| {
            public(a);
            a.issuer = Some("https://auth.example.com/".into());
        })
        .unwrap();
        assert_eq!(c.issuer.as_deref(), Some("https://auth.example.com"));
        assert_eq!(c.api_keys.len(), 1);
        assert!(!format!("{c:?}").contains("0123456789abcdef0123"));
    }

    #[test]
    fn api_keys_with_names_scopes_and_hashes() {
        let plain = ApiKey::parse("0123456789abcdef0123", 0).unwrap();
        assert_eq!((plain.name.as_str(), plain.scope), ("key-1", Scope::Admin));
        let scoped = ApiKey::parse("sidecar:verify:0123456789abcdef0123", 1).unwrap();
        assert_eq!(
            (scoped.name.as_str(), scoped.scope),
            ("sidecar", Scope::Verify)
        );
        let hashed = ApiKey::parse(&format!("ci:backend:sha256:{}", "ab".repeat(32)), 2).unwrap();
        assert_eq!(hashed.secret, KeySecret::Sha256([0xab; 32]));
        // A colon in a plain key that does not name a scope is part of the key.
        let colons = ApiKey::parse("a:b:0123456789abcdef", 3).unwrap();
        assert_eq!(
            (colons.name.as_str(), colons.scope),
            ("key-4", Scope::Admin)
        );
        assert!(ApiKey::parse("x:admin:sha256:abc", 0).is_err());
        assert!(ApiKey::parse("x:admin:short", 0).is_err());
        let e = resolve(|a| {
            a.api_keys = vec![
                "k:admin:0123456789abcdef".into(),
                "k:verify:0123456789abcdeg".into(),
            ]
        })
        .unwrap_err();
        assert_eq!(e.setting, "api-key");
        assert!(e.message.contains("two API keys"), "{e}");
    }

    #[test]
    fn file_values_apply_under_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessiond.toml");
        std::fs::write(
            &path,
            "access_token_lifetime = \"15m\"\nrefresh_grace_period = \"5s\"\nmax_payload_size = 4096\n",
        )
        .unwrap();
        let c = resolve(|a| {
            a.config = Some(path.clone());
            a.refresh_grace_period = Some("10s".into());
        })
        .unwrap();
        assert_eq!(c.access_token_lifetime, Duration::from_secs(900));
        assert_eq!(c.refresh_grace_period, Duration::from_secs(10));
        assert_eq!(c.max_payload_bytes, 4096);

        std::fs::write(&path, "acess_token_lifetime = \"15m\"\n").unwrap();
        let e = resolve(|a| a.config = Some(path.clone())).unwrap_err();
        assert_eq!(e.setting, "config");
        assert!(e.message.contains("acess_token_lifetime"), "{e}");
    }
}
