//! `sessiond-bench`: a load generator for sessiond.
//!
//! Opens N connections with M calls in flight on each, runs every scenario
//! for a fixed duration after a warm-up, and reports throughput, latency
//! percentiles and errors by gRPC code, with each scenario's throughput as a
//! ratio to `health` (the transport's own ceiling) measured in the same run.
//! With `--rounds N` the whole list runs N times over, and each scenario's
//! ratio is the median of its ratios to the `health` run of the same round:
//! on a shared machine the neighbours move between two scenarios run one
//! after the other, and interleaving spreads that over every scenario.
//! Without `--addr` it starts the `sessiond` binary found beside it on a
//! temporary data directory.
//!
//! Calls go over bare HTTP/2 connections (the h2 crate), each request framed
//! in one buffer and sent as HEADERS plus a single DATA frame that ends the stream,
//! as h2load sends its pre-framed request; replies are decoded only where a
//! scenario needs them (tokens), and every call's gRPC status is checked.
//! The load generator shares the machine with the server it measures, so
//! the less it spends per call, the more the ratios describe the server:
//! through tonic's channel it spent about 28 µs per GetSession and could not
//! drive the server as fast as h2load does.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue, TE};
use http::{Method, StatusCode, Uri};
use prost::Message;
use prost_types::Struct;
use prost_types::value::Kind;
use sessiond::config::parse_duration;
use sessiond::pb;
use sessiond::text::count;
use tonic::{Code, Status};
use tonic_health::pb::HealthCheckRequest;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum Scenario {
    /// grpc.health.v1 Check: the transport's ceiling.
    Health,
    /// Stateless GetSession.
    Get,
    /// GetSession with check_database.
    GetDb,
    /// CreateNewSession (a durable write).
    Create,
    /// RefreshSession, each worker following its own rotating chain (a durable write).
    Refresh,
    /// GetUserSession of the public bucket, with the user's token.
    BucketGet,
    /// UpdateUserSession of the public bucket (a durable write).
    BucketUpdate,
    /// 90% get, 5% refresh, 3% create, 2% revoke.
    Mixed,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Self::Health => "health",
            Self::Get => "get",
            Self::GetDb => "get-db",
            Self::Create => "create",
            Self::Refresh => "refresh",
            Self::BucketGet => "bucket-get",
            Self::BucketUpdate => "bucket-update",
            Self::Mixed => "mixed",
        }
    }
}

#[derive(Debug, Parser)]
#[command(name = "sessiond-bench", about = "A load generator for sessiond")]
struct Args {
    /// Server to load [default: start the sessiond binary beside this one].
    #[arg(long)]
    addr: Option<String>,
    /// API key for the server, when it has keys.
    #[arg(long, env = "SESSIOND_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Calls in flight on each connection.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Threads driving the calls (1: a single-threaded runtime).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Measured time per scenario.
    #[arg(long, default_value = "10s")]
    duration: String,
    /// Unmeasured time before it.
    #[arg(long, default_value = "2s")]
    warmup: String,
    /// Scenarios to run, in order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "health,get,get-db,create,refresh,bucket-get,bucket-update,mixed"
    )]
    scenarios: Vec<Scenario>,
    /// Run the scenario list this many times, interleaved; ratios to
    /// `health` are the median over the rounds (each against the same
    /// round's `health`), totals and latencies cover every round.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    rounds: u64,
    /// Sessions created before the scenarios that read them.
    #[arg(long, default_value_t = 1000)]
    population: usize,
    /// Pad the access token payload of created sessions to about this many
    /// bytes of JSON (unpadded it is 49).
    #[arg(long, default_value_t = 0)]
    payload_bytes: usize,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// An argument for the started server, such as --server-arg=--signing-algorithm=RS256 (repeatable).
    #[arg(long, allow_hyphen_values = true)]
    server_arg: Vec<String>,
}

/// Results of one scenario.
#[derive(Debug, serde::Serialize)]
struct Outcome {
    scenario: &'static str,
    calls: u64,
    seconds: f64,
    throughput: f64,
    /// The median of `ratios_by_round`.
    ratio_to_health: Option<f64>,
    /// Throughput over the same round's `health` throughput, per round.
    ratios_by_round: Vec<f64>,
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
    max_us: u64,
    errors: BTreeMap<String, u64>,
}

