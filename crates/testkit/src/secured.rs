//! The engines with TLS and authentication turned on, for tests of herald's
//! protected connections: Redis (`--tls-port`, `requirepass`, an ACL user),
//! nats-server (a configuration file with TLS and a user/password or a token), etcd
//! (https client URLs, optional client certificates, users and `auth enable`) and
//! tansu (SASL). Each option struct's default is the unprotected engine.
//!
//! tansu 0.6 cannot serve TLS (its command line refuses `--cert` together with
//! `--key`), so [`kafka_tls`] puts a TLS terminator (`socat`, OpenSSL) in front of
//! a plain tansu that advertises the terminator's address: every client
//! connection then is a real TLS handshake with a real broker behind it. With
//! `--authentication` on in-memory storage no SCRAM user can be created
//! (creating one needs an authenticated connection), and tansu accepts any PLAIN
//! password, so only the SASL handshake, not a password check, is testable on it.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, required, scratch, spawn_engine, wait_for, Engine, Pki};

/// How a Redis engine is protected.
#[derive(Default, Clone, Copy)]
pub struct RedisSecurity<'a> {
    /// Serve TLS only (no plain port) with the PKI's server certificate.
    pub tls: Option<&'a Pki>,
    /// With `tls`: require a client certificate signed by the PKI's CA.
    pub client_certs: bool,
    /// `requirepass`: the default user's password.
    pub password: Option<&'a str>,
    /// An ACL user (name, password) allowed every command and key.
    pub user: Option<(&'a str, &'a str)>,
}

/// A private `redis-server` protected as `sec` says, on a free port.
pub fn redis(sec: RedisSecurity<'_>) -> Engine {
    redis_on(free_port(), sec)
}

/// [`redis`] on `port`.
pub fn redis_on(port: u16, sec: RedisSecurity<'_>) -> Engine {
    let bin = required("redis-server", "redis-server");
    let dir = scratch("redis-sec", port);
    let mut cmd = Command::new(bin);
    cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&dir);
    if let Some(pki) = sec.tls {
        cmd.args(["--port", "0", "--tls-port", &port.to_string()])
            .arg("--tls-cert-file")
            .arg(&pki.server_cert)
            .arg("--tls-key-file")
            .arg(&pki.server_key)
            .arg("--tls-ca-cert-file")
            .arg(&pki.ca)
            .args([
                "--tls-auth-clients",
                if sec.client_certs { "yes" } else { "no" },
            ]);
    } else {
        cmd.args(["--port", &port.to_string()]);
    }
    if let Some(password) = sec.password {
        cmd.args(["--requirepass", password]);
    }
    if let Some((name, password)) = sec.user {
        cmd.args([
            "--user",
            name,
            "on",
            &format!(">{password}"),
            "~*",
            "&*",
            "+@all",
        ]);
    }
    spawn_engine(&mut cmd, "redis-server", port, dir, sec.tls.is_some())
}

/// How a NATS engine is protected (a user or a token, not both).
#[derive(Default, Clone, Copy)]
pub struct NatsSecurity<'a> {
    /// Require TLS with the PKI's server certificate.
    pub tls: Option<&'a Pki>,
    /// With `tls`: require a client certificate signed by the PKI's CA.
    pub client_certs: bool,
    /// The one user (name, password).
    pub user: Option<(&'a str, &'a str)>,
    /// The token every client must present.
    pub token: Option<&'a str>,
}

/// A quoted string for nats-server's configuration format.
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn path(p: &Path) -> String {
    quoted(&p.display().to_string())
}

/// A private `nats-server` with JetStream, protected as `sec` says, on a free port.
pub fn nats(sec: NatsSecurity<'_>) -> Engine {
    let port = free_port();
    let bin = required("nats-server", "nats-server");
    let dir = scratch("nats-sec", port);
    let mut conf = format!(
        "listen: \"127.0.0.1:{port}\"\njetstream {{ store_dir: {} }}\n",
        path(&dir.join("js"))
    );
    if let Some(pki) = sec.tls {
        conf.push_str(&format!(
            "tls {{\n  cert_file: {}\n  key_file: {}\n  ca_file: {}\n  verify: {}\n  timeout: 2\n}}\n",
            path(&pki.server_cert),
            path(&pki.server_key),
            path(&pki.ca),
            sec.client_certs
        ));
    }
    match (sec.user, sec.token) {
        (Some(_), Some(_)) => panic!("nats-server takes a user or a token, not both"),
        (Some((user, password)), None) => conf.push_str(&format!(
            "authorization {{\n  user: {}\n  password: {}\n}}\n",
            quoted(user),
            quoted(password)
        )),
        (None, Some(token)) => {
            conf.push_str(&format!("authorization {{ token: {} }}\n", quoted(token)))
        }
        (None, None) => {}
    }
    let file = dir.join("nats.conf");
    std::fs::write(&file, conf).unwrap_or_else(|e| panic!("cannot write {}: {e}", file.display()));
    let mut cmd = Command::new(bin);
    cmd.arg("-c").arg(&file);
    spawn_engine(&mut cmd, "nats-server", port, dir, sec.tls.is_some())
}

