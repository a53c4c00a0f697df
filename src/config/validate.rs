//! Validation: the ranges of settings and the relations between them,
//! checked on a [`Config`] whose values are parsed.
//!
//! This file must never read a file or the environment: what a setting
//! names is loaded by [`super::resolve`], after these checks pass.

use std::time::Duration;

use super::error::{ConfigError, bad};
use super::{Config, KeySecret, MAX_REFRESH_GRACE};
use crate::api::authz::IDENTITY_HEADERS;

impl Config {
    /// Checks the relations and ranges of every setting (what the TLS and
    /// key-encryption settings name is checked by loading it, in
    /// [`Config::resolve`]).
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
        let max = self.session_max_lifetime;
        if !max.is_zero() && (max < secs(60) || max > secs(10 * 365 * 86_400)) {
            return Err(bad(
                "session-max-lifetime",
                "must be 0s (no limit) or between 1m and 3650d",
            ));
        }
        let idle = self.session_idle_timeout;
        if !idle.is_zero() && (idle < secs(120) || idle > secs(10 * 365 * 86_400)) {
            return Err(bad(
                "session-idle-timeout",
                "must be 0s (off) or between 2m and 3650d (activity is recorded to the minute)",
            ));
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
        self.check_authz()?;
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
        Ok(())
    }
}

impl Config {
    /// The gateway checks' cookie name and claim headers.
    fn check_authz(&mut self) -> Result<(), ConfigError> {
        // RFC 6265: a cookie name is an HTTP token.
        let token = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        };
        if !token(&self.authz_cookie_name) {
            return Err(bad(
                "authz-cookie-name",
                format!("`{}` is not a cookie name", self.authz_cookie_name),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (claim, header) in &mut self.authz_claim_headers {
            if claim.is_empty() {
                return Err(bad("authz-claim-header", "the claim before `=` is empty"));
            }
            *header = header.to_ascii_lowercase();
            if !token(header) || http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                return Err(bad(
                    "authz-claim-header",
                    format!("`{header}` is not a header name"),
                ));
            }
            if IDENTITY_HEADERS.contains(&header.as_str()) {
                return Err(bad(
                    "authz-claim-header",
                    format!("`{header}` is set by every allowed check already"),
                ));
            }
            if !seen.insert(header.clone()) {
                return Err(bad(
                    "authz-claim-header",
                    format!("`{header}` is named twice"),
                ));
            }
        }
        Ok(())
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
