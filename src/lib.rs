//! sessiond: a gRPC session service with SuperTokens' session recipe,
//! backed by an embedded store, with tokens signed in-process.
//!
//! # Layout
//!
//! - [`config`]: flags, environment and file settings, validated into [`Config`].
//! - [`clock`]: time as a parameter ([`Clock`]), so tests move time instead of sleeping.
//! - [`ids`]: session handles and secure random bytes; [`input`]: checks on
//!   what callers hand in (identifiers, JSON limits, reserved claims).
//! - [`reload`]: values a configuration reload replaces while calls read them;
//!   [`secret`]: strings whose `Debug` never shows them.
//! - [`store`]: the [`store::SessionStore`] trait and its sled backend.
//! - [`token`]: signing keys and their rotation, access and refresh tokens.
//! - [`session`]: the session recipe rules.
//! - [`claims`]: claim values and declarative claim validators.
//! - [`jwt`]: application JWTs, JWKS and OpenID discovery.
//! - [`buckets`]: per-user public and private JSON buckets.
//! - [`backup`]: the backup file format, written online and restored offline.
//! - [`cli`]: the operator subcommands, clients of a running server.
//! - [`error`]: the domain error and the table of error reasons.
//! - [`api`]: gRPC services, caller authentication, protobuf conversions.
//! - [`text`]: wording shared by messages (counts in the right number).
//! - [`tls`]: TLS and mutual TLS on the port.
//! - [`http`]: plain HTTP routes on the same port (JWKS, discovery, metrics).
//! - [`metrics`]: Prometheus metrics; [`logging`]: the log subscriber and its cap.
//! - [`server`]: wiring and lifecycle ([`serve`]); [`connections`]: the
//!   cuttable connections behind the bounded drain.

pub mod api;
pub mod backup;
pub mod buckets;
pub mod claims;
pub mod cli;
pub mod clock;
pub mod config;
pub mod connections;
pub mod error;
pub mod http;
pub mod ids;
pub mod input;
pub mod jwt;
pub mod logging;
pub mod metrics;
pub mod reload;
pub mod secret;
pub mod server;
pub mod session;
pub mod store;
pub mod text;
pub mod tls;
pub mod token;

/// Generated protobuf types and gRPC stubs of `sessiond.v1`.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("sessiond.v1");

    /// The encoded descriptor set of `proto/`, for reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/sessiond_descriptor.bin"));
}

pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use config::Config;
pub use server::{ServeError, serve, serve_with_reload};
