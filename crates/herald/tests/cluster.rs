//! The cluster end to end: real engines (etcd, Redis and the queue engine under
//! test) and `herald comet`, `herald logic` and `herald job` as separate processes,
//! two of each, configured through TOML files. Clients on both comets receive key,
//! mid, room and broadcast pushes sent through either logic; the node and online
//! APIs reflect both comets; a job killed with SIGKILL mid-stream loses no push the
//! API accepted. Run once per queue backend, and once with everything between
//! the processes protected: gRPC with the cluster token and mutual TLS, etcd
//! over https as a non-root user, Redis over TLS as an ACL user, NATS over TLS
//! with a token. Recovery: a comet killed under clients that recover, and
//! `herald standalone` as a process replaying what a dropped client missed.

#![allow(clippy::unwrap_used)]

#[path = "e2e/support.rs"]
mod support;

#[path = "e2e/recovering.rs"]
mod recovering;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_testkit::secured::{self, EtcdSecurity, NatsSecurity, RedisSecurity};
use herald_testkit::{free_port, Engine, Pki};
use support::{get, post, Client};

const OP: i32 = 1000;

/// A herald process, killed on drop.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then waits (at most `within`) for a clean exit.
    async fn terminate(&mut self, within: Duration) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {within:?} of SIGTERM",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(status.success(), "{} exit status {status}", self.name);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Cluster {
    dir: PathBuf,
    procs: Vec<Proc>,
    /// Client TCP and WebSocket addresses of comet 0 and 1.
    comets: Vec<(SocketAddr, SocketAddr)>,
    /// HTTP API of logic 0 and 1.
    logics: Vec<SocketAddr>,
    /// `metrics.bind` (also `/healthz`, `/readyz`) of comet 0 and 1.
    comet_admin: Vec<SocketAddr>,
    /// `queue` section of the TOML files, to start more processes later.
    common: String,
    /// Index of the Redis store in `_engines`.
    store: usize,
    _engines: Vec<Engine>,
    /// The certificates of a protected cluster (kept while it runs).
    _pki: Option<Pki>,
    /// The HS256 secret when clients authenticate with tokens (`jwt` mode).
    jwt_secret: Option<&'static str>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // How each process stood when the test ended (a crash shows here).
        let ended: Vec<String> = self
            .procs
            .iter_mut()
            .map(|p| match p.child.try_wait() {
                Ok(Some(status)) => format!("exited: {status}"),
                _ => "running".to_string(),
            })
            .collect();
        for p in &mut self.procs {
            p.kill();
        }
        if std::thread::panicking() {
            for (p, ended) in self.procs.iter().zip(&ended) {
                let log = std::fs::read_to_string(&p.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("---- {} ({ended}; last lines) ----", p.name);
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl Cluster {
    /// etcd, a Redis store, the queue engine (`queue_engine` gives its section),
    /// and two comets (zones z1 and z2), two logics and two jobs.
    fn start(name: &str, queue_toml: String, engines: Vec<Engine>) -> Cluster {
        let etcd = herald_testkit::etcd();
        let redis = herald_testkit::redis();
        let (etcd_url, redis_url) = (etcd.etcd_endpoint(), redis.redis_url());
        Cluster::start_with(
            name, queue_toml, engines, etcd, redis, &etcd_url, &redis_url, "", None,
        )
    }

    /// A cluster whose every connection between processes is protected: etcd
    /// (https, user `herald`), the Redis store (TLS, ACL user `herald`), gRPC
    /// (token, mutual TLS). `queue_toml` protects the queue itself.
    fn start_protected(name: &str, pki: Pki, queue_toml: String, engines: Vec<Engine>) -> Cluster {
        let etcd = secured::etcd(EtcdSecurity {
            tls: Some(&pki),
            root_password: Some("root-pw"),
            user: Some(("herald", "etcd-pw")),
            ..Default::default()
        });
        let redis = secured::redis(RedisSecurity {
            tls: Some(&pki),
            password: Some("default-pw"),
            user: Some(("herald", "redis-pw")),
            ..Default::default()
        });
        let (etcd_url, redis_url) = (
            etcd.etcd_endpoint(),
            redis.redis_url_as("herald", "redis-pw"),
        );
        let ca = pki.ca.display();
        let security = format!(
            r#"
[rpc]
token = "cluster-token-0123456789"
[rpc.tls]
cert_file = "{cert}"
key_file = "{key}"
ca_file = "{ca}"
client_ca_file = "{ca}"
[discovery]
username = "herald"
password = "etcd-pw"
[discovery.tls]
ca_file = "{ca}"
[store.tls]
ca_file = "{ca}"
[auth]
mode = "jwt"
[auth.jwt]
secret = "{JWT_SECRET}"
"#,
            cert = pki.server_cert.display(),
            key = pki.server_key.display(),
        );
        Cluster::start_with(
            name,
            queue_toml,
            engines,
            etcd,
            redis,
            &etcd_url,
            &redis_url,
            &security,
            Some(pki),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn start_with(
        name: &str,
        queue_toml: String,
        mut engines: Vec<Engine>,
        etcd: Engine,
        redis: Engine,
        etcd_url: &str,
        redis_url: &str,
        security: &str,
        pki: Option<Pki>,
    ) -> Cluster {
        let common = format!(
            r#"
[server]
env = "test"
region = "r1"

[rpc]
advertise_host = "127.0.0.1"
timeout = "3s"

[discovery]
backend = "etcd"
endpoints = ["{etcd_url}"]
prefix = "/herald-{name}"
lease_ttl = "3s"

[store]
backend = "redis"
redis_url = "{redis_url}"
prefix = "{name}:"

[logic]
online_interval = "200ms"

[comet]
online_report_interval = "200ms"
handshake_timeout = "5s"

[shutdown]
grace = "2s"

{queue_toml}
"#
        );
        let common = merge_toml(&common, security);
        engines.push(etcd);
        engines.push(redis);
        let store = engines.len() - 1;
        let dir =
            std::env::temp_dir().join(format!("herald-cluster-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut c = Cluster {
            dir,
            procs: Vec::new(),
            comets: Vec::new(),
            logics: Vec::new(),
            comet_admin: Vec::new(),
            common,
            store,
            _engines: engines,
            jwt_secret: pki.as_ref().map(|_| JWT_SECRET),
            _pki: pki,
        };
        for i in 0..2 {
            let http = free_port();
            let rpc = free_port();
            c.spawn(
                "logic",
                &format!("logic{i}"),
                &format!(
                    "[logic]\nhttp_bind = \"{}\"\n[rpc]\nlogic_bind = \"{}\"\n",
                    addr(http),
                    addr(rpc)
                ),
            );
            c.logics.push(addr(http));
        }
        for i in 0..2 {
            let (tcp, ws, rpc, admin) = (free_port(), free_port(), free_port(), free_port());
            c.spawn(
                "comet",
                &format!("comet{i}"),
                &format!(
                    "[server]\nzone = \"z{i}\"\n[comet]\npublic_addrs = [\"10.0.0.{i}\"]\ntcp_bind = [\"{}\"]\nws_bind = [\"{}\"]\n[rpc]\ncomet_bind = \"{}\"\n[metrics]\nbind = \"{}\"\n",
                    addr(tcp),
                    addr(ws),
                    addr(rpc),
                    addr(admin)
                ),
            );
            c.comets.push((addr(tcp), addr(ws)));
            c.comet_admin.push(addr(admin));
        }
        for i in 0..2 {
            c.spawn_job(i);
        }
        c
    }

    fn spawn_job(&mut self, i: usize) {
        self.spawn(
            "job",
            &format!("job{i}"),
            &format!("[server]\nid = \"test-job-{i}\"\n"),
        );
    }

    /// Starts `herald <role>` with the common configuration plus `extra` (TOML
    /// tables given twice are merged by writing `extra` into a second file layer:
    /// the common file is rendered with `extra`'s keys appended to each table).
    fn spawn(&mut self, role: &str, name: &str, extra: &str) {
        let toml = merge_toml(&self.common, extra);
        let cfg = self.dir.join(format!("{name}.toml"));
        std::fs::write(&cfg, toml).unwrap();
        let log = self.dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .arg(role)
            .arg("--config")
            .arg(&cfg)
            // CLUSTER_TEST_LOG=debug (a tracing filter) for more detail in the
            // logs printed when a test fails.
            .env(
                "RUST_LOG",
                std::env::var("CLUSTER_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap();
        self.procs.push(Proc {
            name: name.into(),
            child,
            log,
        });
    }

    /// The latest process started under `name` (a restarted job replaces its
    /// earlier self).
    fn proc(&mut self, name: &str) -> &mut Proc {
        self.procs
            .iter_mut()
            .rev()
            .find(|p| p.name == name)
            .unwrap()
    }

    /// Waits until both logics serve and see both comets, and every process lives.
    async fn ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        'wait: loop {
            assert!(Instant::now() < deadline, "cluster did not become ready");
            for p in &mut self.procs {
                assert!(p.alive(), "{} exited during startup", p.name);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            // Every logic and comet says it is ready (its engines answer).
            for h in self.logics.iter().chain(&self.comet_admin) {
                if tokio::net::TcpStream::connect(h).await.is_err() {
                    continue 'wait;
                }
                if get(*h, "/readyz").await.status != 200 {
                    continue 'wait;
                }
            }
            for l in &self.logics {
                let r = get(*l, "/goim/nodes/instances").await;
                let n = r.json()["data"].as_array().map_or(0, |a| a.len());
                if n < 2 {
                    continue 'wait;
                }
            }
            for (tcp, ws) in &self.comets {
                if tokio::net::TcpStream::connect(tcp).await.is_err()
                    || tokio::net::TcpStream::connect(ws).await.is_err()
                {
                    continue 'wait;
                }
            }
            return;
        }
    }
}

/// Merges `extra`'s tables into `base` (keys of a table in `extra` replace the
/// same keys of that table in `base`, nested tables merged alike), so each
/// process file is one valid TOML.
fn merge_toml(base: &str, extra: &str) -> String {
    fn merge(into: &mut toml::Table, add: toml::Table) {
        for (key, value) in add {
            match (into.get_mut(&key), value) {
                (Some(toml::Value::Table(t)), toml::Value::Table(v)) => merge(t, v),
                (_, v) => {
                    into.insert(key, v);
                }
            }
        }
    }
    let mut doc: toml::Table = base.parse().unwrap();
    merge(&mut doc, extra.parse().unwrap());
    toml::to_string(&doc).unwrap()
}

/// Receives pushes until every body in `want` arrived (duplicates are allowed:
/// delivery is at least once).
async fn collect(c: &mut Client, want: &BTreeSet<String>, within: Duration) -> BTreeSet<String> {
    let mut got = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + within;
    while !want.is_subset(&got) {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            break;
        }
        // Short waits (the client gives up on a silent server after 5 s); reads
        // are cancel-safe, so nothing received is lost between them.
        let wait = (deadline - now).min(Duration::from_secs(2));
        let f = match tokio::time::timeout(wait, c.recv()).await {
            Ok(Some(f)) => f,
            Ok(None) => panic!("connection closed while waiting for pushes"),
            Err(_) => continue,
        };
        if f.op == OP {
            got.insert(String::from_utf8_lossy(&f.body).to_string());
        }
    }
    got
}

async fn push_ok(logic: SocketAddr, path: &str, body: &str) {
    let r = post(logic, path, body.as_bytes()).await;
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    assert_eq!(r.json()["code"], 0, "{path}: {}", r.text());
}

/// One client per comet (TCP on comet 0, WebSocket on comet 1), both in room
/// `live://1000`.
async fn clients(c: &Cluster) -> (Client, Client) {
    let mut a = Client::tcp(c.comets[0].0).await;
    authenticate(c, &mut a, 1, "key-a").await;
    let mut b = Client::ws(c.comets[1].1).await;
    authenticate(c, &mut b, 2, "key-b").await;
    (a, b)
}

/// The HS256 secret of the protected cluster's `jwt` mode.
const JWT_SECRET: &str = "cluster-jwt-secret-of-32-bytes-at-least";

/// Authenticates `client` as member `mid` with key `key` in `live://1000`: goim's
/// auth body, or a token when the cluster runs in `jwt` mode.
async fn authenticate(c: &Cluster, client: &mut Client, mid: i64, key: &str) {
    match c.jwt_secret {
        None => client.auth(mid, key, "live://1000", &[OP]).await,
        Some(secret) => {
            let claims = serde_json::json!({
                "sub": mid.to_string(), "key": key, "exp": support::unix_now() + 600,
            });
            let body = serde_json::json!({
                "token": support::jwt_hs256(&claims, secret),
                "room_id": "live://1000",
                "accepts": [OP],
            });
            let seq = client
                .send(herald_proto::Op::AUTH, body.to_string().as_bytes())
                .await;
            let f = client.recv().await.expect("auth reply");
            assert_eq!((f.op, f.seq), (herald_proto::Op::AUTH_REPLY, seq));
        }
    }
}

async fn expect_one(a: &mut Client, b: &mut Client, body: &str) {
    let want = BTreeSet::from([body.to_string()]);
    for (name, c) in [("comet0 client", a), ("comet1 client", b)] {
        let got = collect(c, &want, Duration::from_secs(10)).await;
        assert!(got.contains(body), "{name} did not receive {body:?}");
    }
}

async fn all_push_kinds_reach_both_comets(c: &mut Cluster) {
    c.ready().await;
    let (mut a, mut b) = clients(c).await;
    let (l0, l1) = (c.logics[0], c.logics[1]);

    push_ok(
        l0,
        &format!("/goim/push/keys?operation={OP}&keys=key-a&keys=key-b"),
        "to-keys",
    )
    .await;
    expect_one(&mut a, &mut b, "to-keys").await;
    push_ok(
        l1,
        &format!("/goim/push/mids?operation={OP}&mids=1&mids=2"),
        "to-mids",
    )
    .await;
    expect_one(&mut a, &mut b, "to-mids").await;
    push_ok(
        l0,
        &format!("/goim/push/room?operation={OP}&type=live&room=1000"),
        "to-room",
    )
    .await;
    expect_one(&mut a, &mut b, "to-room").await;
    push_ok(
        l1,
        &format!("/goim/push/all?operation={OP}&speed=0"),
        "to-all",
    )
    .await;
    expect_one(&mut a, &mut b, "to-all").await;

    // Both logics list both comets, in both zones.
    for l in [l0, l1] {
        let r = get(l, "/goim/nodes/instances").await.json();
        let zones: BTreeSet<String> = r["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["zone"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(zones, BTreeSet::from(["z0".into(), "z1".into()]), "{r}");
        let r = get(l, "/goim/nodes/weighted?platform=tcp").await.json();
        let mut nodes: Vec<&str> = r["data"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        nodes.sort();
        assert_eq!(nodes, ["10.0.0.0", "10.0.0.1"], "{r}");
    }
    // Online counts add up over both comets.
    support::eventually("room online count of 2 on both logics", || async {
        let mut ok = true;
        for l in [l0, l1] {
            let r = get(l, "/goim/online/room?type=live&rooms=1000")
                .await
                .json();
            ok &= r["data"]["1000"] == 2;
            let t = get(l, "/goim/online/total").await.json();
            ok &= t["data"]["conn_count"] == 2;
        }
        ok
    })
    .await;
    // Each logic's dashboard shows the cluster's nodes from the registry: both
    // comets with their connections and the deliveries they reported (each
    // delivered four pushes to its client), both logics, and the jobs.
    support::eventually("both comets' deliveries on both dashboards", || async {
        let mut ok = true;
        for l in [l0, l1] {
            let d = get(l, "/_/dashboard/snapshot").await.json();
            ok &= d["role"] == "logic" && d["connections"] == 2;
            let nodes = d["nodes"].as_array().cloned().unwrap_or_default();
            let of = |k: &str| nodes.iter().filter(|n| n["kind"] == k).count();
            ok &= of("comet") == 2 && of("logic") == 2 && of("job") == 2;
            ok &= nodes.iter().filter(|n| n["kind"] == "comet").all(|n| {
                n["health"] == "up" && n["connections"] == 1 && n["delivered"].as_f64() >= Some(4.0)
            });
        }
        ok
    })
    .await;
    a.heartbeat_until(2).await;
    b.heartbeat_until(2).await;
}

/// Room pushes sent one after another through both logics arrive in order on
/// both comets, with two jobs consuming.
async fn room_order_holds_with_two_jobs(c: &mut Cluster) {
    let (mut a, mut b) = clients(c).await;
    let n = 60;
    for i in 0..n {
        let logic = c.logics[i % 2];
        push_ok(
            logic,
            &format!("/goim/push/room?operation={OP}&type=live&room=1000"),
            &format!("o{i:03}"),
        )
        .await;
    }
    for (name, client) in [("comet0 client", &mut a), ("comet1 client", &mut b)] {
        let mut got = Vec::new();
        while got.len() < n {
            let f = tokio::time::timeout(Duration::from_secs(10), client.recv())
                .await
                .unwrap_or_else(|_| panic!("{name}: only {} of {n} room pushes arrived", got.len()))
                .expect("connection open");
            if f.op == OP {
                got.push(String::from_utf8_lossy(&f.body).to_string());
            }
        }
        let want: Vec<String> = (0..n).map(|i| format!("o{i:03}")).collect();
        assert_eq!(got, want, "{name}: room pushes out of order");
    }
}

/// Jobs join and leave (cleanly, SIGTERM) again and again while a stream of room
/// pushes goes to 50 rooms: partitions move between jobs each time, and still
/// every client receives its room's messages exactly once, in order — nothing
/// lost, nothing repeated (a restarted job resumes after the acknowledged ones).
async fn job_churn_keeps_rooms_in_order(c: &mut Cluster) {
    const ROOMS: usize = 50;
    const PER_ROOM: usize = 40;
    let mut clients = Vec::with_capacity(ROOMS);
    for r in 0..ROOMS {
        let mut client = if r % 2 == 0 {
            Client::tcp(c.comets[0].0).await
        } else {
            Client::ws(c.comets[1].1).await
        };
        let room = format!("live://churn{r}");
        client
            .auth(20_000 + r as i64, &format!("churn-{r}"), &room, &[OP])
            .await;
        clients.push(client);
    }
    let path = |r: usize| format!("/goim/push/room?operation={OP}&type=live&room=churn{r}");
    let sent = Arc::new(AtomicUsize::new(0));
    let pusher = {
        let (logics, sent) = (c.logics.clone(), sent.clone());
        tokio::spawn(async move {
            for seq in 0..PER_ROOM {
                for r in 0..ROOMS {
                    let logic = logics[(seq + r) % 2];
                    push_ok(logic, &path(r), &format!("r{r}-{seq:03}")).await;
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    // Each step once the stream has reached its share: a job joins, one leaves,
    // the one that left comes back under the same id, and so on.
    let total = ROOMS * PER_ROOM;
    let steps: [(usize, &str, usize); 6] = [
        (10, "start", 2),
        (25, "stop", 0),
        (40, "start", 0),
        (55, "stop", 2),
        (70, "stop", 1),
        (85, "start", 1),
    ];
    for (percent, what, job) in steps {
        while sent.load(Ordering::Relaxed) < total * percent / 100 {
            assert!(!pusher.is_finished(), "the pusher ended early");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        match what {
            "start" => c.spawn_job(job),
            _ => {
                c.proc(&format!("job{job}"))
                    .terminate(Duration::from_secs(30))
                    .await
            }
        }
    }
    pusher.await.unwrap();
    // A last message per room: whatever a room receives before it must be
    // exactly its stream, in order.
    for r in 0..ROOMS {
        push_ok(c.logics[r % 2], &path(r), &format!("r{r}-end")).await;
    }
    for (r, client) in clients.iter_mut().enumerate() {
        let mut got = Vec::new();
        loop {
            let f = tokio::time::timeout(Duration::from_secs(20), client.recv())
                .await
                .unwrap_or_else(|_| panic!("room {r}: stalled after {got:?}"))
                .expect("connection open");
            if f.op != OP {
                continue;
            }
            let body = String::from_utf8_lossy(&f.body).to_string();
            if body.ends_with("-end") {
                break;
            }
            got.push(body);
        }
        let want: Vec<String> = (0..PER_ROOM).map(|i| format!("r{r}-{i:03}")).collect();
        assert_eq!(got, want, "room {r}: lost, repeated or out of order");
    }
}

/// Pushes a stream of room messages through both logics, SIGKILLs job 0 part way,
/// and checks that every push the API accepted reaches both clients.
async fn killed_job_loses_nothing(c: &mut Cluster, redelivery: Duration) {
    let (mut a, mut b) = clients(c).await;
    let (l0, l1) = (c.logics[0], c.logics[1]);
    let mut sent = BTreeSet::new();
    for i in 0..120 {
        if i == 40 {
            c.proc("job0").kill();
        }
        let body = format!("m{i:03}");
        let logic = if i % 2 == 0 { l0 } else { l1 };
        push_ok(
            logic,
            &format!("/goim/push/room?operation={OP}&type=live&room=1000"),
            &body,
        )
        .await;
        sent.insert(body);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let within = redelivery + Duration::from_secs(20);
    for (name, client) in [("comet0 client", &mut a), ("comet1 client", &mut b)] {
        let got = collect(client, &sent, within).await;
        let missing: Vec<_> = sent.difference(&got).collect();
        assert!(
            missing.is_empty(),
            "{name} is missing {} pushes: {missing:?}",
            missing.len()
        );
    }
    // A restarted job joins the group again and takes work.
    c.spawn_job(0);
    push_ok(
        l0,
        &format!("/goim/push/room?operation={OP}&type=live&room=1000"),
        "after-restart",
    )
    .await;
    expect_one(&mut a, &mut b, "after-restart").await;
}

/// How a test takes an engine away.
enum Outage {
    /// Killed, then a new process (given the old one) on its port.
    Crash(fn(&Engine) -> Engine),
    /// Frozen (`SIGSTOP`: connections open, nothing answers), then continued
    /// with its data.
    Hang,
}

/// The push API answers 503 while the queue engine is down and recovers when it
/// is back.
async fn queue_outage_is_503(c: &mut Cluster, engine: usize, outage: Outage) {
    let l0 = c.logics[0];
    let path = format!("/goim/push/room?operation={OP}&type=live&room=1000");
    match outage {
        Outage::Crash(_) => c._engines[engine].kill(),
        Outage::Hang => c._engines[engine].pause(),
    }
    let r = post(l0, &path, b"while-down").await;
    assert_eq!(r.status, 503, "push with the queue down: {}", r.text());
    assert_ne!(r.json()["code"], 0);
    // logic says so to its balancer too, naming the engine.
    eventually_not_ready(l0, "queue").await;
    match outage {
        Outage::Crash(restart) => {
            // The killed engine stays in the list (its directory is reused by
            // the new one).
            let back = restart(&c._engines[engine]);
            c._engines.push(back);
        }
        Outage::Hang => c._engines[engine].resume(),
    }
    let (mut a, mut b) = clients(c).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = post(l0, &path, b"after-outage").await;
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(
            Instant::now() < deadline,
            "push API did not recover after the queue came back"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    expect_one(&mut a, &mut b, "after-outage").await;
    eventually_ready(l0).await;
}

/// Waits until `/readyz` at `http` answers 503 naming `check` (one round of
/// checks answers for a second, so the change shows within about that).
async fn eventually_not_ready(http: SocketAddr, check: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(http, "/readyz").await;
        if r.status == 503 {
            let message = r.json()["message"].as_str().unwrap_or_default().to_string();
            assert!(message.contains(check), "{}", r.text());
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still ready with the {check} down: {}",
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until `/readyz` at `http` answers 200.
async fn eventually_ready(http: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = get(http, "/readyz").await;
        if r.status == 200 {
            return;
        }
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(Instant::now() < deadline, "still not ready: {}", r.text());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// SIGTERM to a comet drains it: it answers `/readyz` with 503, leaves discovery
/// (logic stops listing it), closes its WebSocket clients with 1012 and exits 0;
/// the other comet keeps serving.
async fn comet_drains_on_sigterm(c: &mut Cluster) {
    let (mut a, mut b) = clients(c).await;
    let admin = c.comet_admin[1];
    let pid = c.proc("comet1").child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    // Readiness turns 503 at once (the drain itself takes shutdown.drain).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::net::TcpStream::connect(admin).await {
            Err(_) => break,
            Ok(_) => {
                if get(admin, "/readyz").await.status == 503 {
                    break;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "a draining comet still says it is ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        b.close_code().await,
        Some(herald_proto::ws::close::SERVICE_RESTART)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(c.logics[0], "/goim/nodes/instances").await;
        if r.json()["data"].as_array().map_or(0, |l| l.len()) == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the drained comet is still listed: {}",
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = loop {
        if let Some(st) = c.proc("comet1").child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "the drained comet did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "comet exit status {status}");
    push_ok(
        c.logics[0],
        &format!("/goim/push/keys?operation={OP}&keys=key-a"),
        "after-drain",
    )
    .await;
    let f = a.recv_push().await;
    assert_eq!(&f.body[..], b"after-drain");
}

/// The push API answers 503 while the Redis store is down (routes cannot be
/// read) and recovers by itself when it is back.
async fn store_outage_is_503(c: &mut Cluster, restart: impl FnOnce(&Engine) -> Engine) {
    let l0 = c.logics[0];
    let path = format!("/goim/push/keys?operation={OP}&keys=key-a");
    let store = c.store;
    c._engines[store].kill();
    let r = post(l0, &path, b"while-down").await;
    assert_eq!(r.status, 503, "push with the store down: {}", r.text());
    assert_ne!(r.json()["code"], 0);
    eventually_not_ready(l0, "store").await;
    let back = restart(&c._engines[store]);
    c._engines.push(back);
    // The store came back empty: clients connecting now are routed again.
    let (mut a, mut b) = clients(c).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = post(
            l0,
            &format!("/goim/push/keys?operation={OP}&keys=key-a&keys=key-b"),
            b"after-store",
        )
        .await;
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(
            Instant::now() < deadline,
            "push API did not recover after the store came back"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    expect_one(&mut a, &mut b, "after-store").await;
    eventually_ready(l0).await;
}

fn redis_queue_toml(url: &str, claim: Duration) -> String {
    format!(
        "[queue]\nbackend = \"redis\"\n[queue.redis]\nurl = \"{url}\"\nclaim_idle = \"{}ms\"\n",
        claim.as_millis()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_on_redis_streams() {
    let queue = herald_testkit::redis();
    let claim = Duration::from_secs(2);
    let toml = redis_queue_toml(&queue.redis_url(), claim);
    let mut c = Cluster::start("redis", toml, vec![queue]);
    all_push_kinds_reach_both_comets(&mut c).await;
    room_order_holds_with_two_jobs(&mut c).await;
    job_churn_keeps_rooms_in_order(&mut c).await;
    killed_job_loses_nothing(&mut c, claim).await;
    queue_outage_is_503(
        &mut c,
        0,
        Outage::Crash(|old| herald_testkit::redis_on(old.addr.port())),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_on_nats_jetstream() {
    let queue = herald_testkit::nats();
    let ack_wait = Duration::from_secs(2);
    let toml = format!(
        "[queue]\nbackend = \"nats\"\n[queue.nats]\nurl = \"{}\"\nack_wait = \"2s\"\n",
        queue.nats_url()
    );
    let mut c = Cluster::start("nats", toml, vec![queue]);
    all_push_kinds_reach_both_comets(&mut c).await;
    room_order_holds_with_two_jobs(&mut c).await;
    job_churn_keeps_rooms_in_order(&mut c).await;
    killed_job_loses_nothing(&mut c, ack_wait).await;
    queue_outage_is_503(
        &mut c,
        0,
        Outage::Crash(|old| herald_testkit::nats_on(old.addr.port())),
    )
    .await;
    store_outage_is_503(&mut c, |old| herald_testkit::redis_on(old.addr.port())).await;
    comet_drains_on_sigterm(&mut c).await;
}

/// Without the `kafka` feature (on by default) the binary has no Kafka queue:
/// that is a failure to see, not a test to skip.
#[cfg(not(feature = "kafka"))]
#[test]
fn cluster_on_kafka() {
    panic!("the Kafka cluster test needs herald's `kafka` feature (a default one): run without --no-default-features, or with --features kafka");
}

#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_on_kafka() {
    let queue = herald_testkit::kafka();
    let toml = format!(
        "[queue]\nbackend = \"kafka\"\n[queue.kafka]\nbrokers = [\"{}\"]\n",
        queue.kafka_brokers()
    );
    let mut c = Cluster::start("kafka", toml, vec![queue]);
    all_push_kinds_reach_both_comets(&mut c).await;
    room_order_holds_with_two_jobs(&mut c).await;
    job_churn_keeps_rooms_in_order(&mut c).await;
    // The dead job's partitions move once its registry lease expires.
    killed_job_loses_nothing(&mut c, Duration::from_secs(10)).await;
    queue_outage_is_503(&mut c, 0, Outage::Hang).await;
    // The in-memory broker comes back empty: herald creates the topic again and
    // the jobs reopen their consumers.
    queue_outage_is_503(
        &mut c,
        0,
        Outage::Crash(|old| herald_testkit::kafka_on(old.addr.port())),
    )
    .await;
}

/// Everything between the processes protected (see [`Cluster::start_protected`]),
/// the queue on NATS JetStream over TLS with a token: every kind of push still
/// reaches both comets, in order, and a killed job still loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_protected_end_to_end() {
    let pki = Pki::new();
    let queue = secured::nats(NatsSecurity {
        tls: Some(&pki),
        token: Some("nats-token"),
        ..Default::default()
    });
    let toml = format!(
        "[queue]\nbackend = \"nats\"\n[queue.nats]\nurl = \"{}\"\nack_wait = \"2s\"\ntoken = \"nats-token\"\n[queue.nats.tls]\nca_file = \"{}\"\n",
        queue.nats_url(),
        pki.ca.display()
    );
    let mut c = Cluster::start_protected("protected", pki, toml, vec![queue]);
    all_push_kinds_reach_both_comets(&mut c).await;
    // The comets registered TLS addresses, and nothing else.
    let r = get(c.logics[0], "/goim/nodes/instances").await.json();
    let addrs: Vec<&str> = r["data"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|i| i["addrs"].as_array().unwrap())
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(addrs.len(), 2, "{r}");
    assert!(addrs.iter().all(|a| a.starts_with("grpcs://")), "{r}");
    // Clients authenticate with tokens checked by logic across gRPC: goim's plain
    // body and a forged token are refused on either comet, the others keep theirs.
    let (mut a, mut b) = clients(&c).await;
    let mut plain = Client::ws(c.comets[1].1).await;
    plain
        .send(
            herald_proto::Op::AUTH,
            &support::auth_body(1, "key-a", "live://1000", &[OP]),
        )
        .await;
    assert!(
        plain.recv().await.is_none(),
        "a client without a token was let in"
    );
    assert_eq!(
        plain.close_code,
        Some(herald_proto::ws::close::POLICY_VIOLATION)
    );
    let forged = support::jwt_hs256(
        &serde_json::json!({"sub": "1", "key": "key-a", "exp": support::unix_now() + 600}),
        "a-forged-secret-that-is-long-enough-too",
    );
    let mut f = Client::tcp(c.comets[0].0).await;
    f.send(
        herald_proto::Op::AUTH,
        serde_json::json!({"token": forged}).to_string().as_bytes(),
    )
    .await;
    assert!(f.recv().await.is_none(), "a forged token was let in");
    push_ok(
        c.logics[0],
        &format!("/goim/push/room?operation={OP}&type=live&room=1000"),
        "tokens-checked",
    )
    .await;
    expect_one(&mut a, &mut b, "tokens-checked").await;
    room_order_holds_with_two_jobs(&mut c).await;
    killed_job_loses_nothing(&mut c, Duration::from_secs(2)).await;
}

/// A role started before its engines reports what it cannot reach, keeps
/// retrying, and serves once they are up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_wait_for_their_engines() {
    let (etcd_port, redis_port, queue_port) = (free_port(), free_port(), free_port());
    let (http, rpc) = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("herald-wait-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("logic.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[rpc]
advertise_host = "127.0.0.1"
logic_bind = "{rpc}"
[logic]
http_bind = "{http}"
[discovery]
backend = "etcd"
endpoints = ["http://127.0.0.1:{etcd_port}"]
[store]
backend = "redis"
redis_url = "redis://127.0.0.1:{redis_port}/"
[queue]
backend = "redis"
[queue.redis]
url = "redis://127.0.0.1:{queue_port}/"
"#,
            rpc = addr(rpc),
            http = addr(http),
        ),
    )
    .unwrap();
    let log = dir.join("logic.log");
    let mut logic = Proc {
        name: "logic".into(),
        child: Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["logic", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        log: log.clone(),
    };
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !read_log().contains(&format!(
        "cannot reach etcd at http://127.0.0.1:{etcd_port}"
    )) {
        assert!(
            logic.alive(),
            "logic exited instead of waiting:\n{}",
            read_log()
        );
        assert!(
            Instant::now() < deadline,
            "no clear error about etcd:\n{}",
            read_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _etcd = herald_testkit::etcd_on(etcd_port);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !read_log().contains(&format!(
        "cannot reach the Redis store at redis://127.0.0.1:{redis_port}/"
    )) {
        assert!(
            logic.alive(),
            "logic exited instead of waiting:\n{}",
            read_log()
        );
        assert!(
            Instant::now() < deadline,
            "no clear error about Redis:\n{}",
            read_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _redis = herald_testkit::redis_on(redis_port);
    let _queue = herald_testkit::redis_on(queue_port);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(logic.alive(), "logic exited:\n{}", read_log());
        if tokio::net::TcpStream::connect(addr(http)).await.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "logic did not start once its engines were up:\n{}",
            read_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = post(
        addr(http),
        &format!("/goim/push/room?operation={OP}&type=live&room=1"),
        b"hi",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    logic.kill();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A recovering client that keeps reading, and reconnects with its positions to
/// `fallback` whenever its connection ends (as the SDK does). Returns the pushes
/// as the application saw them (stream kind and body, in arrival order) and the
/// statuses of every op 25, once it has `rooms` room pushes and `mids` mid pushes
/// or `within` has passed.
async fn read_and_recover(
    first: SocketAddr,
    fallback: SocketAddr,
    ws: bool,
    mid: i64,
    (rooms, mids): (usize, usize),
    within: Duration,
) -> (
    Vec<(herald_proto::recovery::StreamKind, String)>,
    Vec<String>,
) {
    use herald_proto::recovery::StreamKind;
    use recovering::{Positions, Recovering, Seen};
    let key = format!("rk-{mid}");
    let deadline = tokio::time::Instant::now() + within;
    let mut seen = Vec::new();
    let mut statuses = Vec::new();
    let mut positions = Positions::default();
    let mut addr = first;
    let count = |seen: &Vec<(StreamKind, String)>, k| seen.iter().filter(|(s, _)| *s == k).count();
    while (count(&seen, StreamKind::Room) < rooms || count(&seen, StreamKind::Mid) < mids)
        && tokio::time::Instant::now() < deadline
    {
        let mut c =
            Recovering::connect(addr, ws, mid, &key, "chat://kill", positions.clone()).await;
        loop {
            let wait = deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .min(Duration::from_secs(2));
            match tokio::time::timeout(wait, c.try_next()).await {
                Ok(Some(Seen::Push(Some((kind, _)), OP, body))) => seen.push((kind, body)),
                Ok(Some(Seen::Push(other, op, body))) => {
                    panic!("unexpected push {other:?} {op} {body}")
                }
                Ok(Some(Seen::States(states))) => statuses.extend(
                    states
                        .iter()
                        .map(|s| format!("{}={:?}", s.stream, s.status)),
                ),
                // The connection ended: reconnect elsewhere with the positions.
                Ok(None) => break,
                Err(_) => {}
            }
            if (count(&seen, StreamKind::Room) >= rooms && count(&seen, StreamKind::Mid) >= mids)
                || tokio::time::Instant::now() >= deadline
            {
                break;
            }
        }
        positions = c.positions.clone();
        addr = fallback;
    }
    (seen, statuses)
}

/// A comet is SIGKILLed while 1,000 messages are pushed to a room and to
/// members; its clients reconnect to the other comet and recover. Every client
/// sees every message exactly once, each stream in order.
async fn killed_comet_loses_nothing_for_recovering_clients(c: &mut Cluster) {
    use herald_proto::recovery::StreamKind;
    const PER_COMET: i64 = 8;
    const N: usize = 500;
    let (c0, c1) = (c.comets[0], c.comets[1]);
    let mut readers = Vec::new();
    for i in 0..2 * PER_COMET {
        let on_comet0 = i < PER_COMET;
        let ws = i % 2 == 1;
        let pick = |(tcp, wsa): (SocketAddr, SocketAddr)| if ws { wsa } else { tcp };
        let (first, fallback) = if on_comet0 {
            (pick(c0), pick(c1))
        } else {
            (pick(c1), pick(c1))
        };
        readers.push(tokio::spawn(read_and_recover(
            first,
            fallback,
            ws,
            500 + i,
            (N, N),
            Duration::from_secs(90),
        )));
    }
    // Every reader is in: each member shows online on some comet.
    let mids: Vec<String> = (0..2 * PER_COMET)
        .map(|i| format!("mids={}", 500 + i))
        .collect();
    let mids = mids.join("&");
    let (l0, l1) = (c.logics[0], c.logics[1]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = get(l0, "/goim/online/room?type=chat&rooms=kill").await;
        if r.json()["data"]["kill"] == (2 * PER_COMET) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "readers never all joined: {}",
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 0..N {
        if i == N / 3 {
            c.proc("comet0").kill();
        }
        let logic = if i % 2 == 0 { l0 } else { l1 };
        push_ok(
            logic,
            &format!("/goim/push/room?operation={OP}&type=chat&room=kill"),
            &format!("r{i:03}"),
        )
        .await;
        push_ok(
            logic,
            &format!("/goim/push/mids?operation={OP}&{mids}"),
            &format!("m{i:03}"),
        )
        .await;
    }
    let want_rooms: Vec<String> = (0..N).map(|i| format!("r{i:03}")).collect();
    let want_mids: Vec<String> = (0..N).map(|i| format!("m{i:03}")).collect();
    for (i, r) in readers.into_iter().enumerate() {
        let (seen, statuses) = r.await.unwrap();
        let of = |k| -> Vec<String> {
            seen.iter()
                .filter(|(s, _)| *s == k)
                .map(|(_, b)| b.clone())
                .collect()
        };
        let (rooms, mids) = (of(StreamKind::Room), of(StreamKind::Mid));
        assert_eq!(
            rooms, want_rooms,
            "reader {i}: room pushes (statuses {statuses:?})"
        );
        assert_eq!(
            mids, want_mids,
            "reader {i}: mid pushes (statuses {statuses:?})"
        );
        assert!(
            !statuses.iter().any(|s| s.ends_with("Reload")),
            "reader {i} was told to reload: {statuses:?}"
        );
        if (i as i64) < PER_COMET {
            assert!(
                statuses.iter().filter(|s| s.ends_with("Recovered")).count() >= 2,
                "reader {i} on the killed comet recovered both streams elsewhere: {statuses:?}"
            );
        }
    }
}

/// Recovery on a cluster: history in the shared Redis, a comet killed mid-stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_recovery_survives_a_killed_comet() {
    let queue = herald_testkit::redis();
    let toml = redis_queue_toml(&queue.redis_url(), Duration::from_secs(2));
    let etcd = herald_testkit::etcd();
    let redis = herald_testkit::redis();
    let (etcd_url, redis_url) = (etcd.etcd_endpoint(), redis.redis_url());
    let history = r#"
[history.rooms.chat]
size = 2000
ttl = "10m"

[history.mids]
size = 2000
ttl = "10m"
"#;
    let mut c = Cluster::start_with(
        "recovery",
        toml,
        vec![queue],
        etcd,
        redis,
        &etcd_url,
        &redis_url,
        history,
        None,
    );
    c.ready().await;
    killed_comet_loses_nothing_for_recovering_clients(&mut c).await;
}

/// Recovery with `herald standalone` as a process of its own: a client drops its
/// connection, 100 room pushes and 100 mid pushes happen, it reconnects and gets
/// all 200 in order, then live ones (over TCP and over WebSocket).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_process_replays_what_a_dropped_client_missed() {
    let dir =
        std::env::temp_dir().join(format!("herald-standalone-recovery-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (tcp, ws, http) = (addr(free_port()), addr(free_port()), addr(free_port()));
    let toml = format!(
        r#"
[comet]
tcp_bind = ["{tcp}"]
ws_bind = ["{ws}"]

[logic]
http_bind = "{http}"

[history.rooms.chat]
size = 500
ttl = "10m"

[history.mids]
size = 500
ttl = "10m"
"#
    );
    let cfg = dir.join("standalone.toml");
    std::fs::write(&cfg, toml).unwrap();
    let log = dir.join("standalone.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("standalone")
        .arg("--config")
        .arg(&cfg)
        .env("HERALD_CHAT__DATA_DIR", dir.join("chat"))
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let mut p = Proc {
        name: "standalone".into(),
        child,
        log,
    };
    support::eventually("standalone ready", || async {
        tokio::net::TcpStream::connect(http).await.is_ok()
            && get(http, "/readyz").await.status == 200
    })
    .await;
    recovering::drop_and_recover(tcp, http, false).await;
    recovering::drop_and_recover(ws, http, true).await;
    assert!(p.alive(), "standalone exited: see {}", p.log.display());
    p.terminate(Duration::from_secs(10)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The session secret the chat's logics share.
const CHAT_SECRET: &str = "cluster-chat-secret-of-32-bytes-at-least";

/// The chat on the cluster: both logics serve it from one PostgreSQL database;
/// an agent on comet 0 and a visitor on comet 1 (each connected with its session
/// token) chat through different logics, and history and unread counts read the
/// same through either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_on_two_logics_and_one_postgresql() {
    use serde_json::json;
    use support::{
        chat_call, chat_event, chat_event_of, chat_op, chat_register, chat_socket, chat_visitor,
    };

    let pg = herald_testkit::postgres();
    let database = pg.postgres_database("chat");
    let queue = herald_testkit::redis();
    let toml = redis_queue_toml(&queue.redis_url(), Duration::from_secs(2));
    let etcd = herald_testkit::etcd();
    let redis = herald_testkit::redis();
    let (etcd_url, redis_url) = (etcd.etcd_endpoint(), redis.redis_url());
    let chat = format!("[chat]\ndatabase = \"{database}\"\nsecret = \"{CHAT_SECRET}\"\n");
    let mut c = Cluster::start_with(
        "chat",
        toml,
        vec![queue, pg],
        etcd,
        redis,
        &etcd_url,
        &redis_url,
        &chat,
        None,
    );
    c.ready().await;
    let (l0, l1) = (c.logics[0], c.logics[1]);

    // The agent registers through logic 0; the visitor arrives through logic 1.
    let agent = chat_register(l0, "acme", "alice").await["token"]
        .as_str()
        .unwrap()
        .to_string();
    let (visitor, conv) = chat_visitor(l1, "acme").await;
    let msgs = format!("/chat/api/conversations/{conv}/messages");

    let mut a = chat_socket(c.comets[0].1, &agent).await;
    let mut v = chat_socket(c.comets[1].1, &visitor).await;

    // Visitor → agent through logic 1, agent → visitor through logic 0.
    let r = chat_call(
        l1,
        "POST",
        &msgs,
        Some(&visitor),
        Some(json!({"body": "hello from z2"})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    for s in [&mut a, &mut v] {
        assert_eq!(chat_event(s).await["message"]["body"], "hello from z2");
    }
    let r = chat_call(
        l0,
        "POST",
        &msgs,
        Some(&agent),
        Some(json!({"body": "hi from z1"})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    for s in [&mut a, &mut v] {
        assert_eq!(chat_event(s).await["message"]["body"], "hi from z1");
    }

    // The same history and unread counts through either logic.
    for l in [l0, l1] {
        let r = chat_call(l, "GET", &msgs, Some(&visitor), None).await;
        let bodies: Vec<String> = r.json()["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["body"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(bodies, vec!["hello from z2", "hi from z1"]);
        let unread = format!("/chat/api/conversations/{conv}/unread");
        assert_eq!(
            chat_call(l, "GET", &unread, Some(&agent), None)
                .await
                .json(),
            json!({"unread": 1})
        );
        assert_eq!(
            chat_call(l, "GET", &unread, Some(&visitor), None)
                .await
                .json(),
            json!({"unread": 1})
        );
    }
    // A read through logic 1 is seen through logic 0, and its receipt reaches
    // the visitor on the other comet.
    let r = chat_call(
        l1,
        "POST",
        &format!("/chat/api/conversations/{conv}/read"),
        Some(&agent),
        Some(json!({"position": 2})),
    )
    .await;
    assert_eq!(r.json(), json!({"position": 2}));
    let receipt = chat_event(&mut v).await;
    assert_eq!(
        (receipt["type"].clone(), receipt["position"].clone()),
        (json!("read"), json!(2))
    );
    let r = chat_call(l0, "GET", "/chat/api/conversations", Some(&agent), None).await;
    assert_eq!(r.json()["conversations"][0]["unread"], 0);

    // Over the sockets (ops 4, 18, 20, answered by a logic over gRPC): the
    // visitor sends on comet 1, the agent syncs and reads on comet 0.
    let (sent, _) = chat_op(&mut v, 4, &json!({"body": "and over the socket"})).await;
    assert_eq!(
        (sent["type"].clone(), sent["message"]["id"].clone()),
        (json!("sent"), json!(3)),
        "{sent}"
    );
    let e = chat_event_of(&mut a, "message").await;
    assert_eq!(e["message"]["body"], "and over the socket", "{e}");
    let (sync, _) = chat_op(&mut a, 18, &json!({"conversation_id": conv, "after": 1})).await;
    let ids = support::message_ids(&sync);
    assert_eq!(
        (ids, sync["unread"].clone()),
        (vec![2, 3], json!(1)),
        "{sync}"
    );
    let (read, _) = chat_op(&mut a, 20, &json!({"conversation_id": conv, "position": 3})).await;
    assert_eq!(
        (read["position"].clone(), read["unread"].clone()),
        (json!(3), json!(0))
    );
    let receipt = chat_event_of(&mut v, "read").await;
    assert_eq!(receipt["position"], 3);
}
