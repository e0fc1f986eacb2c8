//! The listener behind every HTTP port herald serves (the API and demo page of
//! logic and standalone, the `/metrics` port of comet and job): HTTP/1.1 over
//! hyper, optionally HTTPS, with the `[limits.http]` limits.
//!
//! - `max_connections`: at the cap the accept loop stops accepting, so further
//!   connections wait in the kernel's listen backlog and hold no descriptor.
//! - `connections_per_ip`: counted by peer address from accept; a connection over
//!   the limit is answered 429 and closed. A trusted proxy's connections carry many
//!   clients and are not counted; their requests in progress are counted by the
//!   client address the proxy names instead.
//! - `header_timeout` (from a head's first byte, TLS handshake included) → 408;
//!   `idle_timeout` (no request in progress) → the connection is closed;
//!   `max_header_bytes` → 431, a target longer than hyper accepts → 414. All
//!   answers are goim's JSON envelope.
//! - Shutdown stops accepting, lets requests in flight finish (answered with
//!   `Connection: close`), closes idle connections at once, and drops whatever is
//!   left when the grace period ends. Every connection task is tracked.
//!
//! Each limit hit is counted in `herald_limit_hits_total{limit=…}`. HTTP/2 is not
//! served: the API's clients are goim backends speaking HTTP/1.1, and one
//! implementation of the limits above is easier to keep right than two.

mod conn;
mod phase;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use herald_limits::{canonical, HttpLimits, IpCounter, TrustedProxies};
use metrics::{counter, gauge, Gauge};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use conn::Conn;

/// Counts one hit of the limit named `limit`.
fn hit(limit: &'static str) {
    counter!("herald_limit_hits_total", "limit" => limit).increment(1);
}

/// How a listener serves.
#[derive(Debug, Clone, Default)]
pub struct HttpOptions {
    /// Connection and request limits.
    pub limits: HttpLimits,
    /// Peers whose `X-Forwarded-For` names the client.
    pub trusted_proxies: TrustedProxies,
    /// HTTPS when set (its certificate may be reloaded while serving).
    pub tls: Option<Arc<herald_tls::rustls::ServerConfig>>,
}

/// What every connection of one listener shares.
struct Shared {
    app: Router,
    limits: HttpLimits,
    trusted_proxies: TrustedProxies,
    tls: Option<Arc<herald_tls::rustls::ServerConfig>>,
    /// Requests in progress per client behind trusted proxies (when
    /// `connections_per_ip` is set).
    per_proxied_client: Option<Arc<IpCounter>>,
    /// The answer to a plain-HTTP peer over `connections_per_ip`.
    per_ip_refusal: Vec<u8>,
}

/// A running listener.
#[derive(Debug)]
pub struct HttpServer {
    local_addr: SocketAddr,
    /// Stops accepting and asks every connection to close gracefully.
    stop: CancellationToken,
    /// Drops every connection (the grace period is over).
    kill: CancellationToken,
    /// The accept loop and every connection task.
    tasks: TaskTracker,
}

impl HttpServer {
    /// Binds `addr` and serves `app` until [`HttpServer::shutdown`]. `what` names
    /// the listener in logs and in the open-connections gauge.
    pub async fn bind(
        addr: SocketAddr,
        app: Router,
        opts: HttpOptions,
        what: &'static str,
    ) -> io::Result<HttpServer> {
        let listener = herald_comet::listen(addr, BACKLOG)?;
        let local_addr = listener.local_addr()?;
        let per_ip = opts.limits.connections_per_ip;
        let shared = Arc::new(Shared {
            app,
            per_proxied_client: (per_ip > 0).then(|| IpCounter::new(per_ip)),
            per_ip_refusal: conn::refusal(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                -429,
                &format!(
                    "too many connections from this address: the limit is {per_ip} \
                     (limits.http.connections_per_ip)"
                ),
            ),
            limits: opts.limits,
            trusted_proxies: opts.trusted_proxies,
            tls: opts.tls,
        });
        let server = HttpServer {
            local_addr,
            stop: CancellationToken::new(),
            kill: CancellationToken::new(),
            tasks: TaskTracker::new(),
        };
        let accept = Acceptor {
            listener,
            permits: (shared.limits.max_connections > 0)
                .then(|| Arc::new(Semaphore::new(shared.limits.max_connections))),
            per_peer: (per_ip > 0).then(|| IpCounter::new(per_ip)),
            open: gauge!("herald_http_connections", "listener" => what),
            shared,
            stop: server.stop.clone(),
            kill: server.kill.clone(),
            tasks: server.tasks.clone(),
            what,
        };
        server.tasks.spawn(accept.run());
        Ok(server)
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, closes idle connections, lets requests in flight finish
    /// within `grace`, then drops what is left.
    pub async fn shutdown(&self, grace: Duration) {
        self.stop.cancel();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            warn!("HTTP requests still in flight at the end of the grace period; closing them");
            self.kill.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(1), self.tasks.wait()).await;
        }
    }
}

