//! How the PostgreSQL store reaches its server: the `sslmode` of the
//! database URL, read here (the client library knows only `disable`,
//! `prefer` and `require`), and the rustls connector each mode needs.
//!
//! - `disable`: plain TCP;
//! - `prefer` (the default, as in libpq) and `require`: TLS (optional for
//!   `prefer`), the server's certificate not checked, as libpq does;
//! - `verify-full`: TLS, the certificate checked against the roots in
//!   `sslrootcert=<PEM file>` when given, else the system's bundle
//!   (`SSL_CERT_FILE`, or the usual Debian/Red Hat/Alpine paths), and the
//!   host name checked.
//!
//! This module must never put the URL (it may hold a password) into an
//! error or a log line: errors name the setting, never its value.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio_postgres::config::SslMode;

use super::super::StoreError;

/// The bundles of trusted roots tried, in order, when `verify-full` names
/// no `sslrootcert`.
const SYSTEM_ROOTS: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// What the URL's TLS settings ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Tls {
    /// `sslmode=disable`.
    Disable,
    /// `prefer` or `require`: encrypted, the certificate not checked.
    Unverified(SslMode),
    /// `verify-full`: checked against these roots (a PEM file), or the
    /// system's when `None`.
    VerifyFull(Option<String>),
}

/// Splits the TLS settings off `url`: returns the URL the client library
/// parses (without `sslmode` and `sslrootcert`) and what they ask for.
pub(super) fn split_url(url: &str) -> Result<(String, Tls), StoreError> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut kept = Vec::new();
    let (mut mode, mut root) = (None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslmode", value)) => mode = Some(value.to_owned()),
            Some(("sslrootcert", value)) => root = Some(value.to_owned()),
            _ => kept.push(pair),
        }
    }
    let tls = match mode.as_deref().unwrap_or("prefer") {
        "disable" => Tls::Disable,
        "prefer" => Tls::Unverified(SslMode::Prefer),
        "require" => Tls::Unverified(SslMode::Require),
        "verify-full" => Tls::VerifyFull(root),
        "verify-ca" => {
            return Err(StoreError::Backend(
                "the database URL's sslmode=verify-ca is not supported: use verify-full".into(),
            ));
        }
        _ => {
            return Err(StoreError::Backend(
                "the database URL's sslmode must be disable, prefer, require or verify-full".into(),
            ));
        }
    };
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, tls))
}

impl Tls {
    /// The client library's own mode for this setting.
    pub(super) fn ssl_mode(&self) -> SslMode {
        match self {
            Self::Disable => SslMode::Disable,
            Self::Unverified(mode) => *mode,
            Self::VerifyFull(_) => SslMode::Require,
        }
    }

    /// The rustls connector, or `None` for `disable`.
    pub(super) fn connector(
        &self,
    ) -> Result<Option<tokio_postgres_rustls::MakeRustlsConnect>, StoreError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| StoreError::Backend(format!("TLS for the database: {e}")))?;
        let config = match self {
            Self::Disable => return Ok(None),
            Self::Unverified(_) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
                .with_no_client_auth(),
            Self::VerifyFull(root) => builder
                .with_root_certificates(roots(root.as_deref())?)
                .with_no_client_auth(),
        };
        Ok(Some(tokio_postgres_rustls::MakeRustlsConnect::new(config)))
    }
}

/// The trusted roots: from `file`, else from the system's bundle.
fn roots(file: Option<&str>) -> Result<rustls::RootCertStore, StoreError> {
    let env = std::env::var("SSL_CERT_FILE").ok();
    let path = match file {
        Some(file) => file.to_owned(),
        None => env
            .into_iter()
            .chain(SYSTEM_ROOTS.iter().map(|p| p.to_string()))
            .find(|p| std::path::Path::new(p).is_file())
            .ok_or_else(|| {
                StoreError::Backend(
                    "sslmode=verify-full: no system bundle of trusted roots was found; \
                     name one with sslrootcert=<PEM file> in the database URL"
                        .into(),
                )
            })?,
    };
    let unreadable = |e: &dyn std::fmt::Display| {
        StoreError::Backend(format!("the database's trusted roots {path}: {e}"))
    };
    let mut store = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&path).map_err(|e| unreadable(&e))? {
        let cert = cert.map_err(|e| unreadable(&e))?;
        // A bundle may hold a certificate rustls cannot use; the others
        // still count.
        let _ = store.add(cert);
    }
    if store.is_empty() {
        return Err(unreadable(&"no usable certificate"));
    }
    Ok(store)
}

/// Accepts any certificate the server shows (libpq's `require`), while
/// still checking that the handshake is signed by it.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_is_read_and_removed_from_the_url() {
        let (url, tls) =
            split_url("postgres://u:pw@h/db?sslmode=disable&application_name=x").unwrap();
        assert_eq!(url, "postgres://u:pw@h/db?application_name=x");
        assert_eq!(tls, Tls::Disable);
        let (url, tls) =
            split_url("postgres://h/db?sslmode=verify-full&sslrootcert=/ca.pem").unwrap();
        assert_eq!(url, "postgres://h/db");
        assert_eq!(tls, Tls::VerifyFull(Some("/ca.pem".into())));
        assert_eq!(tls.ssl_mode(), SslMode::Require);
        assert_eq!(
            split_url("postgres://h/db").unwrap().1,
            Tls::Unverified(SslMode::Prefer),
            "prefer by default, as libpq"
        );
    }

    #[test]
    fn an_unknown_sslmode_is_refused_without_echoing_the_url() {
        for mode in ["verify-ca", "allow", "bogus"] {
            let url = format!("postgres://u:hunter2@h/db?sslmode={mode}");
            let e = split_url(&url).unwrap_err().to_string();
            assert!(e.contains("sslmode"), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn each_mode_builds_its_connector() {
        assert!(Tls::Disable.connector().unwrap().is_none());
        assert!(
            Tls::Unverified(SslMode::Require)
                .connector()
                .unwrap()
                .is_some()
        );
        let e = Tls::VerifyFull(Some("/nonexistent/ca.pem".into()))
            .connector()
            .err()
            .unwrap();
        assert!(e.to_string().contains("trusted roots"), "{e}");
    }
}
