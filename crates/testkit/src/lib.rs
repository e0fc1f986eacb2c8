//! Private engine instances for tests: each one is started from its installed
//! binary on a free loopback port with a scratch directory, and stopped (by its own
//! PID) when dropped. `scripts/test.sh` installs the engines; a test that needs one
//! that is missing fails with a message saying how to install it — it never passes
//! silently.
//!
//! [`pki`] generates certificates for TLS tests, and [`secured`] starts the same
//! engines with TLS and authentication.

pub mod pki;
pub mod secured;

pub use pki::Pki;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port: bound and released, and never one this process handed
/// out before. (The kernel may offer a port it just released again; two
/// processes of one test given the same port would fight over it.)
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("cannot find a free port: {e}"));
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Finds an installed binary in `PATH` or the usual system directories.
pub fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/usr/local/bin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

pub(crate) fn required(name: &str, package: &str) -> PathBuf {
    find_binary(name).unwrap_or_else(|| {
        panic!(
            "{name} is not installed; this test needs the real engine. \
             Run scripts/test.sh (it installs it) or `apt-get install {package}`."
        )
    })
}

pub(crate) fn wait_for(addr: SocketAddr, child: &mut Child, what: &str) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited during startup: {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what} did not listen on {addr} within 20 s");
}

/// Starts `cmd` (an engine listening on loopback `port`, its files in `dir`) with
/// its output discarded and waits until it accepts connections.
pub(crate) fn spawn_engine(
    cmd: &mut Command,
    name: &str,
    port: u16,
    dir: PathBuf,
    tls: bool,
) -> Engine {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_for(addr, &mut child, name);
    Engine {
        child,
        addr,
        dir,
        tls,
    }
}

/// A running engine process, stopped on drop.
pub struct Engine {
    pub(crate) child: Child,
    /// Its client address.
    pub addr: SocketAddr,
    pub(crate) dir: PathBuf,
    /// Whether clients must speak TLS to it (the URLs below say so).
    pub(crate) tls: bool,
}

impl Engine {
    /// Kills the process (as a crash would) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `SIGQUIT` and waits for the process: for PostgreSQL an immediate
    /// shutdown, which ends every session at once (killing only the postmaster
    /// would leave its sessions serving).
    pub fn quit(&mut self) {
        self.signal("QUIT");
        let _ = self.child.wait();
    }

    /// Freezes the process (`SIGSTOP`): its connections stay open but nothing
    /// answers, as with a hung or partitioned server. Its data is kept.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Lets a [`pause`](Engine::pause)d process run again (`SIGCONT`).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot send SIG{name} to process {}", self.child.id());
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(crate) fn scratch(name: &str, port: u16) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("herald-test-{name}-{}-{port}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// A private `redis-server` (no persistence) on a free port.
pub fn redis() -> Engine {
    redis_on(free_port())
}

/// A private `redis-server` on `port` (e.g. to bring one back after a kill).
pub fn redis_on(port: u16) -> Engine {
    let bin = required("redis-server", "redis-server");
    let dir = scratch("redis", port);
    let mut cmd = Command::new(bin);
    cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&dir);
    spawn_engine(&mut cmd, "redis-server", port, dir, false)
}

impl Engine {
    /// `redis://<addr>/` for a Redis engine (`rediss://` with TLS).
    pub fn redis_url(&self) -> String {
        format!("{}://{}/", self.scheme("redis", "rediss"), self.addr)
    }

    /// [`redis_url`](Engine::redis_url) with a user name (empty for the default
    /// user) and password.
    pub fn redis_url_as(&self, user: &str, password: &str) -> String {
        format!(
            "{}://{user}:{password}@{}/",
            self.scheme("redis", "rediss"),
            self.addr
        )
    }

    fn scheme(&self, plain: &'static str, tls: &'static str) -> &'static str {
        if self.tls {
            tls
        } else {
            plain
        }
    }
}

/// A private `nats-server` with JetStream on a free port.
pub fn nats() -> Engine {
    nats_on(free_port())
}

