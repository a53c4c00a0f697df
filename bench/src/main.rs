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
//! temporary data directory, or on the PostgreSQL database of
//! `--database-url`; with `--pgbench` as well, pgbench's references run
//! against that database before each round and after the last, and each
//! scenario that writes or reads the database is also reported as a
//! fraction of them (module `pgbench`).
//!
//! Calls go over bare HTTP/2 connections (the h2 crate), each request framed
//! in one buffer and sent as HEADERS plus a single DATA frame that ends the stream,
//! as h2load sends its pre-framed request; replies are decoded only where a
//! scenario needs them (tokens), and every call's gRPC status is checked.
//! The load generator shares the machine with the server it measures, so
//! the less it spends per call, the more the ratios describe the server:
//! through tonic's channel it spent about 28 µs per GetSession and could not
//! drive the server as fast as h2load does.
//!
//! Layout: this file holds the command line, the server it may start and
//! the whole run (population, rounds, the table and the JSON); `conn` is one
//! HTTP/2 connection, `client` the calls the scenarios make, `run` the
//! workers of one scenario and what they measure, `report` a scenario's
//! results, `pgbench` PostgreSQL's reference.

mod client;
mod conn;
mod pgbench;
mod report;
mod run;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;

use clap::{Parser, ValueEnum};
use sessiond::config::parse_duration;
use sessiond::text::count;

use crate::client::{Client, Methods, payload};
use crate::conn::Conn;
use crate::pgbench::{Measured, Pgbench, Reference};
use crate::report::{Outcome, median, outcome, us};
use crate::run::{Tally, run};

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
    /// CreateNewSession with a Device (IP address, browser user agent, label).
    CreateDevice,
    /// RefreshSession with a Device, as a browser's refresh sends it.
    RefreshDevice,
    /// GetUserSession of the public bucket, with the user's token.
    BucketGet,
    /// UpdateUserSession of the public bucket (a durable write).
    BucketUpdate,
    /// 90% get, 5% refresh, 3% create, 2% revoke.
    Mixed,
    /// Envoy ext_authz Check of a Bearer token (envoy.service.auth.v3).
    AuthzGrpc,
    /// HTTP forward-auth check (/authz) of a Bearer token.
    AuthzHttp,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Self::Health => "health",
            Self::Get => "get",
            Self::GetDb => "get-db",
            Self::Create => "create",
            Self::Refresh => "refresh",
            Self::CreateDevice => "create-device",
            Self::RefreshDevice => "refresh-device",
            Self::BucketGet => "bucket-get",
            Self::BucketUpdate => "bucket-update",
            Self::Mixed => "mixed",
            Self::AuthzGrpc => "authz-grpc",
            Self::AuthzHttp => "authz-http",
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
    /// Run the started server on this PostgreSQL database (its
    /// --database-url, e.g. postgres://user@127.0.0.1:5432/bench?sslmode=disable)
    /// instead of sled; with --pgbench, also the database pgbench runs on.
    #[arg(long, env = "SESSIOND_BENCH_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// With --database-url: create pgbench's tables in that database, run
    /// pgbench (16 clients: single-row inserts, then primary-key selects
    /// with -S, --duration each) before each round and after the last, and
    /// report each durable write as a fraction of the inserts and each
    /// database read as a fraction of the selects, against the mean of the
    /// pgbench runs around its round.
    #[arg(long, requires = "database_url")]
    pgbench: bool,
    /// The pgbench program to run.
    #[arg(long, default_value = "pgbench")]
    pgbench_path: String,
    /// pgbench's scale factor (-s) for its tables.
    #[arg(long, default_value_t = 10)]
    pgbench_scale: u32,
}

