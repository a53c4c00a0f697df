//! TLS on the single port, mutual TLS, and unusable certificate files, with
//! certificates made by the test (rcgen).

use std::path::Path;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use sessiond::config::{Config, ServeArgs};
use sessiond::pb;
use sessiond::pb::session_service_client::SessionServiceClient;
use sessiond::tls::{ServerTls, TlsFiles};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// A CA, a server certificate for localhost, a client certificate from the
/// CA and one from nobody, written as PEM files.
struct Pki {
    dir: tempfile::TempDir,
    ca: String,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "sessiond test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let issue = |name: &str, sans: Vec<String>, issuer: &CertifiedIssuer<'_, KeyPair>| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(sans).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            let cert = params.signed_by(&key, issuer).unwrap();
            std::fs::write(dir.path().join(format!("{name}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.path().join(format!("{name}.key")), key.serialize_pem()).unwrap();
        };
        issue("server", vec!["localhost".into(), "127.0.0.1".into()], &ca);
        issue("client", vec!["backend.example".into()], &ca);
        let mut rogue_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        rogue_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let rogue_ca =
            CertifiedIssuer::self_signed(rogue_params, KeyPair::generate().unwrap()).unwrap();
        issue("rogue", vec!["backend.example".into()], &rogue_ca);
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Self { ca: ca.pem(), dir }
    }

    fn path(&self, file: &str) -> std::path::PathBuf {
        self.dir.path().join(file)
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.path(file)).unwrap()
    }

    fn files(&self, mutual: bool) -> TlsFiles {
        TlsFiles {
            cert: self.path("server.pem"),
            key: self.path("server.key"),
            client_ca: mutual.then(|| self.path("ca.pem")),
        }
    }

    /// The files, loaded as resolving a configuration loads them.
    fn tls(&self, mutual: bool) -> ServerTls {
        ServerTls::load(self.files(mutual)).unwrap()
    }

    fn client(&self, identity: Option<&str>) -> ClientTlsConfig {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .domain_name("localhost");
        match identity {
            Some(name) => tls.identity(Identity::from_pem(
                self.read(&format!("{name}.pem")),
                self.read(&format!("{name}.key")),
            )),
            None => tls,
        }
    }
}

async fn start(pki: &Pki, mutual: bool, data: &Path) -> std::net::SocketAddr {
    let mut config = Config::with_data_dir(data);
    config.tls = Some(pki.tls(mutual));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(sessiond::serve(
        listener,
        config,
        sessiond::ManualClock::starting_now(),
        std::future::pending(),
    ));
    addr
}

async fn call(
    addr: std::net::SocketAddr,
    tls: Option<ClientTlsConfig>,
) -> Result<pb::CreateNewSessionResponse, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint =
        Channel::from_shared(format!("{scheme}://localhost:{}", addr.port())).unwrap();
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).unwrap();
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let reply = SessionServiceClient::new(channel)
        .create_new_session(pb::CreateNewSessionRequest {
            user_id: "tls-user".into(),
            ..Default::default()
        })
        .await
        .map_err(|s| format!("call: {s:?}"))?;
    Ok(reply.into_inner())
}

#[tokio::test]
async fn grpc_and_http_are_served_over_tls() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let addr = start(&pki, false, data.path()).await;
    let created = call(addr, Some(pki.client(None)))
        .await
        .expect("gRPC over TLS");
    assert_eq!(created.session.unwrap().user_id, "tls-user");
    // The issuer defaults to https when TLS is on.
    assert!(
        crate::helpers::claims(&created.access_token.unwrap().token)["iss"]
            .as_str()
            .unwrap()
            .starts_with("https://")
    );

    // Plain HTTP/1.1 over TLS (ALPN http/1.1): the JWKS route.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from(rcgen_der(&pki.ca)))
        .unwrap();
    let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    tls.write_all(
        b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"keys\""), "{text}");

    // A plaintext client gets nowhere.
    assert!(call(addr, None).await.is_err());
}

fn rcgen_der(pem: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_certificate_from_the_ca() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let addr = start(&pki, true, data.path()).await;
    call(addr, Some(pki.client(Some("client"))))
        .await
        .expect("a client certificate from the CA");
    let none = call(addr, Some(pki.client(None)))
        .await
        .expect_err("no client certificate");
    assert!(none.contains("connect") || none.contains("call"), "{none}");
    call(addr, Some(pki.client(Some("rogue"))))
        .await
        .expect_err("a certificate from another CA");
    // The server is still there for good clients.
    call(addr, Some(pki.client(Some("client")))).await.unwrap();
}

