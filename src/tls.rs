//! TLS on the single port, and optional mutual TLS.
//!
//! sessiond terminates TLS itself (rustls with aws-lc-rs) in front of the
//! HTTP server, offering ALPN `h2` and `http/1.1`, so gRPC, gRPC-Web and the
//! plain HTTP routes all work over it. With a client CA configured, every
//! client must present a certificate issued by it: the handshake fails
//! otherwise, before any request is read. Certificates and keys are read
//! from PEM files; a file that cannot be used stops the server before it
//! listens, with the setting named, and at a SIGHUP reload refuses the
//! reload (the certificate in use stays).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};

/// Where the server's certificate, key and (for mTLS) client CA are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates that client certificates must chain to; when set,
    /// every client must present one.
    pub client_ca: Option<PathBuf>,
}

/// A TLS problem, with the setting it concerns.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct TlsError {
    /// The flag name of the setting.
    pub setting: &'static str,
    /// What is wrong.
    pub message: String,
}

fn err(setting: &'static str, message: impl Into<String>) -> TlsError {
    TlsError {
        setting,
        message: message.into(),
    }
}

fn certificates(
    setting: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(setting, format!("cannot read {}: {e}", path.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            err(
                setting,
                format!("{} is not PEM certificates: {e}", path.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(err(
            setting,
            format!("{} holds no certificate", path.display()),
        ));
    }
    Ok(certs)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// TLS as configured: where its files are, and the rustls configuration
/// loaded from them. The files are read once, by [`ServerTls::load`], when
/// the configuration is resolved (at start and at each reload); the server
/// serves what was loaded and never reads them again.
#[derive(Debug, Clone)]
pub struct ServerTls {
    files: TlsFiles,
    config: Arc<ServerConfig>,
}

impl ServerTls {
    /// Reads the certificate, key and client CA, and builds the rustls
    /// configuration from them; an error names the setting whose file is
    /// unusable.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let config = server_config(&files)?;
        Ok(Self { files, config })
    }

    /// Where the certificate, key and client CA were read from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// An acceptor handing connections the loaded certificate.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
    }
}

/// Builds the rustls configuration from the files.
fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certificates("tls-cert", &files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        err(
            "tls-key",
            format!("{} holds no usable private key: {e}", files.key.display()),
        )
    })?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| err("tls-cert", e.to_string()))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for ca in certificates("tls-client-ca", path)? {
                roots
                    .add(ca)
                    .map_err(|e| err("tls-client-ca", format!("{}: {e}", path.display())))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| err("tls-client-ca", format!("{}: {e}", path.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        err(
            "tls-key",
            format!("the key does not fit the certificate: {e}"),
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
