//! PostgreSQL's own reference, for a run on the PostgreSQL store: pgbench
//! against the same database, in the same run, so that each scenario's
//! throughput can be read as a fraction of what PostgreSQL does on this
//! machine right now.
//!
//! Two references, each with [`CLIENTS`] clients: single-row durable
//! inserts (pgbench's own `pgbench_history` insert, one transaction each),
//! which durable writes (`create`, `refresh`, `bucket-update`) are compared
//! with; and primary-key selects (`pgbench -S`), which reads that go to the
//! database (`get-db`, `bucket-get`) are compared with. pgbench's tables
//! (`pgbench_*`) live beside sessiond's in the database and are created
//! afresh (`pgbench -i`) at the start of the run. This module never
//! prints the database URL, which may hold a password.

use std::process::Command;
use std::time::Duration;

use crate::Scenario;

/// pgbench's clients (and the reference's figure of merit: 16 clients).
const CLIENTS: &str = "16";

/// pgbench's threads: one per core of the 2-core machines it was written on.
const THREADS: &str = "2";

/// The insert transaction, as pgbench's built-in TPC-B-like script
/// writes its history row.
const INSERT: &str = "\\set aid random(1, 100000 * :scale)
\\set bid random(1, 1 * :scale)
\\set tid random(1, 10 * :scale)
\\set delta random(-5000, 5000)
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
";

/// What a scenario is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reference {
    /// Single-row durable inserts per second.
    Inserts,
    /// Primary-key selects per second.
    Selects,
}

impl Reference {
    /// The reference a scenario is measured against, if any.
    pub(crate) fn of(scenario: Scenario) -> Option<Self> {
        match scenario {
            Scenario::Create
            | Scenario::Refresh
            | Scenario::CreateDevice
            | Scenario::RefreshDevice
            | Scenario::BucketUpdate => Some(Self::Inserts),
            Scenario::GetDb | Scenario::BucketGet => Some(Self::Selects),
            Scenario::Health
            | Scenario::Get
            | Scenario::Mixed
            | Scenario::AuthzGrpc
            | Scenario::AuthzHttp => None,
        }
    }

    /// Its name in the report.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Inserts => "pgbench inserts",
            Self::Selects => "pgbench selects",
        }
    }
}

/// One measurement of both references, in transactions per second.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct Measured {
    pub(crate) inserts: f64,
    pub(crate) selects: f64,
}

impl Measured {
    pub(crate) fn get(&self, reference: Reference) -> f64 {
        match reference {
            Reference::Inserts => self.inserts,
            Reference::Selects => self.selects,
        }
    }
}

/// pgbench, its database and how long each reference runs.
pub(crate) struct Pgbench {
    program: String,
    url: String,
    seconds: String,
    script: tempfile::NamedTempFile,
}

impl Pgbench {
    /// Creates pgbench's tables at `scale` in the database at `url`.
    pub(crate) fn init(
        program: &str,
        url: &str,
        scale: u32,
        duration: Duration,
    ) -> Result<Self, String> {
        let script = tempfile::NamedTempFile::new()
            .and_then(|mut f| {
                std::io::Write::write_all(&mut f, INSERT.as_bytes())?;
                Ok(f)
            })
            .map_err(|e| format!("cannot write pgbench's script: {e}"))?;
        let pgbench = Self {
            program: program.to_owned(),
            url: url.to_owned(),
            seconds: duration.as_secs().max(1).to_string(),
            script,
        };
        pgbench.run(&["-i", "-q", "-s", &scale.to_string()])?;
        Ok(pgbench)
    }

    /// Runs both references once.
    pub(crate) fn measure(&self) -> Result<Measured, String> {
        let script = self.script.path().to_string_lossy().into_owned();
        let common = ["-n", "-c", CLIENTS, "-j", THREADS, "-T", &self.seconds];
        let inserts = tps(&self.run(&[&common[..], &["-f", &script]].concat())?)?;
        let selects = tps(&self.run(&[&common[..], &["-S"]].concat())?)?;
        Ok(Measured { inserts, selects })
    }

    /// pgbench's output for `args`, the database last.
    fn run(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.program)
            .args(args)
            .arg(&self.url)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.program))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            return Err(format!(
                "{} {} failed ({}): {}",
                self.program,
                args.join(" "),
                out.status,
                text.trim()
            ));
        }
        Ok(text)
    }
}

/// The transactions per second pgbench reports (`tps = N (without initial
/// connection time)`).
fn tps(output: &str) -> Result<f64, String> {
    output
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("no tps in pgbench's output: {}", output.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tps_is_read_from_pgbench_output() {
        let out = "latency average = 0.423 ms\n\
                   initial connection time = 12.5 ms\n\
                   tps = 37833.877709 (without initial connection time)\n";
        assert_eq!(tps(out).unwrap(), 37833.877709);
        assert!(tps("pgbench: error: connection refused").is_err());
    }

    #[test]
    fn writes_are_compared_with_inserts_and_database_reads_with_selects() {
        assert_eq!(Reference::of(Scenario::Refresh), Some(Reference::Inserts));
        assert_eq!(Reference::of(Scenario::GetDb), Some(Reference::Selects));
        assert_eq!(Reference::of(Scenario::Get), None);
    }
}
