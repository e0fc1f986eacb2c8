//! The servers a scenario measures, each started on free loopback ports and stopped
//! after its turn: herald in one or more configurations (plain; secure, i.e. TLS
//! listeners and `jwt` auth; history kept for the bench room's type; other builds
//! such as another allocator), nats-server and the floor (plain or TLS).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

use crate::clients::{ClientArgs, Target};
use crate::pki::Credentials;
use crate::push::{Publisher, PushKind};

/// The room every client joins.
pub const ROOM: &str = "bench://1";

/// How long the bench room's history is kept (`history.rooms.<type>.ttl`).
pub const HISTORY_TTL: &str = "10m";

/// The variables that make herald keep the last `size` messages of every room of
/// [`ROOM`]'s type (and give its pushes positions).
pub fn history_env(size: usize) -> Vec<(String, String)> {
    let typ = ROOM
        .split_once("://")
        .map_or(ROOM, |(t, _)| t)
        .to_uppercase();
    vec![
        (
            format!("HERALD_HISTORY__ROOMS__{typ}__SIZE"),
            size.to_string(),
        ),
        (
            format!("HERALD_HISTORY__ROOMS__{typ}__TTL"),
            HISTORY_TTL.to_string(),
        ),
    ]
}

/// Checks that the herald at `bin`, given `env` (from [`history_env`]), keeps
/// `size` messages per room of [`ROOM`]'s type: its `config` command prints the
/// configuration the server would run with.
pub async fn check_history(
    bin: &Path,
    env: &[(String, String)],
    size: usize,
) -> anyhow::Result<()> {
    let out = Command::new(bin)
        .arg("config")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stderr(Stdio::piped())
        .output()
        .await
        .with_context(|| format!("cannot run {} config", bin.display()))?;
    if !out.status.success() {
        bail!(
            "{} config refused the history settings {env:?}: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    if !history_in_config(&text, size) {
        bail!(
            "{} config does not show {size} messages kept for {ROOM}'s room type with {env:?}: \
             this build has no [history] settings, or reads other names",
            bin.display()
        );
    }
    Ok(())
}

/// Whether `config` (as `herald config` prints it) keeps `size` messages per room
/// of [`ROOM`]'s type.
fn history_in_config(config: &str, size: usize) -> bool {
    let typ = ROOM.split_once("://").map_or(ROOM, |(t, _)| t);
    let header = format!("[history.rooms.{typ}]");
    let mut lines = config.lines().skip_while(|l| l.trim() != header);
    lines.next().is_some()
        && lines
            .take_while(|l| !l.trim_start().starts_with('['))
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["size", "=", &size.to_string()])
}

/// A free loopback port (bound, then released for the server to take).
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// A loopback address whose port is free on every address, even for a server
/// that does not reuse addresses and listens on all of them whatever it is told
/// (mosquitto's WebSocket listener): the kernel picks the port for a socket
/// bound to 0.0.0.0 without `SO_REUSEADDR` (the standard library's listeners
/// set it, and may get a port that closed connections of the load generator's
/// other loopback addresses still hold in TIME_WAIT).
pub fn strictly_free_addr() -> anyhow::Result<SocketAddr> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind("0.0.0.0:0".parse()?)?;
    let port = socket.local_addr()?.port();
    Ok(SocketAddr::from(([127, 0, 0, 1], port)))
}

pub(crate) async fn wait_port(
    addr: SocketAddr,
    child: &mut Child,
    what: &str,
) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if let Some(st) = child.try_wait()? {
            bail!("{what} exited early: {st}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{what} did not open {addr}")
}

/// What kind of server answers, for the publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Herald,
    Nats,
    Mosquitto,
    Floor,
}

/// How clients reach a secure server.
#[derive(Debug, Clone)]
pub struct ClientSecurity {
    /// CA the server's certificate chains to.
    pub ca: PathBuf,
    /// HMAC secret when the server runs `jwt` auth.
    pub jwt_secret: Option<String>,
}

/// A server under test.
pub struct Server {
    /// The name in the report.
    pub name: String,
    pub kind: Kind,
    child: Child,
    pub pid: u32,
    /// Where clients connect.
    pub client_addr: SocketAddr,
    pub target: Target,
    /// TLS and token settings the clients need (secure servers).
    pub security: Option<ClientSecurity>,
    /// Where pushes go (HTTP API, NATS TCP, floor control).
    pub push_addr: SocketAddr,
    dir: Option<PathBuf>,
}

impl Server {
    /// Kills the server and removes its scratch directory.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }

