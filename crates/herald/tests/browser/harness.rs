//! A headless Chromium behind chromedriver, and the pages the browser tests use.
//!
//! Each [`Browser`] is its own chromedriver (on an ephemeral port, in its own
//! process group so nothing it starts outlives the test) and its own browser
//! session. At most two browsers run at once: the tests share a small machine.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::support::http;

/// How long any awaited condition may take.
pub const DEADLINE: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(25);

/// Browsers running at once, across the tests of this binary.
static SLOTS: Semaphore = Semaphore::const_new(2);

/// The ports above 1023 that Chromium blocks by default.
const UNSAFE_PORTS: [u16; 19] = [
    1719, 1720, 1723, 2049, 3659, 4045, 4190, 5060, 5061, 6000, 6566, 6665, 6666, 6667, 6668, 6669,
    6679, 6697, 10080,
];

/// The test page (not served by herald: tests serve it from another origin).
const TEST_PAGE: &str = include_str!("../../../../web/sdk/test.html");

/// The first executable found among `candidates` (absolute paths, or names
/// looked up in `PATH`).
fn find_executable(candidates: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for c in candidates {
        let p = Path::new(c);
        if p.is_absolute() {
            if p.is_file() {
                return Some(p.to_path_buf());
            }
            continue;
        }
        for dir in std::env::split_paths(&path) {
            let full = dir.join(c);
            if full.is_file() {
                return Some(full);
            }
        }
    }
    None
}

/// chromedriver, in its own process group: killing the group ends it and every
/// browser it started.
struct Driver {
    child: Child,
    port: u16,
    /// The driver's and the browser's TMPDIR (profiles, sockets), removed at the end.
    tmp: PathBuf,
}