impl Drop for HttpServer {
    /// A listener dropped without [`HttpServer::shutdown`] stops at once.
    fn drop(&mut self) {
        self.stop.cancel();
        self.kill.cancel();
    }
}

/// Connections waiting in the kernel while the listener is at its cap (see
/// [`herald_comet::listen`]).
const BACKLOG: u32 = 4096;

/// The accept loop.
struct Acceptor {
    listener: TcpListener,
    /// One permit per open connection (`max_connections`).
    permits: Option<Arc<Semaphore>>,
    /// Connections per peer address (`connections_per_ip`).
    per_peer: Option<Arc<IpCounter>>,
    open: Gauge,
    shared: Arc<Shared>,
    stop: CancellationToken,
    kill: CancellationToken,
    tasks: TaskTracker,
    what: &'static str,
}

impl Acceptor {
    async fn run(self) {
        let mut backoff = Duration::from_millis(5);
        // The cap is logged at most every 10 s; the counter has every hit.
        let mut warned: Option<tokio::time::Instant> = None;
        loop {
            // A permit first: at the cap nothing is accepted, so waiting
            // connections stay in the kernel's backlog and use no descriptor.
            let permit = match &self.permits {
                None => None,
                Some(sem) => match sem.clone().try_acquire_owned() {
                    Ok(p) => Some(p),
                    Err(_) => {
                        hit("http_connections");
                        if warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                            warned = Some(tokio::time::Instant::now());
                            warn!(listener = self.what, max = self.shared.limits.max_connections,
                                "HTTP connection limit reached; new connections wait in the backlog");
                        }
                        tokio::select! {
                            _ = self.stop.cancelled() => return,
                            p = sem.clone().acquire_owned() => match p {
                                Ok(p) => Some(p),
                                Err(_) => return,
                            },
                        }
                    }
                },
            };
            let (stream, peer) = tokio::select! {
                _ = self.stop.cancelled() => return,
                r = self.listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of descriptors (or memory): wait for some to be
                        // released instead of spinning.
                        warn!(listener = self.what, error = %e, "accept failed; retrying in {backoff:?}");
                        tokio::select! {
                            _ = self.stop.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                        continue;
                    }
                },
            };
            backoff = Duration::from_millis(5);
            let ip = canonical(peer.ip());
            let ip_guard = match &self.per_peer {
                Some(counter) if !self.shared.trusted_proxies.trusts(ip) => {
                    match counter.try_acquire(ip) {
                        Some(g) => Some(g),
                        None => {
                            // Refused here, at once: no task, no slot of
                            // `max_connections`, no TLS handshake. A plain-HTTP
                            // client gets the 429 if its socket takes it now.
                            hit("http_connections_per_ip");
                            if self.shared.tls.is_none() {
                                let _ = stream.try_write(&self.shared.per_ip_refusal);
                            }
                            drop(stream);
                            drop(permit);
                            continue;
                        }
                    }
                }
                _ => None,
            };
            let conn = Conn {
                stream,
                peer,
                shared: self.shared.clone(),
                stop: self.stop.clone(),
                kill: self.kill.clone(),
                _ip: ip_guard,
            };
            let open = self.open.clone();
            open.increment(1.0);
            self.tasks.spawn(async move {
                conn.run().await;
                open.decrement(1.0);
                drop(permit);
            });
        }
    }
}