/// A session of the population.
#[derive(Clone)]
struct Member {
    handle: String,
    access: String,
    refresh: String,
}

/// What one worker measures.
struct Tally {
    latency: Histogram<u64>,
    calls: u64,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn new() -> Self {
        Self {
            latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
            calls: 0,
            errors: BTreeMap::new(),
        }
    }

    fn record(&mut self, elapsed: Duration, result: Result<(), Status>) {
        self.calls += 1;
        let _ = self.latency.record(elapsed.as_micros().max(1) as u64);
        if let Err(status) = result {
            *self
                .errors
                .entry(format!("{:?}", status.code()))
                .or_default() += 1;
        }
    }

    fn merge(&mut self, other: Tally) {
        self.calls += other.calls;
        let _ = self.latency.add(other.latency);
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
    }
}

/// A tiny xorshift generator: enough to mix scenarios and pick sessions.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

/// The access token payload of created sessions: three short claims, padded
/// with a `pad` claim to about `bytes` bytes of JSON when that is larger
/// (filled per session by [`varied`]).
fn payload(bytes: usize) -> Struct {
    let mut s = Struct::default();
    let claims = [("role", "member"), ("plan", "pro"), ("region", "eu-west")];
    // {"role":"member","plan":"pro","region":"eu-west"}, and ,"pad":"" adds 9.
    let unpadded = 2 + claims
        .iter()
        .map(|(k, v)| k.len() + v.len() + 6)
        .sum::<usize>()
        - 1;
    let pad = "x".repeat(bytes.saturating_sub(unpadded + 9));
    let padding = (!pad.is_empty()).then_some(("pad", pad.as_str()));
    for (k, v) in claims.into_iter().chain(padding) {
        s.fields.insert(
            k.into(),
            prost_types::Value {
                kind: Some(Kind::StringValue(v.into())),
            },
        );
    }
    s
}

/// `payload` with its `pad` claim refilled with pseudo-random letters and
/// digits, different for every session, as real payloads (ids, emails) are:
/// a pad repeated across sessions would compress and dedupe unrealistically.
fn varied(payload: &Struct) -> Struct {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let mut out = payload.clone();
    let Some(Kind::StringValue(pad)) = out.fields.get_mut("pad").and_then(|v| v.kind.as_mut())
    else {
        return out;
    };
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut x = NEXT
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    *pad = (0..pad.len())
        .map(|_| {
            // xorshift64*
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
            char::from(ALPHABET[(r >> 58) as usize % ALPHABET.len()])
        })
        .collect();
    out
}

/// One HTTP/2 connection speaking unary gRPC, on the h2 crate directly:
/// a call is a stream the caller's own task opens, writes and reads, with
/// no request or body task in between.
#[derive(Clone)]
struct Conn {
    send: h2::client::SendRequest<Bytes>,
}

impl Conn {
    async fn open(addr: &str) -> Result<Self, String> {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let (send, connection) = h2::client::handshake(tcp)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self { send })
    }

    /// Calls the method at `uri` with `message` and returns the reply's
    /// message bytes, or the call's gRPC status when it is not OK.
    async fn unary(
        &self,
        uri: &Uri,
        message: &impl Message,
        auth: Option<(HeaderName, HeaderValue)>,
    ) -> Result<Bytes, Status> {
        let len = message.encoded_len();
        let mut body = BytesMut::with_capacity(5 + len);
        body.put_u8(0);
        body.put_u32(len as u32);
        message
            .encode(&mut body)
            .expect("the buffer has the message's length");
        let mut request = http::Request::new(());
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri.clone();
        let headers = request.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert(TE, HeaderValue::from_static("trailers"));
        if let Some((name, value)) = auth {
            headers.insert(name, value);
        }
        let transport = h2_status;
        let mut send = self.send.clone().ready().await.map_err(transport)?;
        let (response, mut stream) = send.send_request(request, false).map_err(transport)?;
        stream.send_data(body.freeze(), true).map_err(transport)?;
        let (parts, mut body) = response.await.map_err(transport)?.into_parts();
        if parts.status != StatusCode::OK {
            return Err(http_status(parts.status));
        }
        // A reply with no message carries its status in the headers.
        if let Some(status) = Status::from_header_map(&parts.headers) {
            return Err(not_ok(status));
        }
        let mut reply = Bytes::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(transport)?;
            let _ = body.flow_control().release_capacity(chunk.len());
            reply = if reply.is_empty() {
                chunk
            } else {
                [reply, chunk].concat().into()
            };
        }
        let status = body
            .trailers()
            .await
            .map_err(transport)?
            .as_ref()
            .and_then(Status::from_header_map)
            .ok_or_else(|| Status::internal("a reply without grpc-status"))?;
        if status.code() != Code::Ok {
            return Err(status);
        }
        let framed = reply.len() >= 5 && reply[0] == 0;
        let len = if framed {
            u32::from_be_bytes([reply[1], reply[2], reply[3], reply[4]]) as usize
        } else {
            usize::MAX
        };
        if reply.len() != len.saturating_add(5) {
            return Err(Status::internal(
                "a reply that is not one uncompressed message",
            ));
        }
        Ok(reply.slice(5..))
    }
}