/// How an etcd engine is protected.
#[derive(Default, Clone, Copy)]
pub struct EtcdSecurity<'a> {
    /// https client URLs with the PKI's server certificate.
    pub tls: Option<&'a Pki>,
    /// With `tls`: require a client certificate signed by the PKI's CA.
    pub client_certs: bool,
    /// Enable authentication: `root` gets this password.
    pub root_password: Option<&'a str>,
    /// With `root_password`: also a user (name, password) whose role may read
    /// and write every key under `/` (what herald needs, and no more).
    pub user: Option<(&'a str, &'a str)>,
    /// `--auth-token-ttl` in seconds (etcd's default is 300).
    pub token_ttl: Option<u32>,
}

/// A private single-member `etcd` protected as `sec` says, on a free port.
pub fn etcd(sec: EtcdSecurity<'_>) -> Engine {
    let port = free_port();
    let bin = required("etcd", "etcd-server etcd-client");
    let dir = scratch("etcd-sec", port);
    let peer = free_port();
    let scheme = if sec.tls.is_some() { "https" } else { "http" };
    let client_url = format!("{scheme}://127.0.0.1:{port}");
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
    if let Some(pki) = sec.tls {
        cmd.arg("--cert-file")
            .arg(&pki.server_cert)
            .arg("--key-file")
            .arg(&pki.server_key);
        if sec.client_certs {
            // etcd 3.4 asks for client certificates as soon as it has a CA.
            cmd.arg("--client-cert-auth")
                .arg("--trusted-ca-file")
                .arg(&pki.ca);
        }
    }
    if let Some(ttl) = sec.token_ttl {
        cmd.args(["--auth-token-ttl", &ttl.to_string()]);
    }
    let engine = spawn_engine(&mut cmd, "etcd", port, dir, sec.tls.is_some());
    let ctl = |args: &[&str]| etcdctl(&engine, &sec, args);
    let start = Instant::now();
    while let Err(e) = ctl(&["endpoint", "health"]) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "etcd on {} did not report healthy within 20 s: {e}",
            engine.addr
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    if let Some(root) = sec.root_password {
        let setup = |args: &[&str]| {
            ctl(args).unwrap_or_else(|e| panic!("etcdctl {}: {e}", args.join(" ")));
        };
        setup(&["user", "add", &format!("root:{root}")]);
        setup(&["user", "grant-role", "root", "root"]);
        if let Some((name, password)) = sec.user {
            setup(&["user", "add", &format!("{name}:{password}")]);
            setup(&["role", "add", "herald"]);
            setup(&[
                "role",
                "grant-permission",
                "herald",
                "--prefix=true",
                "readwrite",
                "/",
            ]);
            setup(&["user", "grant-role", name, "herald"]);
        }
        setup(&["auth", "enable"]);
    }
    engine
}

/// Runs `etcdctl` against `engine` (as root once authentication is on).
fn etcdctl(engine: &Engine, sec: &EtcdSecurity<'_>, args: &[&str]) -> Result<(), String> {
    let bin = required("etcdctl", "etcd-client");
    let mut cmd = Command::new(bin);
    cmd.env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(engine.etcd_endpoint())
        .args(["--dial-timeout", "2s", "--command-timeout", "5s"]);
    if let Some(pki) = sec.tls {
        cmd.arg("--cacert").arg(&pki.ca);
        if sec.client_certs {
            cmd.arg("--cert")
                .arg(&pki.client_cert)
                .arg("--key")
                .arg(&pki.client_key);
        }
    }
    let out = cmd
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run etcdctl: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// A private tansu broker that requires SASL authentication, on a free port.
/// See the module documentation for what tansu can and cannot check.
pub fn kafka_sasl() -> Engine {
    crate::kafka_with(free_port(), None, &["--authentication"])
}

/// A Kafka broker reached only through TLS: tansu behind a TLS terminator.
pub struct TlsKafka {
    /// The broker (plain, on a port of its own that clients are never told).
    pub broker: Engine,
    /// The terminator, stopped on drop.
    proxy: Child,
    /// The TLS address clients use (bootstrap and advertised).
    pub addr: SocketAddr,
}

impl TlsKafka {
    /// `127.0.0.1:<port>` of the TLS side.
    pub fn brokers(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for TlsKafka {
    fn drop(&mut self) {
        let _ = self.proxy.kill();
        let _ = self.proxy.wait();
    }
}

/// tansu reached through TLS with the PKI's server certificate; with
/// `client_certs` the terminator requires a client certificate from the PKI's CA.
pub fn kafka_tls(pki: &Pki, client_certs: bool) -> TlsKafka {
    let tls_port = free_port();
    let plain_port = free_port();
    let advertised = format!("tcp://127.0.0.1:{tls_port}");
    let broker = crate::kafka_with(plain_port, Some(&advertised), &[]);
    let socat = required("socat", "socat");
    let listen = format!(
        "OPENSSL-LISTEN:{tls_port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},cafile={},verify={}",
        pki.server_cert.display(),
        pki.server_key.display(),
        pki.ca.display(),
        u8::from(client_certs)
    );
    let mut proxy = Command::new(socat)
        .arg(listen)
        .arg(format!("TCP:127.0.0.1:{plain_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start socat: {e}"));
    let addr = SocketAddr::from(([127, 0, 0, 1], tls_port));
    wait_for(addr, &mut proxy, "socat (TLS in front of tansu)");
    TlsKafka {
        broker,
        proxy,
        addr,
    }
}
