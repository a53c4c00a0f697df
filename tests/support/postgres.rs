//! A throwaway PostgreSQL cluster for tests, started on loopback.
//!
//! Tests call [`postgres`] and get a [`Database`] of their own (a fresh
//! database in a shared cluster), or `None` when PostgreSQL is not there:
//! then the test prints why and the one-line install command, and returns.
//! With `SESSIOND_REQUIRE_POSTGRES=1` (set by CI) a missing PostgreSQL fails
//! the test instead.
//!
//! Where the cluster comes from, in order:
//! - `SESSIOND_TEST_DATABASE_URL`: a server someone runs already (its user
//!   must be allowed to create databases);
//! - otherwise the server binaries of the Debian package (`initdb`,
//!   `pg_ctl` under `/usr/lib/postgresql/<version>/bin`, or on `PATH`):
//!   `initdb` into a temporary directory and `pg_ctl start` on a free port of
//!   127.0.0.1 with its socket in that directory. PostgreSQL refuses to run
//!   as root, so as root the cluster belongs to the `postgres` user.
//!
//! The cluster is shared by the tests running at the same time and stopped
//! (`pg_ctl stop -m immediate`) when the last of them drops its handle; the
//! next test starts a new one. It never touches a port or a directory it
//! did not make. Uses only `std` and `tempfile`, so both the library's unit
//! tests and the integration tests can include it.

#![allow(dead_code)]

use std::net::TcpListener;
use std::os::unix::fs::chown;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// The variable that turns a skipped PostgreSQL test into a failed one.
pub const REQUIRE: &str = "SESSIOND_REQUIRE_POSTGRES";
/// A running server to use instead of a throwaway cluster.
pub const URL: &str = "SESSIOND_TEST_DATABASE_URL";
/// What to run to get the server binaries on Debian and Ubuntu.
pub const INSTALL: &str = "sudo apt-get install -y postgresql";

/// A database of one test's own.
pub struct Database {
    /// `postgres://` URL of the database.
    pub url: String,
    /// Its name.
    pub name: String,
    cluster: Arc<Cluster>,
}

impl Database {
    /// The cluster the database lives in.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }
}

/// A PostgreSQL server: one this module started, or one given by [`URL`].
pub struct Cluster {
    /// `postgres://` URL of the server's `postgres` database.
    pub url: String,
    host: String,
    port: u16,
    user: String,
    owned: Option<Owned>,
}

/// What a cluster this module started is made of.
struct Owned {
    bin: PathBuf,
    dir: tempfile::TempDir,
    owner: Option<(u32, u32)>,
}

/// A database for the calling test, or `None` when PostgreSQL is missing
/// (after saying so; panics instead when [`REQUIRE`] is set).
pub fn postgres(test: &str) -> Option<Database> {
    available(test, shared)
}

/// A database in a cluster of the calling test's own, which it may stop and
/// start ([`Cluster::stop`], [`Cluster::restart`]) without disturbing other
/// tests; always started here, even when [`URL`] names a server.
pub fn postgres_alone(test: &str) -> Option<Database> {
    available(test, || Cluster::start_here().map(Arc::new))
}

fn available(
    test: &str,
    cluster: impl FnOnce() -> Result<Arc<Cluster>, String>,
) -> Option<Database> {
    let cluster = match cluster() {
        Ok(cluster) => cluster,
        Err(why) => {
            if std::env::var(REQUIRE).is_ok_and(|v| v == "1") {
                panic!("{test}: PostgreSQL is required ({REQUIRE}=1) but {why}");
            }
            eprintln!("{test}: skipped, {why}; to run it: {INSTALL}");
            return None;
        }
    };
    Some(cluster.database())
}

fn shared() -> Result<Arc<Cluster>, String> {
    static SHARED: Mutex<Weak<Cluster>> = Mutex::new(Weak::new());
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(cluster) = shared.upgrade() {
        return Ok(cluster);
    }
    let cluster = Arc::new(Cluster::start()?);
    *shared = Arc::downgrade(&cluster);
    Ok(cluster)
}

impl Cluster {
    fn start() -> Result<Self, String> {
        if let Ok(url) = std::env::var(URL) {
            return Self::given(&url);
        }
        Self::start_here()
    }

