//! sessiond: a gRPC session service with SuperTokens' session recipe,
//! backed by an embedded store, with tokens signed in-process.
//!
//! # Layout
//!
//! Modules in layers, lowest first. A module uses only modules of lower
//! layers, never its own layer's siblings or a higher one:
//! `tests/layers/check.py` (run by CI) reads every `crate::` path and
//! fails on any import that points up or across, on a file over 600 lines
//! that does not say why it must be one file, and on a protobuf field name
//! spoken below [`api`]. `docs/design.md` ("Architecture") draws the graph.
//!
//! 1. Ground floor: [`ids`] (session handles, secure random bytes),
//!    [`clock`] (time as a parameter, [`Clock`]: tests move time instead of
//!    sleeping, and `clippy.toml` bans reading the system clock elsewhere),
//!    [`text`] (wording shared by messages), [`reload`] (values a
//!    configuration reload replaces while calls read them), [`secret`]
//!    (strings whose `Debug` never shows them).
//! 2. [`input`]: checked input types (user id, tenant id, payloads within
//!    their JSON limits, the reserved claims); whoever builds one names the
//!    field it came from.
//! 3. [`store`]: the store traits (async, split by concern, held as
//!    [`store::Store`]), its sled backend
//!    (`store/sled/`: instance, directory, write-ahead log, record encoding)
//!    and an in-memory backend for tests of the layers above.
//! 4. [`metrics`]: Prometheus metrics every layer above reports to.
//! 5. [`token`] (signing keys and their rotation, sealing under the
//!    key-encryption key, access and refresh tokens, the verifier and its
//!    cache) and [`claims`] (claim values and declarative validators).
//! 6. [`error`]: the domain error wrapping the layers' errors, and the table
//!    of error reasons.
//! 7. [`buckets`]: per-user public and private JSON buckets.
//! 8. [`session`] (the session recipe's rules), [`jwt`] (application JWTs,
//!    JWKS, OpenID discovery), [`backup`] (the backup file format).
//! 9. [`pb`]: generated protobuf code, used by the edge only.
//! 10. [`api`]: gRPC services, Connect, caller authentication; converts
//!     each message into a checked domain request and each domain error
//!     into a status naming the field.
//! 11. The port: [`http`] (JWKS, discovery, metrics on the same port),
//!     [`tls`] (TLS and mutual TLS), [`connections`] (the cuttable
//!     connections behind the bounded drain).
//! 12. [`config`]: flags, environment and file settings, resolved into a
//!     [`Config`] holding parsed values (the loaded TLS files, the opened
//!     key-encryption key) that the server hands each layer.
//! 13. [`logging`]: the log subscriber and its cap.
//! 14. [`server`] (wiring and lifecycle, [`serve`]) and [`cli`] (the
//!     operator subcommands, clients of a running server).

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

    /// The encoded descriptor set of Envoy's external authorization API
    /// (`envoy.service.auth.v3.Authorization` and the messages it uses), for
    /// reflection: compiled from the wire-compatible subset of Envoy's protos
    /// in `proto/envoy/`. No Rust code is generated from it; the service's
    /// types are those of the `envoy-types` crate.
    ///
    /// It is not self-contained: it imports google.rpc.Status from
    /// `status.proto`, the file of `tonic_types::pb::FILE_DESCRIPTOR_SET`.
    /// Register it with the reflection builder's
    /// `register_encoded_file_descriptor_set` last, after
    /// [`FILE_DESCRIPTOR_SET`], `tonic_types::pb::FILE_DESCRIPTOR_SET` and
    /// `tonic_health::pb::FILE_DESCRIPTOR_SET`: reflection keeps the first
    /// copy of each file name, so the `google/protobuf/*.proto` files this set
    /// shares with the others are then served from theirs. A descriptor pool
    /// built from these sets must skip repeated file names the same way (as
    /// `api::connect::descriptors` does). `api::envoy_descriptor_tests` serves
    /// reflection in this order and resolves `Check` through it.
    pub const ENVOY_AUTHZ_FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/envoy_authz_descriptor.bin"));
}

pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use config::Config;
pub use server::{ServeError, serve, serve_with_reload};
