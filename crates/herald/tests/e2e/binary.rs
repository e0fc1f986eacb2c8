//! The `herald` binary itself: configuration from the environment, serving, the
//! memory trimmer, and a clean exit on SIGTERM.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use herald_testkit::free_port;

use crate::support::*;

#[tokio::test]
async fn binary_serves_and_stops_on_sigterm() {
    let (tcp, ws, http_port) = (free_port(), free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("standalone")
        .env(
            "HERALD_CHAT__DATA_DIR",
            std::env::temp_dir().join(format!("herald-binary-chat-{http_port}")),
        )
        .env("HERALD_COMET__TCP_BIND", format!("[\"127.0.0.1:{tcp}\"]"))
        .env("HERALD_COMET__WS_BIND", format!("[\"127.0.0.1:{ws}\"]"))
        .env("HERALD_LOGIC__HTTP_BIND", format!("127.0.0.1:{http_port}"))
        .env("HERALD_LOG__LEVEL", "warn")
        .env("HERALD_MEMORY__TRIM_INTERVAL", "50ms")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("herald binary starts");
    let http = format!("127.0.0.1:{http_port}").parse().unwrap();
    let mut up = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(http).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "herald did not open its HTTP port");
    let mut c = Client::tcp(format!("127.0.0.1:{tcp}").parse().unwrap()).await;
    c.auth(1, "bin", "live://1", &[1000]).await;
    let r = post(
        http,
        "/goim/push/room?operation=1000&type=live&room=1",
        b"hi",
    )
    .await;
    assert_eq!(r.json()["code"], 0);
    assert_eq!(&c.recv_push().await.body[..], b"hi");

    // The memory trimmer runs and reports (every 50 ms here) what glibc's heap holds.
    let mut trims = 0.0;
    let mut heap = 0.0;
    for _ in 0..100 {
        let text = get(http, "/metrics").await.text();
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        trims = value("herald_memory_trims_total ");
        heap = value("herald_allocator_heap_bytes ");
        if trims >= 2.0 && heap > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(trims >= 2.0, "trims reported: {trims}");
    assert!(heap > 0.0, "heap bytes reported: {heap}");

    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let mut exited = None;
    for _ in 0..100 {
        if let Some(st) = child.try_wait().unwrap() {
            exited = Some(st);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = exited.expect("herald exits after SIGTERM");
    assert!(status.success(), "exit status {status}");
    c.expect_closed().await;
}

/// Logs written to a pipe (a file, journald, `docker logs`) are plain text: ANSI
/// colour codes only go to a terminal.
#[test]
fn logs_to_a_pipe_carry_no_colour_codes() {
    let (tcp, ws, http_port) = (free_port(), free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("standalone")
        .env(
            "HERALD_CHAT__DATA_DIR",
            std::env::temp_dir().join(format!("herald-binary-chat-{http_port}")),
        )
        .env("HERALD_COMET__TCP_BIND", format!("[\"127.0.0.1:{tcp}\"]"))
        .env("HERALD_COMET__WS_BIND", format!("[\"127.0.0.1:{ws}\"]"))
        .env("HERALD_LOGIC__HTTP_BIND", format!("127.0.0.1:{http_port}"))
        .env("HERALD_LOG__LEVEL", "info")
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("herald binary starts");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let _ = tx.send(line.expect("a log line"));
        }
    });
    let mut stderr = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        stderr.read_to_string(&mut text).unwrap();
        text
    });
    // Generous: the whole suite shares the machine's cores.
    let patience = Duration::from_secs(30);
    let mut lines = Vec::new();
    while !lines
        .iter()
        .any(|l: &String| l.contains("HTTP API listening"))
    {
        let line = rx
            .recv_timeout(patience)
            .unwrap_or_else(|e| panic!("no \"HTTP API listening\" line ({e}): {lines:#?}"));
        lines.push(line);
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    // The log ends when the process closes its output.
    loop {
        match rx.recv_timeout(patience) {
            Ok(line) => lines.push(line),
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => panic!("herald still logging: {lines:#?}"),
        }
    }
    reader.join().unwrap();
    assert!(child.wait().unwrap().success());
    let stderr = stderr.join().unwrap();

    for line in &lines {
        assert!(
            !line.contains('\x1b'),
            "colour codes in a piped log: {line:?}"
        );
    }
    // The whole log was read, and its levels are plain words.
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" INFO ") && l.contains("stopped")),
        "{lines:#?}"
    );
    assert!(
        !stderr.contains('\x1b'),
        "colour codes on stderr: {stderr:?}"
    );
}

