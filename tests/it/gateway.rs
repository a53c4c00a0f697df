//! Gateways with real parts: Debian's nginx, started here on loopback with
//! the `auth_request` configuration of `deploy/nginx/` (the example site as
//! shipped, with only its addresses replaced), in front of a tiny upstream
//! that answers with the request it received, and a real sessiond behind
//! the check. What a client of nginx sees, and what reaches the upstream:
//! the identity of a valid Bearer or cookie token, never a client's forged
//! identity or claim headers, refusals with sessiond's reason, the
//! locations' policies, anti-CSRF on cookie POSTs.
//!
//! Without nginx each test says how to install it and returns; with
//! `SESSIOND_REQUIRE_NGINX=1` (set by CI) a missing nginx fails it.

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

use crate::helpers::*;

/// The variable that turns a skipped nginx test into a failed one.
const REQUIRE: &str = "SESSIOND_REQUIRE_NGINX";
/// What to run to get nginx on Debian and Ubuntu.
const INSTALL: &str = "sudo apt-get install -y nginx";
const VERIFY_KEY: &str = "gateway-verify-key-0123456789";
/// The example's placeholders and what each becomes here.
const SESSIOND_ADDR: &str = "server sessiond:50051;";
const APP_ADDR: &str = "server app:8080;";
const LISTEN: &str = "listen 80;";

/// nginx's binary, or `None` when it is not installed (after saying so;
/// panics instead when [`REQUIRE`] is set).
fn nginx_binary(test: &str) -> Option<PathBuf> {
    let found = ["/usr/sbin/nginx", "/usr/local/sbin/nginx"]
        .into_iter()
        .map(PathBuf::from)
        .chain(
            std::env::var_os("PATH")
                .iter()
                .flat_map(std::env::split_paths)
                .map(|dir| dir.join("nginx")),
        )
        .find(|p| p.is_file());
    if found.is_none() {
        if std::env::var(REQUIRE).is_ok_and(|v| v == "1") {
            panic!("{test}: nginx is required ({REQUIRE}=1) but is not installed");
        }
        eprintln!("{test}: skipped, nginx is not installed; to run it: {INSTALL}");
    }
    found
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

/// nginx, as a child process of the test (one process: `master_process
/// off`), killed when dropped.
struct Nginx {
    addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts `binary` with `deploy/nginx/example.conf` in front of
    /// `sessiond` and `app`; returns once it accepts connections.
    fn start(binary: &Path, sessiond: SocketAddr, app: SocketAddr) -> Self {
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx");
        let dir = tempfile::tempdir().unwrap();
        for snippet in ["sessiond-authz.conf", "sessiond-protect.conf"] {
            std::fs::copy(deploy.join(snippet), dir.path().join(snippet)).unwrap();
        }
        std::fs::write(
            dir.path().join("sessiond-api-key.conf"),
            format!("proxy_set_header X-Api-Key \"{VERIFY_KEY}\";\n"),
        )
        .unwrap();
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let mut site = std::fs::read_to_string(deploy.join("example.conf")).unwrap();
        for (from, to) in [
            (SESSIOND_ADDR, format!("server {sessiond};")),
            (APP_ADDR, format!("server {app};")),
            (LISTEN, format!("listen {addr};")),
        ] {
            assert_eq!(site.matches(from).count(), 1, "example.conf: `{from}`");
            site = site.replace(from, &to);
        }
        std::fs::write(dir.path().join("example.conf"), site).unwrap();
        let d = dir.path().display();
        // Everything nginx writes stays in `dir`. One process, so that one
        // kill stops it; as root it then keeps root's user (a master would
        // switch its workers to `nobody`, who cannot read `dir`).
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
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, main).unwrap();
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let child = Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut nginx = Self { addr, child, dir };
        nginx.wait_listening();
        nginx
    }

    /// Waits (10 s at most) until nginx accepts connections; panics with
    /// its log if it exits or does not.
    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::net::TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).is_ok() {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("nginx exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not listen on {} within 10 s:\n{}",
                self.addr,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A request to nginx, as a client sends it.
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
        ["stderr.log", "error.log"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Nginx {
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
    nginx: Nginx,
}

impl Gateway {
    async fn start(test: &str) -> Option<Self> {
        let binary = nginx_binary(test)?;
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
        let nginx = Nginx::start(&binary, server.addr, app);
        Some(Self { server, nginx })
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
        self.nginx.send(method, path, headers).await
    }

    async fn send_body(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Answer {
        self.nginx.send_body(method, path, headers, body).await
    }
}

#[tokio::test]
async fn nginx_lets_bearer_and_cookie_tokens_through_with_the_identity() {
    let Some(gw) = Gateway::start("nginx_lets_bearer_and_cookie_tokens_through").await else {
        return;
    };
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

#[tokio::test]
async fn nginx_never_passes_on_forged_identity_or_claim_headers() {
    let Some(gw) = Gateway::start("nginx_never_passes_on_forged_identity").await else {
        return;
    };
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
    assert_eq!(up.all("x-user-roles"), Vec::<&str>::new());

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

#[tokio::test]
async fn nginx_refuses_expired_revoked_and_unauthorised_sessions_with_the_reason() {
    let Some(gw) = Gateway::start("nginx_refuses_expired_revoked").await else {
        return;
    };
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

#[tokio::test]
async fn nginx_wants_the_anti_csrf_token_with_a_cookie_on_unsafe_methods() {
    let Some(gw) = Gateway::start("nginx_wants_the_anti_csrf_token").await else {
        return;
    };
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

#[tokio::test]
async fn nginx_refuses_when_sessiond_does_not_answer() {
    let Some(gw) = Gateway::start("nginx_refuses_when_sessiond_does_not_answer").await else {
        return;
    };
    let created = gw.session("alice", None).await;
    let bearer = format!("Bearer {}", access(&created));
    gw.send("GET", "/orders", &[("authorization", &bearer)])
        .await
        .upstream();
    let Gateway { server, nginx } = gw;
    server.stop().await;
    let answer = nginx
        .send("GET", "/orders", &[("authorization", &bearer)])
        .await;
    assert_eq!(answer.status, 503, "{answer:?}");
    assert_eq!(answer.json()["reason"], "", "no answer, no reason");
    assert!(!answer.body.contains("alice"));
}
