//! Logging: `tracing` to stderr, text or JSON, with a filter that SIGHUP can
//! change, and a cap no filter can lift.
//!
//! The cap exists because dependencies log data at their most verbose
//! levels: sled's TRACE lines print stored values, which include signing
//! keys and the refresh-token MAC secret. Whatever the configured filter,
//! sled never logs below INFO. sessiond itself never logs a token, key or
//! secret at any level (a test runs the whole flow at TRACE and searches
//! the output).

use tracing::{Level, Metadata};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, filter, reload};

use crate::config::{Config, LogFormat};

/// Log target of the lines announcing readiness, reloads and the stop; kept
/// at INFO whatever the configured filter, because deployment scripts and
/// operators wait for them.
pub const LIFECYCLE_TARGET: &str = "sessiond::lifecycle";

/// Changes the log filter of a running process.
pub type FilterHandle = reload::Handle<EnvFilter, Registry>;

/// Targets whose verbose levels log stored data, and the most they may log.
const CAPPED: [(&str, Level); 1] = [("sled", Level::INFO)];

/// Whether an event may be logged at all, whatever the filter says.
pub fn never_leaks(meta: &Metadata<'_>) -> bool {
    CAPPED
        .iter()
        .all(|(target, most)| !(meta.target().starts_with(target) && meta.level() > most))
}

/// The configured filter, with the lifecycle lines always on.
pub fn filter(config: &Config) -> EnvFilter {
    EnvFilter::new(format!("{},{}=info", config.log, LIFECYCLE_TARGET))
}

/// Installs the process-wide subscriber; the handle changes the filter.
pub fn init(config: &Config) -> FilterHandle {
    let (filter_layer, handle) = reload::Layer::new(filter(config));
    let output = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let output = match config.log_format {
        LogFormat::Text => output
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
        LogFormat::Json => output
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter_layer)
        .with(output.with_filter(filter::filter_fn(never_leaks)))
        .init();
    handle
}