#[test]
fn bad_configuration_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["standalone", "--config", "/nonexistent/herald.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not exist"), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("config")
        .env("HERALD_COMET__OUTBOUND_QUEUE", "not-a-number")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.to_lowercase().contains("outbound_queue"), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("config")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("[comet]") && text.contains("tcp_bind"),
        "{text}"
    );
}

/// `herald config` shows secrets as `***` unless asked, and then as they are.
#[test]
fn printed_configuration_hides_secrets() {
    let run = |show: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
        cmd.arg("config");
        if show {
            cmd.arg("--show-secrets");
        }
        let out = cmd
            .env(
                "HERALD_AUTH__JWT__SECRET",
                "hmac-secret-of-the-test-0123456789",
            )
            .env("HERALD_RPC__TOKEN", "cluster-token-of-the-test")
            .env(
                "HERALD_STORE__REDIS_URL",
                "redis://herald:redis-pw@10.0.0.1:6379/0",
            )
            .env("HERALD_QUEUE__NATS__PASSWORD", "nats-pw")
            .env("HERALD_QUEUE__KAFKA__SASL_PASSWORD", "kafka-pw")
            .env("HERALD_DISCOVERY__PASSWORD", "etcd-pw")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let secrets = [
        "hmac-secret-of-the-test-0123456789",
        "cluster-token-of-the-test",
        "redis-pw",
        "nats-pw",
        "kafka-pw",
        "etcd-pw",
    ];
    let hidden = run(false);
    for s in secrets {
        assert!(!hidden.contains(s), "{s} printed: {hidden}");
    }
    assert!(
        hidden.contains("redis://herald:***@10.0.0.1:6379/0"),
        "{hidden}"
    );
    assert!(hidden.contains("token = \"***\""), "{hidden}");
    let shown = run(true);
    for s in secrets {
        assert!(shown.contains(s), "{s} not printed with --show-secrets");
    }
}