impl Driver {
    fn spawn(path: &Path) -> Driver {
        use std::os::unix::process::CommandExt;
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = std::env::temp_dir().join(format!("herald-browser-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&tmp).expect("a temporary directory for the browser");
        let mut child = Command::new(path)
            .arg("--port=0")
            .env("TMPDIR", &tmp)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", path.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads the port from the banner, then keeps draining the pipe so the
        // driver never blocks on a full one.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("started successfully on port ").nth(1) {
                    if let Some(tx) = tx.take() {
                        let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
                        let _ = tx.send(port.parse::<u16>().ok());
                    }
                }
            }
        });
        let port = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Some(port)) => port,
            other => {
                let mut d = Driver {
                    child,
                    port: 0,
                    tmp,
                };
                d.kill();
                panic!(
                    "chromedriver ({}) did not report its port: {other:?}",
                    path.display()
                );
            }
        };
        Driver { child, port, tmp }
    }

    fn kill(&mut self) {
        // The whole group: chromedriver and the browser processes it started.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A headless Chromium session.
pub struct Browser {
    pub wd: Client,
    driver: Driver,
    _slot: SemaphorePermit<'static>,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium. Panics (the test fails) when
    /// either is missing.
    pub async fn start() -> Browser {
        Browser::start_with(&[]).await
    }

    /// [`Browser::start`] with more Chromium switches (e.g. `--force-dark-mode`:
    /// pages see `prefers-color-scheme: dark`).
    pub async fn start_with(switches: &[&str]) -> Browser {
        let chromium = find_executable(&["/usr/bin/chromium", "chromium", "chromium-browser"])
            .expect(
                "chromium is not installed: the browser tests need Debian's chromium and \
                 chromium-driver (scripts/engines.sh: ensure_engines browser)",
            );
        let chromedriver = find_executable(&[
            "chromedriver",
            "/usr/bin/chromedriver",
            "/usr/lib/chromium/chromedriver",
        ])
        .expect(
            "chromedriver is not installed: the browser tests need Debian's \
                     chromium-driver (scripts/engines.sh: ensure_engines browser)",
        );
        let slot = SLOTS.acquire().await.expect("browser slots");
        // Chromium refuses some ports ("unsafe": SIP, IRC, X11, …) that an
        // ephemeral listener may well get here (the local range starts at 1024).
        let allowed = UNSAFE_PORTS.map(|p| p.to_string()).join(",");
        let driver = Driver::spawn(&chromedriver);
        let mut args: Vec<String> = vec![
            "--headless".to_string(),
            "--no-sandbox".to_string(),
            "--disable-gpu".to_string(),
            "--disable-dev-shm-usage".to_string(),
            "--window-size=1280,1700".to_string(),
            "--hide-scrollbars".to_string(),
            "--no-first-run".to_string(),
            "--no-default-browser-check".to_string(),
            format!("--explicitly-allowed-ports={allowed}"),
        ];
        args.extend(switches.iter().map(|s| s.to_string()));
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": args,
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let wd = tokio::time::timeout(
            Duration::from_secs(60),
            ClientBuilder::new(connector)
                .capabilities(caps)
                .connect(&format!("http://127.0.0.1:{}", driver.port)),
        )
        .await
        .expect("a browser session within 60 s")
        .unwrap_or_else(|e| panic!("chromedriver could not start {}: {e}", chromium.display()));
        Browser {
            wd,
            driver,
            _slot: slot,
        }
    }

    /// Ends the session (the browser exits) and the driver.
    pub async fn quit(self) {
        let Browser { wd, mut driver, .. } = self;
        let _ = tokio::time::timeout(Duration::from_secs(10), wd.close()).await;
        driver.kill();
    }
}

/// A page in the browser, with the helpers tests use.
pub struct Page {
    wd: Client,
}

impl Page {
    pub fn new(b: &Browser) -> Page {
        Page { wd: b.wd.clone() }
    }

    pub async fn goto(&self, url: &str) {
        self.wd
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
    }

    /// Runs `script` (a function body; `return` its result) in the page.
    pub async fn js(&self, script: &str) -> Value {
        self.js_args(script, vec![]).await
    }

    /// [`Page::js`] with `arguments[0..]`.
    pub async fn js_args(&self, script: &str, args: Vec<Value>) -> Value {
        self.wd
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Polls `script` until it returns something other than null, false or
    /// undefined, and returns that; fails the test after [`DEADLINE`].
    pub async fn until_js(&self, what: &str, script: &str) -> Value {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let v = self.js(script).await;
            if !v.is_null() && v != Value::Bool(false) {
                return v;
            }
            if tokio::time::Instant::now() > deadline {
                let shot = self.screenshot(&format!("timeout-{}", slug(what))).await;
                panic!(
                    "timed out waiting for {what}; screenshot {}",
                    shot.display()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Clicks the element `css` finds. A page that redraws the element
    /// between the find and the click (a live list) is clicked again on the
    /// new one, until [`DEADLINE`].
    pub async fn click(&self, css: &str) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let e = self
                .wd
                .find(Locator::Css(css))
                .await
                .unwrap_or_else(|e| panic!("no element {css}: {e}"));
            match e.click().await {
                Ok(()) => return,
                Err(fantoccini::error::CmdError::Standard(w))
                    if w.error == fantoccini::error::ErrorStatus::StaleElementReference
                        && tokio::time::Instant::now() < deadline => {}
                Err(e) => panic!("cannot click {css}: {e}"),
            }
        }
    }

    /// Types `keys` into the element (WebDriver keys: `fantoccini::key::Key`
    /// characters press Enter, hold Shift, …).
    pub async fn type_keys(&self, css: &str, keys: &str) {
        self.wd
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"))
            .send_keys(keys)
            .await
            .unwrap_or_else(|e| panic!("cannot type into {css}: {e}"));
    }

    /// Resizes the browser window (CSS pixels).
    pub async fn resize(&self, width: u32, height: u32) {
        self.wd
            .set_window_size(width, height)
            .await
            .unwrap_or_else(|e| panic!("cannot resize the window: {e}"));
    }

    /// Sets a form field's value as typing would (an `input` event follows).
    pub async fn set_value(&self, css: &str, value: &str) {
        self.js_args(
            "const e = document.querySelector(arguments[0]); e.value = arguments[1]; \
             e.dispatchEvent(new Event('input', {bubbles: true})); return true",
            vec![json!(css), json!(value)],
        )
        .await;
    }

    /// Saves a PNG of the viewport under the target directory (never in the
    /// sources) and returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("screens");
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("{name}.png"));
        match self.wd.screenshot().await {
            Ok(png) => {
                let _ = std::fs::write(&path, png);
                eprintln!("screenshot: {}", path.display());
            }
            Err(e) => eprintln!("no screenshot {name}: {e}"),
        }
        path
    }
}

fn slug(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// `web/sdk/test.html`, served from its own origin, loading the SDK from the
/// herald server under test.
pub struct TestPage {
    pub page: Page,
    url: String,
    ws: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for TestPage {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl TestPage {
    pub async fn open(b: &Browser, s: &herald::Standalone) -> TestPage {
        let app = axum::Router::new().route(
            "/",
            axum::routing::get(|| async {
                (
                    [(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")],
                    TEST_PAGE,
                )
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the test page server");
        let origin = listener.local_addr().expect("its address");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let sdk = format!("http://{}/_/sdk/herald.js", s.http_addr);
        let tp = TestPage {
            page: Page::new(b),
            url: format!("http://{origin}/?sdk={sdk}"),
            ws: s.ws_addrs[0],
            server,
        };
        tp.reload().await;
        tp
    }

    /// Loads the page (again): its clients are gone, its origin's storage stays.
    pub async fn reload(&self) {
        self.page.goto(&self.url).await;
        let loaded = self
            .page
            .until_js(
                "the SDK to load",
                "return window.harness && (window.harness.ready || window.harness.error) ? \
                 {ready: window.harness.ready, error: window.harness.error} : null",
            )
            .await;
        assert_eq!(loaded["ready"], true, "the SDK did not load: {loaded}");
    }

    /// The server's WebSocket endpoint.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/sub", self.ws)
    }

    /// Creates client `name` with `options` and connects it.
    pub async fn start(&self, name: &str, options: Value) {
        let ok = self
            .page
            .js_args(
                "return window.harness.start(arguments[0], arguments[1])",
                vec![json!(name), options],
            )
            .await;
        assert_eq!(ok, true);
    }

    /// What client `name` saw so far.
    pub async fn snapshot(&self, name: &str) -> Value {
        self.page
            .js_args(
                "return window.harness.snapshot(arguments[0])",
                vec![json!(name)],
            )
            .await
    }

    /// Polls client `name`'s snapshot until `want` holds; returns it.
    pub async fn until(&self, name: &str, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let snap = self.snapshot(name).await;
            if want(&snap) {
                return snap;
            }
            if tokio::time::Instant::now() > deadline {
                let shot = self
                    .page
                    .screenshot(&format!("timeout-{}", slug(what)))
                    .await;
                panic!(
                    "client {name}: timed out waiting for {what}; screenshot {}\nlast state: {}",
                    shot.display(),
                    serde_json::to_string_pretty(&snap).unwrap_or_default()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Calls `method(...args)` on client `name` and waits for the promise (or
    /// value); returns its outcome `{ok, value}` or `{ok: false, code, message}`.
    pub async fn call_result(&self, name: &str, method: &str, args: Value) -> Value {
        let id = self
            .page
            .js_args(
                "return window.harness.call(arguments[0], arguments[1], arguments[2])",
                vec![json!(name), json!(method), args],
            )
            .await;
        let id = id.as_str().expect("a call id").to_string();
        let snap = self
            .until(name, &format!("{method} to settle"), |s| {
                s["results"][&id]["done"] == true
            })
            .await;
        snap["results"][&id].clone()
    }

    /// [`TestPage::call_result`] that must succeed; returns the value.
    pub async fn call(&self, name: &str, method: &str, args: Value) -> Value {
        let r = self.call_result(name, method, args).await;
        assert_eq!(r["ok"], true, "{method} failed: {r}");
        r["value"].clone()
    }

    pub async fn screenshot(&self, name: &str) -> PathBuf {
        self.page.screenshot(name).await
    }
}

/// POSTs `body` to the push API and checks it was accepted.
pub async fn push(s: &herald::Standalone, path: &str, body: &str) {
    let r = http(s.http_addr, "POST", path, body.as_bytes()).await;
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    assert_eq!(r.json()["code"], 0, "{path}: {}", r.text());
}

/// What the network between the browser and the server does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Net {
    /// Bytes flow.
    Up,
    /// Every connection is cut, and new ones are closed at once.
    Down,
    /// Connections stay open but every byte is lost, both ways: the server
    /// keeps writing to a client that never reads, the client's heartbeats
    /// never arrive.
    Blackhole,
}

/// A TCP relay in front of the server's WebSocket listener, whose network can
/// go down or lose everything.
pub struct Proxy {
    pub addr: SocketAddr,
    net: tokio::sync::watch::Sender<Net>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        // Ends every relayed connection.
        let _ = self.net.send(Net::Down);
    }
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("its address");
        let (net, _) = tokio::sync::watch::channel(Net::Up);
        let watch = net.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let net = watch.subscribe();
                if *net.borrow() == Net::Down {
                    drop(client);
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(relay(cr, sw, net.clone()), relay(sr, cw, net));
                });
            }
        });
        Proxy { addr, net, task }
    }

    pub fn set(&self, net: Net) {
        self.net.send_replace(net);
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/sub", self.addr)
    }
}

async fn relay(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut net: tokio::sync::watch::Receiver<Net>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 << 10];
    // A connection that lost bytes never carries any again (its streams would
    // resume mid-frame).
    let mut lost = *net.borrow() == Net::Blackhole;
    loop {
        tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let now = *net.borrow();
                    lost |= now == Net::Blackhole;
                    match now {
                        Net::Down => break,
                        _ if lost => {}
                        _ => {
                            if to.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            },
            changed = net.changed() => {
                let now = *net.borrow();
                lost |= now == Net::Blackhole;
                if changed.is_err() || now == Net::Down {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}