/// The gRPC status of a stream or connection error (gRPC's HTTP/2 mapping).
fn h2_status(e: h2::Error) -> Status {
    let code = match e.reason() {
        None => Code::Unavailable,
        Some(h2::Reason::CANCEL) => Code::Cancelled,
        Some(h2::Reason::REFUSED_STREAM) => Code::Unavailable,
        Some(h2::Reason::ENHANCE_YOUR_CALM) => Code::ResourceExhausted,
        Some(_) => Code::Internal,
    };
    Status::new(code, e.to_string())
}

/// The gRPC status of a reply with an HTTP status other than 200.
fn http_status(status: StatusCode) -> Status {
    let code = match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    };
    Status::new(code, format!("HTTP status {status}"))
}

/// A status found where only an error status may be.
fn not_ok(status: Status) -> Status {
    if status.code() == Code::Ok {
        Status::internal("grpc-status 0 without a message")
    } else {
        status
    }
}

fn decode<M: Message + Default>(bytes: Bytes) -> Result<M, Status> {
    M::decode(bytes).map_err(|e| Status::internal(format!("undecodable reply: {e}")))
}

/// The methods the scenarios call, as absolute URIs on the server.
struct Methods {
    health: Uri,
    create: Uri,
    get: Uri,
    refresh: Uri,
    revoke: Uri,
    bucket_get: Uri,
    bucket_update: Uri,
}

impl Methods {
    fn on(addr: &str) -> Self {
        let uri = |path: &str| -> Uri {
            format!("http://{addr}{path}")
                .parse()
                .unwrap_or_else(|e| panic!("--addr {addr}: {e}"))
        };
        let session = |m: &str| uri(&format!("/sessiond.v1.SessionService/{m}"));
        let user = |m: &str| uri(&format!("/sessiond.v1.UserSessionService/{m}"));
        Self {
            health: uri("/grpc.health.v1.Health/Check"),
            create: session("CreateNewSession"),
            get: session("GetSession"),
            refresh: session("RefreshSession"),
            revoke: session("RevokeSession"),
            bucket_get: user("GetUserSession"),
            bucket_update: user("UpdateUserSession"),
        }
    }
}

#[derive(Clone)]
struct Client {
    conn: Conn,
    methods: Arc<Methods>,
    api_key: Option<HeaderValue>,
    payload: Struct,
}

impl Client {
    /// Authentication of server calls: the API key, when there is one.
    fn server(&self) -> Option<(HeaderName, HeaderValue)> {
        self.api_key
            .clone()
            .map(|key| (HeaderName::from_static("x-api-key"), key))
    }

    fn bearer(token: &str) -> Option<(HeaderName, HeaderValue)> {
        let value = format!("Bearer {token}").parse().expect("tokens are ASCII");
        Some((AUTHORIZATION, value))
    }

    async fn health(&self) -> Result<(), Status> {
        let request = HealthCheckRequest {
            service: String::new(),
        };
        self.conn
            .unary(&self.methods.health, &request, None)
            .await
            .map(drop)
    }

    async fn create(&self, user: String) -> Result<Member, Status> {
        let request = pb::CreateNewSessionRequest {
            user_id: user,
            access_token_payload: Some(varied(&self.payload)),
            disable_anti_csrf: true,
            ..Default::default()
        };
        let reply = self
            .conn
            .unary(&self.methods.create, &request, self.server())
            .await?;
        let r: pb::CreateNewSessionResponse = decode(reply)?;
        Ok(Member {
            handle: r.session.map(|s| s.session_handle).unwrap_or_default(),
            access: r.access_token.map(|t| t.token).unwrap_or_default(),
            refresh: r.refresh_token.map(|t| t.token).unwrap_or_default(),
        })
    }