    /// A publisher into this server's room `room`.
    pub async fn publisher(
        &self,
        kind: PushKind,
        room: &str,
        mids: (u64, u64),
    ) -> anyhow::Result<Publisher> {
        match self.kind {
            Kind::Herald => Ok(Publisher::herald(self.push_addr, kind, room, mids)),
            Kind::Nats => Publisher::nats(self.push_addr, "bench.room").await,
            Kind::Mosquitto => Publisher::mqtt(self.push_addr, "bench.room").await,
            Kind::Floor => Publisher::floor(self.push_addr).await,
        }
    }

    /// Settings for `n` clients of this server.
    pub fn client_args(&self, n: usize, sources: u8, concurrency: usize) -> ClientArgs {
        ClientArgs {
            room: ROOM.into(),
            sources,
            heartbeat_secs: 120,
            concurrency,
            tls: self.security.is_some(),
            ca: self.security.as_ref().map(|s| s.ca.clone()),
            jwt_secret: self.security.as_ref().and_then(|s| s.jwt_secret.clone()),
            ..ClientArgs::new(self.target, vec![self.client_addr], n)
        }
    }
}

/// The TLS (and auth) side of a secure herald.
#[derive(Debug, Clone)]
pub struct Secure {
    /// Certificate, key, CA and HMAC secret.
    pub creds: Credentials,
    /// Run `auth.mode = "jwt"` with the credentials' secret (else trust mode).
    pub jwt: bool,
}

/// One herald configuration of a run.
#[derive(Debug, Clone)]
pub struct HeraldSpec {
    /// The name in the report.
    pub name: String,
    /// The program and the arguments that start `herald standalone`.
    pub bin: PathBuf,
    pub args: Vec<String>,
    /// TLS listeners (and `jwt` auth) instead of plain ones and trust.
    pub secure: Option<Secure>,
    /// More `HERALD_*` variables (e.g. [`history_env`]).
    pub env: Vec<(String, String)>,
}

/// Shape of the pushes herald batches (`job.room_window`, `job.room_batch`).
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    pub window_ms: u64,
    pub batch: usize,
}

/// Starts herald as `spec` says; clients use TCP (goim frames) when `tcp`, else
/// WebSocket.
pub async fn start_herald(spec: &HeraldSpec, b: Batching, tcp: bool) -> anyhow::Result<Server> {
    let (tcp_addr, ws_addr, http) = (free_addr()?, free_addr()?, free_addr()?);
    let bin = &spec.bin;
    if !bin.exists() && bin.components().count() > 1 {
        bail!(
            "{} not found: build it first (cargo build --release -p herald), pass --herald PATH, or run `herald bench …`",
            bin.display()
        );
    }
    let mut cmd = Command::new(bin);
    cmd.args(&spec.args)
        .env("HERALD_COMET__TCP_BIND", format!("[\"{tcp_addr}\"]"))
        .env("HERALD_COMET__WS_BIND", format!("[\"{ws_addr}\"]"))
        .env("HERALD_LOGIC__HTTP_BIND", http.to_string())
        .env("HERALD_JOB__ROOM_WINDOW", format!("{}ms", b.window_ms))
        .env("HERALD_JOB__ROOM_BATCH", b.batch.to_string())
        .env("HERALD_LOG__LEVEL", "warn")
        // The push benchmarks measure no chat (and leave no database behind).
        .env("HERALD_CHAT__ENABLED", "false")
        // herald keeps descriptors for its HTTP API's connection cap (4,096 by
        // default) out of the client connections' share of the open-file limit; the
        // bench pushes over a handful, so the clients may have the rest.
        .env("HERALD_LIMITS__HTTP__MAX_CONNECTIONS", "64")
        .envs(spec.env.iter().map(|(k, v)| (k, v)));
    let mut client_addr = if tcp { tcp_addr } else { ws_addr };
    let mut security = None;
    if let Some(secure) = &spec.secure {
        // The clients use the TLS listener of their transport; the plain ones stay
        // open on their own ports (nothing connects to them).
        client_addr = free_addr()?;
        let var = if tcp {
            "HERALD_COMET__TLS_TCP_BIND"
        } else {
            "HERALD_COMET__WSS_BIND"
        };
        cmd.env(var, format!("[\"{client_addr}\"]"))
            .env("HERALD_TLS__CERT_FILE", &secure.creds.cert)
            .env("HERALD_TLS__KEY_FILE", &secure.creds.key);
        if secure.jwt {
            cmd.env("HERALD_AUTH__MODE", "jwt")
                .env("HERALD_AUTH__JWT__SECRET", &secure.creds.jwt_secret);
        }
        security = Some(ClientSecurity {
            ca: secure.creds.ca.clone(),
            jwt_secret: secure.jwt.then(|| secure.creds.jwt_secret.clone()),
        });
    }
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    wait_port(http, &mut child, &spec.name).await?;
    wait_port(client_addr, &mut child, &spec.name).await?;
    let pid = child.id().context("herald pid")?;
    Ok(Server {
        name: spec.name.clone(),
        kind: Kind::Herald,
        child,
        pid,
        client_addr,
        target: if tcp {
            Target::HeraldTcp
        } else {
            Target::HeraldWs
        },
        security,
        push_addr: http,
        dir: None,
    })
}