/// A private `nats-server` on `port`. Started again on the same port after a
/// [`Engine::kill`] (the killed engine not yet dropped), it reuses the same
/// JetStream store directory, so streams and consumers come back.
pub fn nats_on(port: u16) -> Engine {
    let bin = required("nats-server", "nats-server");
    let dir = scratch("nats", port);
    let mut cmd = Command::new(bin);
    cmd.args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(&dir);
    spawn_engine(&mut cmd, "nats-server", port, dir, false)
}

impl Engine {
    /// `nats://<addr>` for a NATS engine (`tls://` with TLS).
    pub fn nats_url(&self) -> String {
        format!("{}://{}", self.scheme("nats", "tls"), self.addr)
    }
}

// etcd ------------------------------------------------------------------------

/// A private single-member `etcd` on a free client port, with a scratch data dir.
pub fn etcd() -> Engine {
    etcd_on(free_port())
}

/// A private `etcd` on client port `port`. Started again on the same port after a
/// [`Engine::kill`] (the killed engine not yet dropped), it reuses the same data
/// dir and peer port, so it comes back with its data, leases and revisions.
pub fn etcd_on(port: u16) -> Engine {
    let bin = required("etcd", "etcd-server etcd-client");
    let dir = scratch("etcd", port);
    let peer_file = dir.join("peer-port");
    let peer = std::fs::read_to_string(&peer_file)
        .ok()
        .and_then(|p| p.trim().parse::<u16>().ok())
        .unwrap_or_else(|| {
            let p = free_port();
            let _ = std::fs::write(&peer_file, p.to_string());
            p
        });
    let client_url = format!("http://127.0.0.1:{port}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let mut cmd = Command::new(bin);
    cmd.args(["--name", "default", "--data-dir"])
        .arg(dir.join("data"))
        .args(["--listen-client-urls", &client_url])
        .args(["--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("default={peer_url}")])
        .args(["--initial-cluster-state", "new"]);
    let mut engine = spawn_engine(&mut cmd, "etcd", port, dir, false);
    wait_etcd_healthy(engine.addr, &mut engine.child);
    engine
}

/// Waits until etcd's `/health` answers `"health":"true"` (it has a leader and
/// serves requests), not just until its port accepts connections.
fn wait_etcd_healthy(addr: SocketAddr, child: &mut Child) {
    use std::io::{Read, Write};
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        let healthy = TcpStream::connect_timeout(&addr, Duration::from_millis(200))
            .and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                s.write_all(b"GET /health HTTP/1.1\r\nHost: etcd\r\nConnection: close\r\n\r\n")?;
                let mut out = String::new();
                s.read_to_string(&mut out)?;
                Ok(out.contains("\"health\":\"true\""))
            })
            .unwrap_or(false);
        if healthy {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("etcd exited during startup: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("etcd on {addr} did not report healthy within 20 s");
}

impl Engine {
    /// `http://<addr>` for an etcd engine (`https://` with TLS).
    pub fn etcd_endpoint(&self) -> String {
        format!("{}://{}", self.scheme("http", "https"), self.addr)
    }
}

// Kafka ------------------------------------------------------------------------

/// Finds `tansu` in `PATH`, the usual system directories or cargo's bin directory
/// (`cargo install` puts it there).
fn find_tansu() -> Option<PathBuf> {
    find_binary("tansu").or_else(|| {
        let cargo_home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
        Some(cargo_home.join("bin").join("tansu")).filter(|p| p.is_file())
    })
}

/// A private Kafka-compatible broker (`tansu`, in-memory storage) on a free port.
pub fn kafka() -> Engine {
    kafka_on(free_port())
}

/// [`kafka`] on `port` (a broker restarted on its port comes back empty: the
/// storage is in memory).
pub fn kafka_on(port: u16) -> Engine {
    kafka_with(port, None, &[])
}

/// tansu on `port`, advertising `advertised` (default: its own address), with
/// `extra` arguments.
pub(crate) fn kafka_with(port: u16, advertised: Option<&str>, extra: &[&str]) -> Engine {
    let bin = find_tansu().unwrap_or_else(|| {
        panic!(
            "tansu is not installed; this test needs a real Kafka-compatible broker. \
             Run scripts/test.sh (it installs it) or \
             `cargo install tansu --locked --features dynostore`."
        )
    });
    let dir = scratch("kafka", port);
    let url = format!("tcp://127.0.0.1:{port}");
    let mut cmd = Command::new(bin);
    cmd.arg("broker")
        .args(["--listener-url", &url])
        .args(["--advertised-listener-url", advertised.unwrap_or(&url)])
        .args(["--storage-engine", "memory://tansu/"])
        .args(extra)
        .current_dir(&dir);
    spawn_engine(&mut cmd, "tansu", port, dir, false)
}

impl Engine {
    /// `127.0.0.1:<port>`, the bootstrap brokers of a Kafka engine.
    pub fn kafka_brokers(&self) -> String {
        self.addr.to_string()
    }
}

// PostgreSQL -------------------------------------------------------------------

/// The directory holding `initdb`, `postgres` and `pg_isready` (Debian keeps them
/// under `/usr/lib/postgresql/<version>/bin`, outside `PATH`).
fn postgres_bin_dir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|d| d.join("initdb").is_file())
        .collect();
    found.sort();
    found
        .pop()
        .or_else(|| find_binary("initdb").and_then(|p| p.parent().map(PathBuf::from)))
        .unwrap_or_else(|| {
            panic!(
                "PostgreSQL is not installed; this test needs the real engine. \
                 Run scripts/test.sh (it installs it) or `apt-get install postgresql`."
            )
        })
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// `program` from PostgreSQL's bin directory, run as the `postgres` user when
/// this process is root (`initdb` and `postgres` refuse to run as root).
/// `setpriv` execs in place, so the child's PID is the program's own.
fn postgres_command(bin: &std::path::Path, program: &str) -> Command {
    if running_as_root() {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--reset-env",
        ])
        .arg(bin.join(program));
        cmd
    } else {
        Command::new(bin.join(program))
    }
}

