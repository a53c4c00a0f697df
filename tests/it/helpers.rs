//! Starting real servers on 127.0.0.1:0 and talking to them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prost_types::value::Kind;
use prost_types::{Struct, Value as PbValue};
use sessiond::config::Config;
use sessiond::pb;
use sessiond::pb::jwt_service_client::JwtServiceClient;
use sessiond::pb::session_service_client::SessionServiceClient;
use sessiond::pb::user_session_service_client::UserSessionServiceClient;
use sessiond::store::StoreError;
use sessiond::{ManualClock, ServeError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

pub const API_KEY: &str = "test-api-key-0123456789";

/// A server running in this process on a temporary data directory, with a
/// manual clock.
pub struct TestServer {
    pub addr: SocketAddr,
    pub clock: Arc<ManualClock>,
    pub config: Config,
    dir: Arc<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(configure: impl FnOnce(&mut Config)) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), configure).await
    }

    /// Starts a server on an existing data directory.
    pub async fn start_in(dir: tempfile::TempDir, configure: impl FnOnce(&mut Config)) -> Self {
        Self::start_on(dir, ManualClock::starting_now(), configure).await
    }

    /// Starts a server that reads `clock`, which other servers may share
    /// (replicas whose time a test moves together).
    pub async fn start_on(
        dir: tempfile::TempDir,
        clock: Arc<ManualClock>,
        configure: impl FnOnce(&mut Config),
    ) -> Self {
        let dir = Arc::new(dir);
        let mut config = Config::with_data_dir(dir.path());
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.drain_timeout = Duration::from_secs(5);
        configure(&mut config);
        Self::launch(dir, clock, config).await
    }

    async fn launch(dir: Arc<tempfile::TempDir>, clock: Arc<ManualClock>, config: Config) -> Self {
        // An in-process restart can find the data directory still locked for
        // a moment: sled lets go of its lock when its last handle is dropped,
        // which can trail `serve`'s return. (A process that exits has no
        // such window.) Any other failure to start fails the test, with the
        // reason `serve` gave.
        let mut attempts = 0;
        loop {
            let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(sessiond::serve(
                listener,
                config.clone(),
                clock.clone(),
                async {
                    let _ = stopped.await;
                },
            ));
            let mut server = Self {
                addr,
                clock: clock.clone(),
                config: config.clone(),
                dir: dir.clone(),
                stop: Some(stop),
                task: Some(task),
            };
            let Err(status) = server.wait_ready().await else {
                return server;
            };
            let task = server.task.take().expect("the task is there");
            match tokio::time::timeout(Duration::from_secs(5), task).await {
                Ok(Ok(Err(ServeError::Store(StoreError::Locked(_))))) if attempts < 100 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                outcome => panic!("the server failed to start: {status:?}; serve: {outcome:?}"),
            }
        }
    }

    /// Waits until the server answers health checks with SERVING. The
    /// listener is bound before `serve` starts, so the first call simply
    /// waits in the accept queue; no polling, no sleeps.
    async fn wait_ready(&self) -> Result<(), Status> {
        use tonic_health::pb::HealthCheckRequest;
        use tonic_health::pb::health_client::HealthClient;
        let channel = Channel::from_shared(self.url()).unwrap().connect_lazy();
        let reply = tokio::time::timeout(
            Duration::from_secs(60),
            HealthClient::new(channel).check(HealthCheckRequest {
                service: String::new(),
            }),
        )
        .await
        .expect("the server did not answer within 60 s")?;
        assert_eq!(reply.into_inner().status, 1, "SERVING");
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn sessions(&self) -> SessionServiceClient<Channel> {
        SessionServiceClient::new(self.channel().await)
    }

    pub async fn buckets(&self) -> UserSessionServiceClient<Channel> {
        UserSessionServiceClient::new(self.channel().await)
    }

    pub async fn jwts(&self) -> JwtServiceClient<Channel> {
        JwtServiceClient::new(self.channel().await)
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) -> (Arc<tempfile::TempDir>, Arc<ManualClock>, Config) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
        (self.dir.clone(), self.clock.clone(), self.config.clone())
    }

    /// Stops the server and starts a new one on the same data directory and clock.
    pub async fn restart(self) -> Self {
        self.restart_after(|_| {}).await
    }

    /// Stops the server and starts a new one on the same data directory
    /// and clock, with its configuration changed by `configure` (what an
    /// operator's edit and restart does).
    pub async fn restart_with(self, configure: impl FnOnce(&mut Config)) -> Self {
        let (dir, clock, mut config) = self.stop().await;
        configure(&mut config);
        Self::launch(dir, clock, config).await
    }

    /// Starts a server again on what [`Self::stop`] returned.
    pub async fn start_again(
        (dir, clock, config): (Arc<tempfile::TempDir>, Arc<ManualClock>, Config),
    ) -> Self {
        Self::launch(dir, clock, config).await
    }

    /// [`Self::restart`], doing `between` to the data directory while no
    /// server has it open (what a crash leaves behind, say).
    pub async fn restart_after(self, between: impl FnOnce(&std::path::Path)) -> Self {
        let (dir, clock, config) = self.stop().await;
        between(dir.path());
        Self::launch(dir, clock, config).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A JSON object as a protobuf Struct.
pub fn obj(v: serde_json::Value) -> Struct {
    let serde_json::Value::Object(m) = v else {
        panic!("not an object")
    };
    Struct {
        fields: m.into_iter().map(|(k, v)| (k, val(v))).collect(),
    }
}

/// A JSON value as a protobuf Value.
pub fn val(v: serde_json::Value) -> PbValue {
    use serde_json::Value as J;
    let kind = match v {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap()),
        J::String(s) => Kind::StringValue(s),
        J::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.into_iter().map(val).collect(),
        }),
        J::Object(_) => Kind::StructValue(obj(v)),
    };
    PbValue { kind: Some(kind) }
}