/// Whether the herald at `bin` knows `auth.mode = "jwt"` with an HMAC secret: its
/// `config` command loads the same variables the server would and fails on keys
/// it does not know.
pub async fn supports_jwt(bin: &Path, secret: &str) -> bool {
    Command::new(bin)
        .arg("config")
        .env("HERALD_AUTH__MODE", "jwt")
        .env("HERALD_AUTH__JWT__SECRET", secret)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

/// A peer server's program: `name`, and how to get it when it is missing.
#[derive(Debug, Clone, Copy)]
pub struct PeerProgram {
    /// The executable's name.
    pub name: &'static str,
    /// The option that names it explicitly.
    pub option: &'static str,
    /// The peer's name in `--peers`.
    pub peer: &'static str,
    /// Debian's package.
    pub package: &'static str,
    /// What answers the publisher.
    pub kind: Kind,
    /// How its clients speak.
    pub target: Target,
}

/// nats-server.
pub const NATS: PeerProgram = PeerProgram {
    name: "nats-server",
    option: "--nats-server",
    peer: "nats",
    package: "nats-server",
    kind: Kind::Nats,
    target: Target::NatsWs,
};

/// mosquitto.
pub const MOSQUITTO: PeerProgram = PeerProgram {
    name: "mosquitto",
    option: "--mosquitto",
    peer: "mosquitto",
    package: "mosquitto",
    kind: Kind::Mosquitto,
    target: Target::MqttWs,
};

/// The program to run for a peer: `explicit` (its option), else the first in
/// `PATH`, `/usr/sbin` or `/usr/local/bin`. This program never installs it: a
/// missing one is an error saying how to get it.
pub fn peer_binary(program: PeerProgram, explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/bin")]);
    peer_binary_in(program, explicit, dirs)
}

fn peer_binary_in(
    program: PeerProgram,
    explicit: Option<&Path>,
    dirs: impl Iterator<Item = PathBuf>,
) -> anyhow::Result<PathBuf> {
    let PeerProgram {
        name,
        option,
        peer,
        package,
        ..
    } = program;
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        bail!("{option} {}: no such file", p.display());
    }
    dirs.map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "{name} not found (in PATH, /usr/sbin or /usr/local/bin), and the {peer} peer \
                 needs it: scripts/bench.sh installs it (Debian's package: `apt-get install \
                 {package}`); or pass {option} PATH, or --peers without {peer} to measure \
                 without it"
            )
        })
}

/// Starts nats-server with a WebSocket listener.
pub async fn start_nats(explicit: Option<&Path>) -> anyhow::Result<Server> {
    let bin = peer_binary(NATS, explicit)?;
    let (client, ws) = (free_addr()?, free_addr()?);
    let conf =
        format!("listen: \"{client}\"\nwebsocket {{\n  listen: \"{ws}\"\n  no_tls: true\n}}\n");
    start_peer(NATS, &bin, (client, ws), &conf).await
}

/// Starts mosquitto with a plain MQTT listener (the publisher's) and a
/// WebSocket one (the clients'), anonymous, no persistence, as many clients as
/// the open-file limit allows.
pub async fn start_mosquitto(explicit: Option<&Path>) -> anyhow::Result<Server> {
    let bin = peer_binary(MOSQUITTO, explicit)?;
    // mosquitto's listeners do not reuse addresses: their ports must be free
    // of connections in TIME_WAIT too, on every address.
    let (client, ws) = (strictly_free_addr()?, strictly_free_addr()?);
    let conf = format!(
        "persistence false\nlog_dest stderr\nlog_type error\nlog_type warning\n\
         per_listener_settings false\n\
         allow_anonymous true\nmax_connections -1\n\
         listener {} {}\n\
         listener {} {}\nprotocol websockets\n",
        client.port(),
        client.ip(),
        ws.port(),
        ws.ip()
    );
    start_peer(MOSQUITTO, &bin, (client, ws), &conf).await
}