/// The sessiond binary beside this one, on a temporary data directory.
/// With a database URL, the server runs on it (passed in its environment,
/// where other users' `ps` does not show a password).
fn start_server(
    extra: &[String],
    database_url: Option<&str>,
) -> (Child, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let exe = std::env::current_exe()
        .expect("own path")
        .with_file_name("sessiond");
    let mut command = Command::new(&exe);
    if let Some(url) = database_url {
        command.env("SESSIOND_DATABASE_URL", url);
    }
    let mut child = command
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
            let (child, addr, dir) = start_server(&args.server_arg, args.database_url.as_deref());
            let on = if args.database_url.is_some() {
                "on PostgreSQL"
            } else {
                "on sled"
            };
            eprintln!("started sessiond at {addr} {on}");
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
    let pgbench = match (&args.database_url, args.pgbench) {
        (Some(url), true) => {
            let (program, scale) = (args.pgbench_path.clone(), args.pgbench_scale);
            let url = url.clone();
            eprintln!("creating pgbench's tables (scale {scale})");
            Some(blocking(move || Pgbench::init(&program, &url, scale, duration)).await?)
        }
        _ => None,
    };
    let pgbench = pgbench.map(Arc::new);
    let mut references: Vec<Measured> = Vec::new();
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
    let mut throughputs_by_round: Vec<Vec<f64>> = Vec::new();
    for round in 1..=args.rounds {
        if let Some(pgbench) = &pgbench {
            references.push(reference(pgbench).await?);
        }
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
        throughputs_by_round.push(throughputs);
    }
    if let Some(pgbench) = &pgbench {
        references.push(reference(pgbench).await?);
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
    let against = against_pgbench(&args.scenarios, &throughputs_by_round, &references);
    if !references.is_empty() {
        print_pgbench(&against, &references);
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
            "pgbench": (!references.is_empty()).then(|| serde_json::json!({
                "runs": references,
                "ratios": against,
            })),
        });
        std::fs::write(path, serde_json::to_string_pretty(&report).expect("JSON"))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// One measurement of pgbench's references, run off the runtime's thread.
async fn reference(pgbench: &Arc<Pgbench>) -> Result<Measured, String> {
    let pgbench = pgbench.clone();
    eprintln!("pgbench");
    let measured = blocking(move || pgbench.measure()).await?;
    eprintln!(
        "{:<14} {:>10.0} tps\n{:<14} {:>10.0} tps",
        "  inserts", measured.inserts, "  selects", measured.selects
    );
    Ok(measured)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("pgbench's thread failed: {e}"))?
}

/// A scenario's throughput as a fraction of its pgbench reference.
#[derive(Debug, serde::Serialize)]
struct AgainstPgbench {
    scenario: &'static str,
    reference: &'static str,
    /// The median of `ratios_by_round`.
    ratio: Option<f64>,
    /// Throughput over the mean of the pgbench runs before and after the
    /// same round, per round.
    ratios_by_round: Vec<f64>,
}

/// Each compared scenario against the pgbench runs around its rounds
/// (`references[r]` before round `r`, the last after the last round).
fn against_pgbench(
    scenarios: &[Scenario],
    throughputs_by_round: &[Vec<f64>],
    references: &[Measured],
) -> Vec<AgainstPgbench> {
    if references.len() != throughputs_by_round.len() + 1 {
        return Vec::new();
    }
    scenarios
        .iter()
        .enumerate()
        .filter_map(|(i, scenario)| {
            let reference = Reference::of(*scenario)?;
            let ratios_by_round: Vec<f64> = throughputs_by_round
                .iter()
                .enumerate()
                .map(|(r, throughputs)| {
                    let around =
                        (references[r].get(reference) + references[r + 1].get(reference)) / 2.0;
                    throughputs[i] / around
                })
                .collect();
            Some(AgainstPgbench {
                scenario: scenario.name(),
                reference: reference.name(),
                ratio: median(&ratios_by_round),
                ratios_by_round,
            })
        })
        .collect()
}

fn print_pgbench(against: &[AgainstPgbench], references: &[Measured]) {
    let runs = |f: fn(&Measured) -> f64| {
        references
            .iter()
            .map(|m| format!("{:.0}", f(m)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("\n| pgbench, 16 clients | tps, run by run |\n|---|---|");
    println!("| inserts | {} |", runs(|m| m.inserts));
    println!("| selects (-S) | {} |", runs(|m| m.selects));
    println!("\n| scenario | × pgbench | range | of |\n|---|---:|---:|---|");
    for a in against {
        let lo = a.ratios_by_round.iter().copied().reduce(f64::min);
        let hi = a.ratios_by_round.iter().copied().reduce(f64::max);
        let range = match (lo, hi) {
            (Some(lo), Some(hi)) => format!("{lo:.2}–{hi:.2}"),
            _ => "-".to_owned(),
        };
        let ratio = a.ratio.map_or("-".to_owned(), |r| format!("{r:.2}"));
        println!("| {} | {ratio} | {range} | {} |", a.scenario, a.reference);
    }
}