/// A protobuf Value as JSON.
pub fn unval(v: &PbValue) -> serde_json::Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => (*b).into(),
        Some(Kind::NumberValue(n)) => (*n).into(),
        Some(Kind::StringValue(s)) => s.clone().into(),
        Some(Kind::ListValue(l)) => l.values.iter().map(unval).collect(),
        Some(Kind::StructValue(s)) => json(s),
    }
}

/// A protobuf Struct as JSON.
pub fn json(s: &Struct) -> serde_json::Value {
    fn j(v: &PbValue) -> serde_json::Value {
        match &v.kind {
            None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
            Some(Kind::BoolValue(b)) => (*b).into(),
            Some(Kind::NumberValue(n)) => (*n).into(),
            Some(Kind::StringValue(s)) => s.clone().into(),
            Some(Kind::ListValue(l)) => l.values.iter().map(j).collect(),
            Some(Kind::StructValue(s)) => json(s),
        }
    }
    s.fields
        .iter()
        .map(|(k, v)| (k.clone(), j(v)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Asserts a status's code and ErrorInfo reason (domain "sessiond").
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: Code,
    reason: &str,
) -> Status {
    let status = result.expect_err("expected an error");
    assert_eq!(status.code(), code, "code of {status:?}");
    let details = status.get_error_details();
    let info = details
        .error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.reason, reason, "reason of {status:?}");
    assert_eq!(info.domain, "sessiond");
    status
}

/// The field a BadRequest names.
pub fn bad_field(status: &Status) -> String {
    let details = status.get_error_details();
    let bad = details
        .bad_request()
        .unwrap_or_else(|| panic!("no BadRequest in {status:?}"));
    bad.field_violations[0].field.clone()
}

/// Creates a session for `user` with an access token payload.
pub async fn create(
    client: &mut SessionServiceClient<Channel>,
    user: &str,
    payload: serde_json::Value,
) -> pb::CreateNewSessionResponse {
    client
        .create_new_session(pb::CreateNewSessionRequest {
            user_id: user.into(),
            access_token_payload: Some(obj(payload)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

pub fn access(r: &pb::CreateNewSessionResponse) -> String {
    r.access_token.as_ref().unwrap().token.clone()
}

pub fn refresh_token(r: &pb::CreateNewSessionResponse) -> String {
    r.refresh_token.as_ref().unwrap().token.clone()
}

pub fn handle(r: &pb::CreateNewSessionResponse) -> String {
    r.session.as_ref().unwrap().session_handle.clone()
}

pub async fn verify(
    client: &mut SessionServiceClient<Channel>,
    token: &str,
    check_database: bool,
) -> Result<pb::GetSessionResponse, Status> {
    client
        .get_session(pb::GetSessionRequest {
            access_token: token.into(),
            check_database,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

pub async fn refresh(
    client: &mut SessionServiceClient<Channel>,
    token: &str,
) -> Result<pb::RefreshSessionResponse, Status> {
    client
        .refresh_session(pb::RefreshSessionRequest {
            refresh_token: token.into(),
            disable_anti_csrf: true,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

/// GetSessionInformation for a session handle.
pub async fn session_info(
    client: &mut SessionServiceClient<Channel>,
    handle: &str,
) -> Result<pb::GetSessionInformationResponse, Status> {
    client
        .get_session_information(pb::GetSessionInformationRequest {
            session_handle: handle.into(),
        })
        .await
        .map(|r| r.into_inner())
}

/// The custom claims of a session's access token payload, as stored.
pub async fn stored_payload(
    client: &mut SessionServiceClient<Channel>,
    handle: &str,
) -> serde_json::Value {
    let info = session_info(client, handle).await.unwrap();
    json(info.custom_claims_in_access_token_payload.as_ref().unwrap())
}

/// The claims of a JWT, without verifying it.
pub fn claims(jwt: &str) -> serde_json::Value {
    use base64::Engine;
    let part = jwt.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// Sends one request over a fresh HTTP/1.1 connection and returns all the
/// server wrote back before closing it.
pub async fn http1_exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    raw
}

/// An HTTP/1.1 answer: its status code, its headers (names lowercased)
/// and its body.
pub fn http1_answer(raw: &[u8]) -> (u16, std::collections::HashMap<String, String>, String) {
    let raw = String::from_utf8_lossy(raw);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.split("\r\n");
    let code = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_owned()))
        .collect();
    (code, headers, body.to_owned())
}

/// A gRPC-web POST of one message over HTTP/1.1; `headers` are raw header
/// lines, each ending in CRLF. Returns the raw response.
pub async fn grpc_web_post(
    addr: SocketAddr,
    path: &str,
    message: &[u8],
    headers: &[u8],
) -> Vec<u8> {
    let mut body = vec![0u8];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(message);
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/grpc-web+proto\r\n\
         Content-Length: {}\r\nConnection: close\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(headers);
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(&body);
    http1_exchange(addr, &req).await
}

/// A plain HTTP/1.1 GET; returns (status line, headers, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (String, String, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let raw = http1_exchange(addr, request.as_bytes()).await;
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_owned(), headers.to_lowercase(), body.to_owned())
}

/// A request with metadata entries.
pub fn with_metadata<T>(msg: T, entries: &[(&'static str, &str)]) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    for (k, v) in entries {
        req.metadata_mut().insert(*k, v.parse().unwrap());
    }
    req
}

/// A CORS preflight for GetUserSession from `origin`; returns (status line, headers, body).
pub async fn cors_preflight(addr: SocketAddr, origin: &str) -> (String, String, String) {
    let req = format!(
        "OPTIONS /sessiond.v1.UserSessionService/GetUserSession HTTP/1.1\r\nHost: {}\r\nOrigin: {origin}\r\n\
         Access-Control-Request-Method: POST\r\n\
         Access-Control-Request-Headers: authorization,content-type,x-grpc-web,x-client-secret\r\n\
         Connection: close\r\n\r\n",
        addr
    );
    let raw = http1_exchange(addr, req.as_bytes()).await;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_owned(), headers.to_lowercase(), body.to_owned())
}

/// Opens a stopped server's store directly. sled lets go of a data
/// directory's lock when its last handle drops, which can trail the stop by
/// a moment: a locked directory is retried (bounded).
pub fn open_store(data: &std::path::Path) -> Arc<sessiond::store::SledStore> {
    let mut attempts = 0;
    loop {
        match sessiond::store::SledStore::open(data, 8 << 20, None) {
            Err(StoreError::Locked(_)) if attempts < 100 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            opened => return opened.unwrap(),
        }
    }
}

/// Starts `config` on its data directory, expecting the start to fail, and
/// returns why (a directory still locked by the server stopped before is
/// retried, bounded).
pub async fn refused_start(config: &Config, clock: Arc<ManualClock>) -> String {
    for _ in 0..100 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let err = sessiond::serve(
            listener,
            config.clone(),
            clock.clone(),
            std::future::pending(),
        )
        .await
        .expect_err("the start fails");
        if !matches!(err, ServeError::Store(StoreError::Locked(_))) {
            return err.to_string();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the data directory stayed locked");
}

/// Waits until `done` holds, checking every 10 ms, and fails the test
/// naming `what` if it does not within 60 s: for tests that must let
/// something happen first, instead of sleeping for a guessed time.
pub async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "waited 60 s for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The server's overall health status (1: SERVING, 2: NOT_SERVING).
pub async fn health(server: &TestServer) -> i32 {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    HealthClient::new(server.channel().await)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

/// A request that replaces a session's data with `{"v": value}`.
pub fn data_update(handle: &str, value: &str) -> pb::UpdateSessionDataInDatabaseRequest {
    pb::UpdateSessionDataInDatabaseRequest {
        session_handle: handle.to_owned(),
        new_session_data: Some(obj(serde_json::json!({"v": value}))),
    }
}

/// Replaces a session's data with `{"v": value}`.
pub async fn set_data(c: &mut SessionServiceClient<Channel>, handle: &str, value: &str) {
    c.update_session_data_in_database(data_update(handle, value))
        .await
        .unwrap();
}

/// A session's data in the database.
pub async fn session_data(
    c: &mut SessionServiceClient<Channel>,
    handle: &str,
) -> serde_json::Value {
    let info = c
        .get_session_information(pb::GetSessionInformationRequest {
            session_handle: handle.to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    json(info.session_data_in_database.as_ref().unwrap())
}