/// Runs peer `program` (`bin -c <conf>`) with `conf` written to a scratch
/// directory, the publisher's listener at `client` and the clients' WebSocket
/// one at `ws`; its standard error goes to a log there, quoted if it fails.
async fn start_peer(
    program: PeerProgram,
    bin: &Path,
    (client, ws): (SocketAddr, SocketAddr),
    conf: &str,
) -> anyhow::Result<Server> {
    let name = program.name;
    let dir = std::env::temp_dir().join(format!(
        "herald-bench-{name}-{}-{}",
        std::process::id(),
        client.port()
    ));
    std::fs::create_dir_all(&dir)?;
    let conf_path = dir.join(format!("{name}.conf"));
    std::fs::write(&conf_path, conf)?;
    let log = dir.join(format!("{name}.log"));
    let mut child = Command::new(bin)
        .arg("-c")
        .arg(&conf_path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    if let Err(e) = wait_port(ws, &mut child, name).await {
        let said = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&dir);
        bail!("{e:#}; it said: {}", said.trim());
    }
    let pid = child.id().with_context(|| format!("{name} pid"))?;
    Ok(Server {
        name: name.into(),
        kind: program.kind,
        child,
        pid,
        client_addr: ws,
        target: program.target,
        security: None,
        push_addr: client,
        dir: Some(dir),
    })
}

/// Starts the floor (a `floor` process of this program) writing with `writer`,
/// serving wss with `tls`.
pub async fn start_floor(
    b: Batching,
    tls: Option<&Credentials>,
    writer: crate::floor::Writer,
) -> anyhow::Result<Server> {
    let (ws, control) = (free_addr()?, free_addr()?);
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(crate::invocation().self_prefix)
        .args([
            "floor",
            "--ws",
            &ws.to_string(),
            "--control",
            &control.to_string(),
        ])
        .args([
            "--batch",
            &b.batch.to_string(),
            "--window-ms",
            &b.window_ms.to_string(),
            "--writer",
            writer.arg(),
        ]);
    if let Some(c) = tls {
        cmd.arg("--cert").arg(&c.cert).arg("--key").arg(&c.key);
    }
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    wait_port(ws, &mut child, "floor").await?;
    let pid = child.id().context("floor pid")?;
    Ok(Server {
        name: if tls.is_some() {
            format!("{}-secure", writer.peer_name())
        } else {
            writer.peer_name().into()
        },
        kind: Kind::Floor,
        child,
        pid,
        client_addr: ws,
        target: Target::FloorWs,
        security: tls.map(|c| ClientSecurity {
            ca: c.ca.clone(),
            jwt_secret: None,
        }),
        push_addr: control,
        dir: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_settings_are_found_in_the_printed_config() {
        let env = history_env(100);
        assert_eq!(env[0].0, "HERALD_HISTORY__ROOMS__BENCH__SIZE");
        assert_eq!(
            env[1],
            ("HERALD_HISTORY__ROOMS__BENCH__TTL".into(), "10m".into())
        );
        let printed = "[history]\nmeta_ttl = \"1day\"\n\n[history.rooms.bench]\nsize = 100\nttl = \"10m\"\n\n[job]\nsize = 7\n";
        assert!(history_in_config(printed, 100));
        assert!(!history_in_config(printed, 7));
        assert!(!history_in_config("[history]\nmeta_ttl = \"1day\"\n", 100));
    }

    #[test]
    fn a_missing_peer_program_is_an_error_saying_how_to_get_it() {
        let dir = std::env::temp_dir().join(format!("herald-bench-no-peer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for program in [NATS, MOSQUITTO] {
            let err = format!(
                "{:#}",
                peer_binary_in(program, None, [dir.clone()].into_iter()).unwrap_err()
            );
            assert!(
                err.contains(&format!("{} not found", program.name)),
                "{err}"
            );
            assert!(err.contains("scripts/bench.sh installs it"), "{err}");
            assert!(
                err.contains(&format!("apt-get install {}", program.package)),
                "{err}"
            );
            let missing = dir.join(program.name);
            let err = format!(
                "{:#}",
                peer_binary_in(program, Some(&missing), std::iter::empty()).unwrap_err()
            );
            assert!(
                err.contains("no such file") && err.contains(program.option),
                "{err}"
            );

            std::fs::write(&missing, b"").unwrap();
            let found = peer_binary_in(program, None, [dir.clone()].into_iter());
            assert_eq!(found.ok(), Some(missing));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