    async fn get(&self, token: &str, check_database: bool) -> Result<(), Status> {
        let request = pb::GetSessionRequest {
            access_token: token.to_owned(),
            check_database,
            ..Default::default()
        };
        self.conn
            .unary(&self.methods.get, &request, self.server())
            .await
            .map(drop)
    }

    async fn refresh(&self, member: &mut Member) -> Result<(), Status> {
        let request = pb::RefreshSessionRequest {
            refresh_token: member.refresh.clone(),
            disable_anti_csrf: true,
            ..Default::default()
        };
        let reply = self
            .conn
            .unary(&self.methods.refresh, &request, self.server())
            .await?;
        let r: pb::RefreshSessionResponse = decode(reply)?;
        member.refresh = r.refresh_token.map(|t| t.token).unwrap_or_default();
        member.access = r.access_token.map(|t| t.token).unwrap_or_default();
        Ok(())
    }

    async fn revoke(&self, handle: String) -> Result<(), Status> {
        let request = pb::RevokeSessionRequest {
            session_handle: handle,
        };
        self.conn
            .unary(&self.methods.revoke, &request, self.server())
            .await
            .map(drop)
    }

    async fn bucket_get(&self, token: &str) -> Result<(), Status> {
        let request = pb::GetUserSessionRequest {
            bucket: pb::Bucket::Public as i32,
            ..Default::default()
        };
        self.conn
            .unary(&self.methods.bucket_get, &request, Self::bearer(token))
            .await
            .map(drop)
    }

    async fn bucket_update(&self, token: &str, data: Struct) -> Result<(), Status> {
        let request = pb::UpdateUserSessionRequest {
            bucket: pb::Bucket::Public as i32,
            data: Some(data),
            ..Default::default()
        };
        self.conn
            .unary(&self.methods.bucket_update, &request, Self::bearer(token))
            .await
            .map(drop)
    }
}

/// What one worker carries from call to call.
struct Worker {
    id: usize,
    /// Calls made so far.
    n: u64,
    rng: Rng,
    /// The worker's own session (refresh chains, bucket updates).
    mine: Member,
    /// Sessions it created and may revoke (mixed).
    created: Vec<String>,
}

/// One call of `scenario` by worker `w`.
async fn one(
    scenario: Scenario,
    client: &Client,
    population: &[Member],
    w: &mut Worker,
) -> Result<(), Status> {
    let (id, n) = (w.id, w.n);
    let member = &population[w.rng.below(population.len())];
    match scenario {
        Scenario::Health => client.health().await,
        Scenario::Get => client.get(&member.access, false).await,
        Scenario::GetDb => client.get(&member.access, true).await,
        Scenario::Create => client.create(format!("bench-{id}-{n}")).await.map(|_| ()),
        Scenario::Refresh => {
            let result = client.refresh(&mut w.mine).await;
            if result.is_err() {
                // Start a new chain, so one failure does not fail all later calls.
                if let Ok(fresh) = client.create(format!("bench-chain-{id}-{n}")).await {
                    w.mine = fresh;
                }
            }
            result
        }
        Scenario::BucketGet => client.bucket_get(&member.access).await,
        Scenario::BucketUpdate => {
            let mut data = Struct::default();
            data.fields.insert(
                format!("k{}", n % 32),
                prost_types::Value {
                    kind: Some(Kind::NumberValue(n as f64)),
                },
            );
            client.bucket_update(&w.mine.access, data).await
        }
        Scenario::Mixed => match w.rng.below(100) {
            0..90 => client.get(&member.access, false).await,
            90..95 => Box::pin(one(Scenario::Refresh, client, population, w)).await,
            // 3% create, 2% revoke. Only sessions this worker created are
            // revoked, so the population stays whole for the scenarios (and
            // rounds) after this one; with none left, a revoke is a create.
            roll => match w.created.pop() {
                Some(handle) if roll >= 98 => client.revoke(handle).await,
                popped => {
                    w.created.extend(popped);
                    let m = client.create(format!("bench-mixed-{id}-{n}")).await?;
                    w.created.push(m.handle);
                    Ok(())
                }
            },
        },
    }
}