/// Every configuration shipped under `deploy/` loads (`herald config` rejects
/// unknown keys and bad values); the one-machine cluster's logic and job files
/// with each queue backend its script can pick.
#[test]
fn deploy_configurations_load() {
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let mut files = Vec::new();
    let mut dirs = vec![deploy.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "toml") {
                files.push(path);
            }
        }
    }
    assert!(files.len() >= 15, "found only {files:?}");
    for file in &files {
        let local = file.parent().is_some_and(|d| d.ends_with("local"));
        let backends: &[&str] = if local {
            &["redis", "nats", "kafka"]
        } else {
            &[""]
        };
        for backend in backends {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
            cmd.arg("config").arg("--config").arg(file);
            if local {
                cmd.env("HERALD_QUEUE__BACKEND", backend);
            }
            let out = cmd.output().unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                file.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// `herald bench run` drives a real server and writes a report with the documented
/// fields (a smoke test of the benchmark machinery; no timing is asserted).
#[test]
fn bench_run_writes_a_report() {
    let dir = std::env::temp_dir().join(format!("herald-bench-test-{}", std::process::id()));
    let json = dir.join("latency.json");
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "bench",
            "run",
            "latency",
            "-n",
            "20",
            "--rate",
            "20",
            "--duration",
            "1",
        ])
        .args(["--peers", "floor", "--sources", "2", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["scenario"], "latency");
    assert_eq!(report["connections"], 20);
    assert_eq!(report["lost"], 0, "{report}");
    for q in ["p50", "p99", "p999"] {
        assert!(report["latency_ms"][q].is_number(), "latency_ms.{q}");
    }
    assert!(report["server_cpu_ns_per_delivery"].is_number());
    assert!(report["deliveries_per_sec"].is_number());
    assert!(report["key_latency_ms"]["p99"].is_number());
    assert_eq!(report["peers"]["floor"]["connections"], 20);
    assert!(report["ratios"]["floor"].is_object());
    assert!(report["targets"].as_array().is_some_and(|t| !t.is_empty()));
    assert!(dir.join("latency.md").is_file());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `herald apikey new` prints a key once and configuration that admits exactly it.
#[test]
fn apikey_new_prints_a_key_and_its_entry() {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "apikey",
            "new",
            "--name",
            "backend",
            "--scopes",
            "push,read",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let key = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("hk_"))
        .map(|k| format!("hk_{k}"))
        .expect("a key line");
    // The printed table is valid configuration holding the key's hash only.
    let table: String = text
        .lines()
        .skip_while(|l| !l.starts_with("[[api.keys]]"))
        .take_while(|l| !l.is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    let cfg: herald::Config = toml::from_str(&table).unwrap();
    assert_eq!(cfg.api.keys.len(), 1);
    let entry = &cfg.api.keys[0];
    assert_eq!(entry.name, "backend");
    assert_eq!(entry.hash, herald_logic::api_keys::hash_key(&key));
    assert!(!table.contains(&key));
    assert_eq!(
        entry.scopes,
        [
            herald_logic::api_keys::Scope::Push,
            herald_logic::api_keys::Scope::Read
        ]
    );
    // So does the one-line form.
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("{ name = "))
        .expect("a one-line entry");
    let cfg: herald::Config = toml::from_str(&format!("[api]\nkeys = [\n{line}\n]\n")).unwrap();
    assert_eq!(cfg.api.keys[0].hash, entry.hash);

    let bad = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["apikey", "new", "--name", "x", "--scopes", "root"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("push, read or admin"));
}

/// RPC protection that cannot work stops a role at once, naming the setting,
/// before it waits for any engine: an unreadable certificate, a comet with a
/// certificate but no CA for the logics it calls, a token that cannot travel in a
/// header, and a CA file that is not there.
#[test]
fn unusable_rpc_protection_stops_the_role() {
    /// A role, its environment, and what its error must name.
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let etcd = format!("http://127.0.0.1:{}", free_port());
    let cases: [Case; 4] = [
        (
            "logic",
            &[
                ("HERALD_RPC__TLS__CERT_FILE", "/nonexistent/host.pem"),
                ("HERALD_RPC__TLS__KEY_FILE", "/nonexistent/host.key"),
            ],
            "rpc.tls",
        ),
        (
            "comet",
            &[("HERALD_RPC__TLS__CERT_FILE", "/nonexistent/host.pem")],
            "rpc.tls.ca_file",
        ),
        ("logic", &[("HERALD_RPC__TOKEN", "two words")], "rpc.token"),
        (
            "job",
            &[("HERALD_RPC__TLS__CA_FILE", "/nonexistent/ca.pem")],
            "rpc.tls",
        ),
    ];
    for (role, env, needle) in cases {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
        cmd.arg(role)
            .env("HERALD_DISCOVERY__BACKEND", "etcd")
            .env("HERALD_DISCOVERY__ENDPOINTS", &etcd)
            .env("HERALD_STORE__BACKEND", "redis")
            .env("HERALD_QUEUE__BACKEND", "redis")
            .env("HERALD_LOG__LEVEL", "warn")
            .env("RUST_BACKTRACE", "0");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{role} {env:?}: {stderr}");
        assert!(stderr.contains(needle), "{role} {env:?}: {stderr}");
    }
}
