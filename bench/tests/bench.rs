//! The load generator (`sessiond-bench`), run for a moment against a real
//! server: every scenario makes calls that succeed, and the JSON report
//! holds what the table shows.
//!
//! The server runs in this process on 127.0.0.1:0 with a temporary data
//! directory and a manual clock, as in the service's own integration tests;
//! the load generator is the binary this package builds.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use sessiond::config::Config;
use sessiond::{ManualClock, ServeError};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const API_KEY: &str = "test-api-key-0123456789";

/// A throwaway PostgreSQL database per test (`tests/support/postgres.rs`).
#[path = "../../tests/support/postgres.rs"]
mod pg_harness;

/// A server running in this process on a temporary data directory; it is
/// stopped when dropped.
struct TestServer {
    addr: SocketAddr,
    _dir: tempfile::TempDir,
    _stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl TestServer {
    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    async fn start_with(configure: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::with_data_dir(dir.path());
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.drain_timeout = Duration::from_secs(5);
        configure(&mut config);
        let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(sessiond::serve(
            listener,
            config,
            ManualClock::starting_now(),
            async {
                let _ = stopped.await;
            },
        ));
        // The listener is bound before `serve` starts, so this call waits in
        // the accept queue until the server answers: no polling, no sleeps.
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        let reply = tokio::time::timeout(
            Duration::from_secs(60),
            HealthClient::new(channel).check(HealthCheckRequest {
                service: String::new(),
            }),
        )
        .await
        .expect("the server did not answer within 60 s")
        .expect("the server started");
        assert_eq!(reply.into_inner().status, 1, "SERVING");
        Self {
            addr,
            _dir: dir,
            _stop: stop,
            task,
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const SCENARIOS: [&str; 8] = [
    "health",
    "get",
    "get-db",
    "create",
    "refresh",
    "bucket-get",
    "bucket-update",
    "mixed",
];

#[tokio::test]
async fn every_scenario_runs_without_errors_and_is_reported_as_json() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let args: Vec<String> = [
        "--addr",
        &server.addr.to_string(),
        "--connections",
        "2",
        "--concurrency",
        "3",
        "--duration",
        "300ms",
        "--warmup",
        "100ms",
        "--population",
        "20",
        "--scenarios",
        &SCENARIOS.join(","),
        "--json",
        json.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = run_bench(move |c| {
        c.args(&args);
    })
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("| scenario | calls/s | × health |"),
        "{stdout}"
    );

    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["connections"], 2);
    assert_eq!(report["concurrency_per_connection"], 3);
    let results = report["results"].as_array().unwrap();
    let names: Vec<&str> = results
        .iter()
        .map(|r| r["scenario"].as_str().unwrap())
        .collect();
    assert_eq!(names, SCENARIOS);
    for r in results {
        let name = &r["scenario"];
        assert!(r["calls"].as_u64().unwrap() > 0, "{name}: no calls");
        assert_eq!(r["errors"], serde_json::json!({}), "{name}: errors");
        assert!(r["throughput"].as_f64().unwrap() > 0.0, "{name}");
        assert!(r["ratio_to_health"].as_f64().unwrap() > 0.0, "{name}");
        let (p50, p99, max) = (
            r["p50_us"].as_u64().unwrap(),
            r["p99_us"].as_u64().unwrap(),
            r["max_us"].as_u64().unwrap(),
        );
        assert!(0 < p50 && p50 <= p99 && p99 <= max, "{name}: {r}");
        assert!(
            stdout.contains(&format!("| {} |", name.as_str().unwrap())),
            "{name} missing from the table"
        );
    }
    assert_eq!(results[0]["ratio_to_health"], 1.0);
}

#[tokio::test]
async fn a_refused_call_is_a_clear_error_not_a_panic() {
    let server = TestServer::start_with(|c| {
        c.api_keys = vec![sessiond::config::ApiKey::admin("ops", API_KEY)]
    })
    .await;
    let addr = server.addr.to_string();
    let out = run_bench(move |c| {
        c.args(["--addr", &addr, "--api-key", "not-the-key"])
            .args(["--scenarios", "health", "--population", "2"])
            .args(["--duration", "100ms", "--warmup", "0s"]);
    })
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("creating the population failed: Unauthenticated"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn rounds_interleave_the_scenarios_and_report_the_median_ratio() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let (addr, path) = (server.addr.to_string(), json.clone());
    let out = run_bench(move |c| {
        c.args(["--addr", &addr, "--scenarios", "health,get,create"])
            .args(["--rounds", "3", "--connections", "1", "--concurrency", "2"])
            .args(["--duration", "500ms", "--warmup", "0s", "--population", "4"])
            .arg("--json")
            .arg(&path);
    })
    .await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("| scenario | calls/s | × health | range |"),
        "{stdout}"
    );
    let order: Vec<String> = stderr
        .lines()
        .filter(|l| l.contains(" calls/s (round "))
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            format!("{} {}", words[0], words[4])
        })
        .collect();
    let expected: Vec<String> = (1..=3)
        .flat_map(|round| ["health", "get", "create"].map(|s| format!("{s} {round}")))
        .collect();
    assert_eq!(order, expected, "the list runs whole, round after round");

    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["rounds"], 3);
    for r in report["results"].as_array().unwrap() {
        let name = &r["scenario"];
        let mut ratios: Vec<f64> = r["ratios_by_round"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(ratios.len(), 3, "{name}: one ratio per round");
        assert!(ratios.iter().all(|&x| x > 0.0), "{name}: {ratios:?}");
        ratios.sort_by(f64::total_cmp);
        assert_eq!(
            r["ratio_to_health"].as_f64().unwrap(),
            ratios[1],
            "{name}: the median"
        );
        assert_eq!(
            r["seconds"].as_f64().unwrap(),
            1.5,
            "{name}: three rounds of 500 ms"
        );
        assert_eq!(r["errors"], serde_json::json!({}), "{name}: errors");
        let (lo, hi) = (ratios[0], ratios[2]);
        if name != "health" {
            assert!(
                stdout.contains(&format!("{lo:.2}–{hi:.2}")),
                "{name}: its range in the table: {stdout}"
            );
        }
    }
    assert_eq!(
        report["results"][0]["ratios_by_round"],
        serde_json::json!([1.0, 1.0, 1.0])
    );
}