async fn run(
    scenario: Scenario,
    clients: &[Client],
    population: Arc<Vec<Member>>,
    args: &Args,
    warmup: Duration,
    duration: Duration,
) -> Tally {
    let start = Instant::now();
    let (measure_from, end) = (start + warmup, start + warmup + duration);
    let mut workers = Vec::new();
    for (c, client) in clients.iter().enumerate() {
        for m in 0..args.concurrency {
            let id = c * args.concurrency + m;
            let (client, population) = (client.clone(), population.clone());
            workers.push(tokio::spawn(async move {
                let mut tally = Tally::new();
                let mine = match client.create(format!("bench-own-{id}")).await {
                    Ok(m) => m,
                    Err(_) => population[id % population.len()].clone(),
                };
                let mut w = Worker {
                    id,
                    n: 0,
                    rng: Rng(
                        0x9E37_79B9_7F4A_7C15 ^ (id as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D)
                    ),
                    mine,
                    created: Vec::new(),
                };
                loop {
                    let now = Instant::now();
                    if now >= end {
                        break;
                    }
                    w.n += 1;
                    let result = one(scenario, &client, &population, &mut w).await;
                    if now >= measure_from {
                        tally.record(now.elapsed(), result);
                    }
                }
                tally
            }));
        }
    }
    let mut total = Tally::new();
    for w in workers {
        total.merge(w.await.expect("a worker panicked"));
    }
    total
}

/// The median of some numbers (the mean of the middle two for an even
/// count); `None` for none.
fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[mid]),
        _ => Some((v[mid - 1] + v[mid]) / 2.0),
    }
}

/// One scenario's results over every round it ran in.
fn outcome(scenario: Scenario, total: Tally, seconds: f64, ratios_by_round: Vec<f64>) -> Outcome {
    let l = &total.latency;
    Outcome {
        scenario: scenario.name(),
        calls: total.calls,
        seconds,
        throughput: total.calls as f64 / seconds,
        ratio_to_health: median(&ratios_by_round),
        ratios_by_round,
        p50_us: l.value_at_quantile(0.50),
        p90_us: l.value_at_quantile(0.90),
        p99_us: l.value_at_quantile(0.99),
        max_us: l.max(),
        errors: total.errors,
    }
}

/// The sessiond binary beside this one, on a temporary data directory.
fn start_server(extra: &[String]) -> (Child, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let exe = std::env::current_exe()
        .expect("own path")
        .with_file_name("sessiond");
    let mut child = Command::new(&exe)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
    let mut lines = BufReader::new(child.stderr.take().expect("piped")).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("sessiond exited before it was ready")
            .expect("readable stderr");
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, addr, dir)
}

fn us(v: u64) -> String {
    if v >= 10_000 {
        format!("{:.1}ms", v as f64 / 1000.0)
    } else {
        format!("{v}µs")
    }
}