    fn start_here() -> Result<Self, String> {
        let bin = server_binaries().ok_or("no PostgreSQL server binaries were found")?;
        let dir = tempfile::Builder::new()
            .prefix("sessiond-pg-")
            .tempdir()
            .map_err(|e| format!("a temporary directory: {e}"))?;
        let owner = if is_root() {
            Some(postgres_user()?)
        } else {
            None
        };
        if let Some((uid, gid)) = owner {
            chown(dir.path(), Some(uid), Some(gid)).map_err(|e| format!("chown: {e}"))?;
        }
        let data = dir.path().join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        ]);
        run(&mut initdb, owner, "initdb")?;
        // A port that was free a moment ago; another process can take it
        // first, so starting is tried a few times.
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port()?;
            let options = format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300 \
                 -c shared_buffers=64MB",
                dir.path().display()
            );
            let mut start = Command::new(bin.join("pg_ctl"));
            start
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(dir.path().join("log"))
                .args(["-o", &options, "-w", "-t", "60", "start"]);
            match run(&mut start, owner, "pg_ctl start") {
                Ok(_) => {
                    return Ok(Self {
                        url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
                        host: "127.0.0.1".into(),
                        port,
                        user: "postgres".into(),
                        owned: Some(Owned { bin, dir, owner }),
                    });
                }
                Err(e) => last = format!("{e}; log: {}", log_tail(&dir.path().join("log"))),
            }
        }
        Err(last)
    }

    fn given(url: &str) -> Result<Self, String> {
        // postgres://user[:password]@host:port/db: the tests only need where
        // it is and who to be.
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or_else(|| format!("{URL} is not a postgres:// URL"))?;
        let (user, hostpart) = rest.split_once('@').unwrap_or(("postgres", rest));
        let user = user.split(':').next().unwrap_or("postgres").to_string();
        let hostport = hostpart.split('/').next().unwrap_or(hostpart);
        let (host, port) = hostport.rsplit_once(':').unwrap_or((hostport, "5432"));
        let port = port.parse().map_err(|_| format!("{URL}: bad port"))?;
        Ok(Self {
            url: url.to_string(),
            host: host.to_string(),
            port,
            user,
            owned: None,
        })
    }

    /// The URL of database `name` in this cluster.
    pub fn url_of(&self, name: &str) -> String {
        let base = self
            .url
            .rsplit_once('/')
            .map_or(self.url.as_str(), |(b, _)| b);
        format!("{base}/{name}")
    }

    /// The server's port on 127.0.0.1 (or the given URL's host).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A fresh, empty database.
    pub fn database(self: &Arc<Self>) -> Database {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "sessiond_test_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        self.sql("postgres", &format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("creating database {name}: {e}"));
        Database {
            url: self.url_of(&name),
            name,
            cluster: self.clone(),
        }
    }

    /// Runs `sql` in database `db` with `psql`; returns what it printed
    /// (unaligned, tuples only).
    pub fn sql(&self, db: &str, sql: &str) -> Result<String, String> {
        let psql = match &self.owned {
            Some(owned) => owned.bin.join("psql"),
            None => PathBuf::from("psql"),
        };
        let mut cmd = Command::new(psql);
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args([
                "-h",
                &self.host,
                "-p",
                &self.port.to_string(),
                "-U",
                &self.user,
                "-d",
                db,
            ])
            .args(["-c", sql]);
        if let Some(password) = self.password() {
            cmd.env("PGPASSWORD", password);
        }
        let out = run(&mut cmd, None, "psql")?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn password(&self) -> Option<String> {
        let rest = self.url.split_once("://")?.1;
        let userinfo = rest.split_once('@')?.0;
        userinfo.split_once(':').map(|(_, p)| p.to_string())
    }

    /// Makes `path` the server's own, as PostgreSQL wants its TLS key
    /// (owned by the user it runs as, mode 0600): when this module started
    /// the server as another user, the file is given to that user.
    pub fn hand_over(&self, path: &Path) -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("chmod {}: {e}", path.display()))?;
        if let Some((uid, gid)) = self.owned.as_ref().and_then(|o| o.owner) {
            chown(path, Some(uid), Some(gid))
                .map_err(|e| format!("chown {}: {e}", path.display()))?;
        }
        Ok(())
    }

    /// Stops the server at once, as a crash or a lost database host would
    /// (`pg_ctl stop -m immediate`). Only for a cluster this module started.
    pub fn stop(&self) -> Result<(), String> {
        let owned = self
            .owned
            .as_ref()
            .ok_or("the cluster was given, not started here")?;
        let mut stop = Command::new(owned.bin.join("pg_ctl"));
        stop.arg("-D")
            .arg(owned.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"]);
        run(&mut stop, owned.owner, "pg_ctl stop").map(drop)
    }

    /// Starts a stopped cluster again on the same port.
    pub fn restart(&self) -> Result<(), String> {
        let owned = self
            .owned
            .as_ref()
            .ok_or("the cluster was given, not started here")?;
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300 -c shared_buffers=64MB",
            self.port,
            owned.dir.path().display()
        );
        let mut start = Command::new(owned.bin.join("pg_ctl"));
        start
            .arg("-D")
            .arg(owned.dir.path().join("data"))
            .arg("-l")
            .arg(owned.dir.path().join("log"))
            .args(["-o", &options, "-w", "-t", "60", "start"]);
        run(&mut start, owned.owner, "pg_ctl start").map(drop)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.owned.is_some() {
            let _ = self.stop();
        }
    }
}

/// The directory of `initdb` and `pg_ctl`: the newest Debian version, else
/// `PATH`.
fn server_binaries() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .find(|dir| dir.join("initdb").exists() && dir.join("pg_ctl").exists())
}

fn is_root() -> bool {
    // The owner of this process's own /proc entry is its effective user.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// uid and gid of the `postgres` user, from /etc/passwd.
fn postgres_user() -> Result<(u32, u32), String> {
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| format!("/etc/passwd: {e}"))?;
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&"postgres") && fields.len() > 3)
                .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
                .flatten()
        })
        .ok_or_else(|| {
            "running as root and there is no `postgres` user to run the server as".into()
        })
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("a free port: {e}"))?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

fn run(cmd: &mut Command, owner: Option<(u32, u32)>, what: &str) -> Result<Output, String> {
    if let Some((uid, gid)) = owner {
        // The server's user may not be able to enter the test's directory.
        cmd.uid(uid).gid(gid).current_dir("/");
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what} did not run: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out)
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}