#[tokio::test]
async fn mixed_revokes_only_its_own_sessions_so_later_scenarios_find_the_population() {
    let server = TestServer::start().await;
    let addr = server.addr.to_string();
    // Eight workers: each would otherwise revoke a population member with
    // a chance of 2 in 5 before its first create.
    let out = run_bench(move |c| {
        c.args(["--addr", &addr, "--scenarios", "mixed,get-db,bucket-get"])
            .args(["--connections", "1", "--concurrency", "8"])
            .args(["--duration", "300ms", "--warmup", "0s", "--population", "4"]);
    })
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    for scenario in ["mixed", "get-db", "bucket-get"] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {scenario} |")))
            .unwrap_or_else(|| panic!("no {scenario} row: {stdout}"));
        assert!(row.ends_with("| 0 |"), "{scenario} had errors: {row}");
    }
}

/// pgbench: on `PATH`, or beside the server binaries of the Debian package.
fn pgbench() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let on_path = std::env::split_paths(&path).map(|dir| dir.join("pgbench"));
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin").join("pgbench"));
    on_path.chain(debian).find(|p| p.exists())
}

#[tokio::test]
async fn on_postgres_pgbench_runs_around_each_round_and_is_the_reference_of_its_scenarios() {
    let test = "on_postgres_pgbench_runs_around_each_round_and_is_the_reference_of_its_scenarios";
    let Some(db) = pg_harness::postgres(test) else {
        return;
    };
    let Some(pgbench) = pgbench() else {
        if std::env::var(pg_harness::REQUIRE).is_ok_and(|v| v == "1") {
            panic!(
                "{test}: pgbench is required ({}=1) but was not found",
                pg_harness::REQUIRE
            );
        }
        eprintln!(
            "{test}: skipped, no pgbench; to run it: {}",
            pg_harness::INSTALL
        );
        return;
    };
    let url = db.url.clone();
    let server = TestServer::start_with(|c| {
        c.database_url = Some(sessiond::secret::Secret::new(url));
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let (addr, path, url) = (server.addr.to_string(), json.clone(), db.url.clone());
    let out = run_bench(move |c| {
        c.args(["--addr", &addr, "--scenarios", "health,get-db,create"])
            .args(["--rounds", "2", "--connections", "1", "--concurrency", "2"])
            .args(["--duration", "1s", "--warmup", "0s", "--population", "4"])
            .args(["--database-url", &url, "--pgbench", "--pgbench-scale", "1"])
            .arg("--pgbench-path")
            .arg(&pgbench)
            .arg("--json")
            .arg(&path);
    })
    .await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        !stdout.contains(&db.url) && !stderr.contains(&db.url),
        "the database URL is never printed"
    );
    assert!(stdout.contains("| get-db |") && stdout.contains("pgbench selects"));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let runs = report["pgbench"]["runs"].as_array().unwrap();
    assert_eq!(
        runs.len(),
        3,
        "before each of two rounds and after the last"
    );
    for run in runs {
        assert!(run["inserts"].as_f64().unwrap() > 0.0, "{run}");
        assert!(run["selects"].as_f64().unwrap() > 0.0, "{run}");
    }
    let ratios = report["pgbench"]["ratios"].as_array().unwrap();
    let compared: Vec<(&str, &str)> = ratios
        .iter()
        .map(|r| {
            (
                r["scenario"].as_str().unwrap(),
                r["reference"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        compared,
        [("get-db", "pgbench selects"), ("create", "pgbench inserts")],
        "health is compared with nothing"
    );
    for (r, result) in ratios
        .iter()
        .zip(&report["results"].as_array().unwrap()[1..])
    {
        let by_round: Vec<f64> = r["ratios_by_round"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(by_round.len(), 2, "{r}");
        assert!(by_round.iter().all(|&x| x > 0.0), "{r}");
        assert_eq!(result["errors"], serde_json::json!({}), "{result}");
    }
    let rows = db
        .cluster()
        .sql(&db.name, "SELECT count(*) FROM sessiond_sessions")
        .unwrap();
    assert!(
        rows.trim().parse::<u64>().unwrap() > 4,
        "the server ran on the database"
    );
}

/// Runs the load generator as `configure` sets it up, and waits for it off
/// this test's runtime (the server under load runs on it).
async fn run_bench(configure: impl FnOnce(&mut Command) + Send + 'static) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sessiond-bench"));
        configure(&mut command);
        command.output().unwrap()
    })
    .await
    .unwrap()
}