/// mimalloc, as in the server: the load generator allocates per call too.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    let mut runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(args.threads);
        b
    };
    let runtime = runtime.enable_all().build().expect("a tokio runtime");
    let mut server = None;
    let addr = match &args.addr {
        Some(a) => a.clone(),
        None => {
            let (child, addr, dir) = start_server(&args.server_arg);
            eprintln!("started sessiond at {addr}");
            server = Some((child, dir));
            addr
        }
    };
    let outcome = runtime.block_on(bench(&args, &addr));
    if let Some((mut child, _dir)) = server {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
    }
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sessiond-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn bench(args: &Args, addr: &str) -> Result<(), String> {
    let warmup = parse_duration(&args.warmup).map_err(|e| format!("--warmup: {e}"))?;
    let duration = parse_duration(&args.duration).map_err(|e| format!("--duration: {e}"))?;
    let api_key = args
        .api_key
        .as_deref()
        .map(|k| k.parse().expect("--api-key must be ASCII"));
    let methods = Arc::new(Methods::on(addr));
    let mut clients = Vec::new();
    for _ in 0..args.connections.max(1) {
        let conn = Conn::open(addr)
            .await
            .map_err(|e| format!("cannot reach {addr}: {e}"))?;
        clients.push(Client {
            conn,
            methods: methods.clone(),
            api_key: api_key.clone(),
            payload: payload(args.payload_bytes),
        });
    }
    eprintln!(
        "{} x {} in flight, {:?} warm-up + {:?} per scenario; creating {}",
        count(clients.len() as u64, "connection", "connections"),
        args.concurrency,
        warmup,
        duration,
        count(args.population as u64, "session", "sessions"),
    );
    let mut population = Vec::with_capacity(args.population);
    for chunk in (0..args.population.max(1)).collect::<Vec<_>>().chunks(64) {
        let calls: Vec<_> = chunk
            .iter()
            .map(|i| {
                let client = clients[i % clients.len()].clone();
                let i = *i;
                tokio::spawn(async move { client.create(format!("bench-user-{i}")).await })
            })
            .collect();
        for call in calls {
            let member = call.await.expect("join").map_err(|s| {
                format!(
                    "creating the population failed: {:?}: {}",
                    s.code(),
                    s.message()
                )
            })?;
            population.push(member);
        }
    }
    let population = Arc::new(population);

    // Per position in the scenario list: every round's tally, and its
    // throughput over the same round's health throughput.
    let mut totals: Vec<Tally> = args.scenarios.iter().map(|_| Tally::new()).collect();
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); args.scenarios.len()];
    for round in 1..=args.rounds {
        let mut throughputs = Vec::with_capacity(args.scenarios.len());
        for (i, scenario) in args.scenarios.iter().enumerate() {
            let tally = run(
                *scenario,
                &clients,
                population.clone(),
                args,
                warmup,
                duration,
            )
            .await;
            let throughput = tally.calls as f64 / duration.as_secs_f64();
            let of = if args.rounds > 1 {
                format!(" (round {round} of {})", args.rounds)
            } else {
                String::new()
            };
            eprintln!("{:<14} {throughput:>10.0} calls/s{of}", scenario.name());
            throughputs.push(throughput);
            totals[i].merge(tally);
        }
        let health = args
            .scenarios
            .iter()
            .position(|s| *s == Scenario::Health)
            .map(|i| throughputs[i])
            // A round whose health check made no calls has nothing to
            // divide by; it counts in the totals, not in the ratios.
            .filter(|h| *h > 0.0);
        if let Some(health) = health {
            for (r, t) in ratios.iter_mut().zip(&throughputs) {
                r.push(t / health);
            }
        }
    }
    let rounds = u32::try_from(args.rounds).unwrap_or(u32::MAX);
    let seconds = duration.saturating_mul(rounds).as_secs_f64();
    let outcomes: Vec<Outcome> = args
        .scenarios
        .iter()
        .zip(totals)
        .zip(ratios)
        .map(|((scenario, total), ratios)| outcome(*scenario, total, seconds, ratios))
        .collect();
    let range = args.rounds > 1;
    println!(
        "| scenario | calls/s | × health |{} p50 | p90 | p99 | max | errors |\n|---|---:|---:|{}---:|---:|---:|---:|---|",
        if range { " range |" } else { "" },
        if range { "---:|" } else { "" },
    );
    for o in &outcomes {
        let errors = if o.errors.is_empty() {
            "0".to_owned()
        } else {
            o.errors
                .iter()
                .map(|(c, n)| format!("{c} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let spread = match (
            o.ratios_by_round.iter().copied().reduce(f64::min),
            o.ratios_by_round.iter().copied().reduce(f64::max),
        ) {
            (Some(lo), Some(hi)) if range => format!(" {lo:.2}–{hi:.2} |"),
            _ if range => " - |".to_owned(),
            _ => String::new(),
        };
        println!(
            "| {} | {:.0} | {} |{spread} {} | {} | {} | {} | {} |",
            o.scenario,
            o.throughput,
            o.ratio_to_health
                .map_or("-".to_owned(), |r| format!("{r:.2}")),
            us(o.p50_us),
            us(o.p90_us),
            us(o.p99_us),
            us(o.max_us),
            errors
        );
    }
    if let Some(path) = &args.json {
        let report = serde_json::json!({
            "connections": clients.len(),
            "concurrency_per_connection": args.concurrency,
            "warmup_seconds": warmup.as_secs_f64(),
            "duration_seconds": duration.as_secs_f64(),
            "rounds": args.rounds,
            "population": args.population,
            "payload_bytes": args.payload_bytes,
            "results": outcomes,
        });
        std::fs::write(path, serde_json::to_string_pretty(&report).expect("JSON"))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}