#[test]
fn unusable_tls_files_stop_the_server_naming_the_setting() {
    let pki = Pki::new();
    let garbage = pki.path("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let resolve = |cert: &Path, key: &Path, ca: Option<&Path>| {
        let args = ServeArgs {
            data_dir: Some(pki.path("data")),
            tls_cert: Some(cert.to_owned()),
            tls_key: Some(key.to_owned()),
            tls_client_ca: ca.map(Path::to_owned),
            ..Default::default()
        };
        Config::resolve(&args)
            .map(|_| ())
            .map_err(|e| (e.setting, e.message))
    };
    let (server_pem, server_key, client_key) = (
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("client.key"),
    );
    assert!(resolve(&server_pem, &server_key, Some(&pki.path("ca.pem"))).is_ok());
    assert_eq!(
        resolve(&garbage, &server_key, None).unwrap_err().0,
        "tls-cert"
    );
    assert_eq!(
        resolve(&pki.path("missing.pem"), &server_key, None)
            .unwrap_err()
            .0,
        "tls-cert"
    );
    assert_eq!(
        resolve(&server_pem, &garbage, None).unwrap_err().0,
        "tls-key"
    );
    let (setting, message) = resolve(&server_pem, &client_key, None).unwrap_err();
    assert_eq!(setting, "tls-key", "{message}");
    assert_eq!(
        resolve(&server_pem, &server_key, Some(&garbage))
            .unwrap_err()
            .0,
        "tls-client-ca"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_command_speaks_mutual_tls() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let addr = start(&pki, true, data.path()).await;
    let base = |extra: &[&str]| {
        let mut args: Vec<String> = [
            "health",
            "--addr",
            &format!("localhost:{}", addr.port()),
            "--timeout",
            "5s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let ca = pki.path("ca.pem");
    let (cert, key) = (pki.path("client.pem"), pki.path("client.key"));
    let (code, out, err) = crate::cli::sessiond(base(&[
        "--tls-ca",
        ca.to_str().unwrap(),
        "--tls-client-cert",
        cert.to_str().unwrap(),
        "--tls-client-key",
        key.to_str().unwrap(),
    ]))
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "SERVING");
    let (code, _, err) = crate::cli::sessiond(base(&["--tls-ca", ca.to_str().unwrap()])).await;
    assert_ne!(code, 0, "no client certificate: {err}");
    let (code, _, _) = crate::cli::sessiond(base(&[])).await;
    assert_ne!(code, 0, "plaintext");
    // A server certificate the given CA did not issue: the handshake's
    // reason is printed, not only "transport error".
    let (code, _, err) = crate::cli::sessiond(base(&["--tls-ca", cert.to_str().unwrap()])).await;
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("transport error: invalid peer certificate: UnknownIssuer"),
        "{err}"
    );
}

#[tokio::test]
async fn a_reload_gives_new_connections_the_new_certificate_and_client_ca() {
    let (first, second) = (Pki::new(), Pki::new());
    let data = tempfile::tempdir().unwrap();
    let mut config = Config::with_data_dir(data.path());
    config.tls = Some(first.tls(true));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (reload, reloads) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(sessiond::serve_with_reload(
        listener,
        config.clone(),
        sessiond::ManualClock::starting_now(),
        std::future::pending(),
        Some(reloads),
    ));
    call(addr, Some(first.client(Some("client"))))
        .await
        .expect("the certificate and client CA it started with");
    assert!(
        call(addr, Some(second.client(Some("client"))))
            .await
            .is_err(),
        "a client of the second PKI is refused before the reload"
    );

    // As SIGHUP does after reading the configuration again.
    config.tls = Some(second.tls(true));
    reload.send(config).unwrap();
    let mut served = Err(String::new());
    for _ in 0..50 {
        served = call(addr, Some(second.client(Some("client")))).await;
        if served.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    served.expect("the new certificate and client CA after the reload");
    assert!(
        call(addr, Some(first.client(Some("client"))))
            .await
            .is_err(),
        "new connections no longer get the old certificate"
    );
    // Trusting the new server certificate is not enough: the client
    // certificate must come from the new client CA too.
    let crossed = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&second.ca))
        .domain_name("localhost")
        .identity(Identity::from_pem(
            first.read("client.pem"),
            first.read("client.key"),
        ));
    assert!(
        call(addr, Some(crossed)).await.is_err(),
        "a client certificate from the old CA is refused"
    );
}

#[tokio::test]
async fn the_server_serves_what_resolving_the_configuration_loaded() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let args = ServeArgs {
        data_dir: Some(data.path().to_owned()),
        tls_cert: Some(pki.path("server.pem")),
        tls_key: Some(pki.path("server.key")),
        ..Default::default()
    };
    let config = Config::resolve(&args).unwrap();
    // The files change after resolution (a renewal half-written): the
    // server does not read them again, it serves what was loaded.
    std::fs::write(pki.path("server.pem"), "").unwrap();
    std::fs::remove_file(pki.path("server.key")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(sessiond::serve(
        listener,
        config,
        sessiond::ManualClock::starting_now(),
        std::future::pending(),
    ));
    let created = call(addr, Some(pki.client(None)))
        .await
        .expect("served with the certificate loaded at resolution");
    assert_eq!(created.session.unwrap().user_id, "tls-user");
}