/// A private PostgreSQL server on a free loopback port: a fresh cluster made by
/// `initdb` in a scratch directory (trust authentication for the `postgres`
/// user on loopback, no fsync), stopped and removed on drop.
pub fn postgres() -> Engine {
    let bin = postgres_bin_dir();
    let port = free_port();
    let dir = scratch("postgres", port);
    let data = dir.join("data");
    if running_as_root() {
        let ok = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot give {} to the postgres user", dir.display());
    }
    let out = postgres_command(&bin, "initdb")
        .arg("-D")
        .arg(&data)
        .args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run initdb: {e}"));
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut cmd = postgres_command(&bin, "postgres");
    cmd.arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string(), "-k"])
        .arg(&dir)
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "max_connections=200",
        ]);
    let mut engine = spawn_engine(&mut cmd, "postgres", port, dir, false);
    // The port opens before the server accepts sessions.
    let start = Instant::now();
    loop {
        let ready = Command::new(bin.join("pg_isready"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ready {
            break;
        }
        if let Ok(Some(status)) = engine.child.try_wait() {
            panic!("postgres exited during startup: {status}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "postgres on port {port} was not ready within 20 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    engine
}

impl Engine {
    /// Creates database `name` on a PostgreSQL engine and returns its URL
    /// (`postgres://postgres@127.0.0.1:<port>/<name>`).
    pub fn postgres_database(&self, name: &str) -> String {
        let bin = postgres_bin_dir();
        let out = Command::new(bin.join("createdb"))
            .args(["-h", "127.0.0.1", "-p", &self.addr.port().to_string()])
            .args(["-U", "postgres", name])
            .output()
            .unwrap_or_else(|e| panic!("cannot run createdb: {e}"));
        assert!(
            out.status.success(),
            "createdb {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        format!("postgres://postgres@{}/{name}", self.addr)
    }
}
