//! Client worker processes. One process can hold only as many connections as its
//! open-file limit allows (20,000 here, not raisable), so larger loads are split
//! over several `herald-bench worker` processes. A worker prints a status line
//! every 200 ms and answers `reset`, `report`, `pause` and `resume AT_NS` commands
//! on stdin.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::clients::{self, ClientArgs, Snapshot, Stats};

/// Body of `herald-bench worker --spec JSON`.
pub async fn worker_main(spec: &str) -> anyhow::Result<()> {
    let args: ClientArgs = serde_json::from_str(spec).context("bad worker spec")?;
    let dialer = clients::Dialer::new(&args)?;
    let stats = Arc::new(Stats::default());
    let run = tokio::spawn(clients::run(Arc::new(args), dialer, stats.clone()));
    let out = Arc::new(tokio::sync::Mutex::new(tokio::io::stdout()));
    {
        let stats = stats.clone();
        let out = out.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let line = format!(
                    "S {}\n",
                    serde_json::to_string(&stats.snapshot(false)).unwrap_or_default()
                );
                if out.lock().await.write_all(line.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(cmd)) = lines.next_line().await {
        match cmd.trim() {
            "reset" => {
                stats.reset();
                out.lock().await.write_all(b"R\n").await?;
            }
            "report" => {
                let line = format!("H {}\n", serde_json::to_string(&stats.snapshot(true))?);
                out.lock().await.write_all(line.as_bytes()).await?;
            }
            "pause" => {
                stats.pause();
                out.lock().await.write_all(b"P\n").await?;
            }
            "stop" => break,
            cmd => {
                if let Some(at) = cmd.strip_prefix("resume ") {
                    stats.resume(at.trim().parse().unwrap_or_else(|_| crate::wire::now_ns()));
                    out.lock().await.write_all(b"U\n").await?;
                }
            }
        }
    }
    stats.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    run.abort();
    Ok(())
}

/// A set of worker processes driven by the scenario runner.
pub struct Workers {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    status: Arc<Mutex<Vec<Snapshot>>>,
    replies: mpsc::UnboundedReceiver<(usize, String)>,
}

impl Workers {
    /// Starts enough workers for `args.connections` (or `args.procs`).
    pub async fn spawn(args: &ClientArgs) -> anyhow::Result<Workers> {
        let cap = clients::per_process_capacity().min(15_000);
        let procs = if args.procs > 0 {
            args.procs
        } else {
            args.connections.div_ceil(cap).max(1)
        };
        let per = args.connections.div_ceil(procs);
        let exe = std::env::current_exe()?;
        let status = Arc::new(Mutex::new(vec![Snapshot::default(); procs]));
        let (tx, replies) = mpsc::unbounded_channel();
        let mut children = Vec::new();
        let mut stdins = Vec::new();
        for k in 0..procs {
            let mut spec = args.clone();
            let start = k * per;
            spec.connections = per.min(args.connections.saturating_sub(start));
            spec.first_mid = args.first_mid + start as u64;
            let mut child = Command::new(&exe)
                .args(crate::invocation().self_prefix)
                .arg("worker")
                .arg("--spec")
                .arg(serde_json::to_string(&spec)?)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("cannot start a worker process")?;
            let stdout = child.stdout.take().context("worker stdout")?;
            stdins.push(child.stdin.take().context("worker stdin")?);
            let status = status.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(s) = line.strip_prefix("S ") {
                        if let Ok(snap) = serde_json::from_str::<Snapshot>(s) {
                            status.lock().unwrap_or_else(|e| e.into_inner())[k] = snap;
                        }
                    } else {
                        let _ = tx.send((k, line));
                    }
                }
            });
            children.push(child);
        }
        Ok(Workers {
            children,
            stdins,
            status,
            replies,
        })
    }

    /// A cheap reader of the summed received count, for samplers.
    pub fn status_handle(&self) -> impl Fn() -> u64 + Send + 'static {
        let status = self.status.clone();
        move || {
            status
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|s| s.received)
                .sum()
        }
    }

    /// Sum of the workers' latest status lines.
    pub fn status(&self) -> Snapshot {
        let st = self.status.lock().unwrap_or_else(|e| e.into_inner());
        let mut sum = Snapshot::default();
        for s in st.iter() {
            sum.add(s);
        }
        sum
    }

    async fn broadcast(&mut self, cmd: &str, expect: &str) -> anyhow::Result<Vec<String>> {
        for s in &mut self.stdins {
            s.write_all(format!("{cmd}\n").as_bytes()).await?;
            s.flush().await?;
        }
        let mut got = vec![None; self.stdins.len()];
        while got.iter().any(Option::is_none) {
            let (k, line) = tokio::time::timeout(Duration::from_secs(30), self.replies.recv())
                .await
                .context("worker did not answer")?
                .context("worker exited")?;
            if let Some(rest) = line.strip_prefix(expect) {
                got[k] = Some(rest.trim().to_string());
            }
        }
        Ok(got.into_iter().flatten().collect())
    }

    /// Zeroes received counts and latencies in every worker.
    pub async fn reset(&mut self) -> anyhow::Result<()> {
        self.broadcast("reset", "R").await?;
        Ok(())
    }

    /// Merged counters and latency histograms of every worker.
    pub async fn report(&mut self) -> anyhow::Result<Snapshot> {
        let mut sum = Snapshot {
            hist: Some(Default::default()),
            recover_hist: Some(Default::default()),
            ..Default::default()
        };
        for line in self.broadcast("report", "H ").await? {
            let s: Snapshot = serde_json::from_str(&line)?;
            sum.add(&s);
        }
        Ok(sum)
    }

    /// Tells every client to close its connection and stay away.
    pub async fn pause(&mut self) -> anyhow::Result<()> {
        self.broadcast("pause", "P").await?;
        Ok(())
    }

    /// Lets every client back at once; times to recover count from `at_ns`
    /// (wall clock).
    pub async fn resume(&mut self, at_ns: u64) -> anyhow::Result<()> {
        self.broadcast(&format!("resume {at_ns}"), "U").await?;
        Ok(())
    }

    /// Waits until `n` clients are connected (or the timeout passes); returns the
    /// time it took, or `None` on timeout. Prints a progress bar to stderr.
    pub async fn wait_connected(&self, n: u64, timeout: Duration) -> Option<Duration> {
        let start = tokio::time::Instant::now();
        let mut last_print = start;
        loop {
            let s = self.status();
            if s.connected >= n {
                eprintln!(
                    "\r{} in {:.2}s",
                    progress(s.connected, n, s.failed),
                    start.elapsed().as_secs_f64()
                );
                return Some(start.elapsed());
            }
            if start.elapsed() > timeout {
                eprintln!("\r{}  (timed out)", progress(s.connected, n, s.failed));
                return None;
            }
            if last_print.elapsed() > Duration::from_millis(200) {
                eprint!("\r{}", progress(s.connected, n, s.failed));
                last_print = tokio::time::Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the clients received `expected` messages in all, or until
    /// `quiet` passes with none arriving; returns when the last one arrived.
    pub async fn wait_received(&self, expected: u64, quiet: Duration) -> std::time::Instant {
        let mut last = (self.status().received, std::time::Instant::now());
        let mut t_done = std::time::Instant::now();
        loop {
            let r = self.status().received;
            if r >= expected {
                return std::time::Instant::now();
            }
            if r != last.0 {
                last = (r, std::time::Instant::now());
                t_done = last.1;
            } else if last.1.elapsed() > quiet {
                return t_done;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops every worker (their connections close).
    pub async fn stop(mut self) {
        self.stop_all().await;
    }

    /// Stops every worker and waits until they exited (so their connections are
    /// closed); the set is empty afterwards.
    pub async fn stop_all(&mut self) {
        for s in &mut self.stdins {
            let _ = s.write_all(b"stop\n").await;
        }
        for c in &mut self.children {
            if tokio::time::timeout(Duration::from_secs(5), c.wait())
                .await
                .is_err()
            {
                let _ = c.kill().await;
            }
        }
        self.stdins.clear();
        self.children.clear();
    }
}

/// A text progress bar: `[#####     ] 5000/10000 connected, 0 failed`.
pub fn progress(done: u64, total: u64, failed: u64) -> String {
    let width: usize = 30;
    let filled = if total == 0 {
        width
    } else {
        (done.min(total) as usize * width / total as usize).min(width)
    };
    format!(
        "[{}{}] {done}/{total} connected, {failed} failed attempts",
        "#".repeat(filled),
        " ".repeat(width - filled)
    )
}
