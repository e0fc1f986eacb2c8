//! One accepted HTTP connection: the TLS handshake (when on), hyper's HTTP/1.1
//! state machine over a [`Guarded`] socket, and the timers hyper does not have in
//! the shape herald needs: an idle timer that runs only while no request is in
//! progress, and a header timer that starts at a head's first byte. Requests reach
//! the router with the client's address attached.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use herald_limits::{canonical, IpGuard};
use herald_logic::http::{ApiError, ClientAddr};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::phase::{ConnPhase, Due, Guarded, HeadRefusal, InFlight, Timeouts, MAX_URI_BYTES};
use super::{hit, Shared};

/// Longest a refusal may take to write, and to drain what the client still sends.
const REFUSAL_TIME: Duration = Duration::from_secs(1);

/// An accepted connection and what it needs to be served.
pub(super) struct Conn {
    pub(super) stream: TcpStream,
    pub(super) peer: SocketAddr,
    pub(super) shared: Arc<Shared>,
    /// Asks for a graceful close (finish the request in progress).
    pub(super) stop: CancellationToken,
    /// Drops the connection at once (the shutdown grace ran out).
    pub(super) kill: CancellationToken,
    /// Counts this connection against its address; released when it ends.
    pub(super) _ip: Option<IpGuard>,
}

impl Conn {
    pub(super) async fn run(self) {
        let _ = self.stream.set_nodelay(true);
        let serving = Serving {
            // The TLS handshake and the first head share one header time.
            accepted: tokio::time::Instant::now(),
            peer: self.peer,
            stop: self.stop.clone(),
            kill: self.kill.clone(),
            shared: self.shared.clone(),
        };
        let Some(tls) = self.shared.tls.clone() else {
            serving.run(self.stream).await;
            return;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let header = self.shared.limits.header_timeout;
        let handshake = async {
            if header.is_zero() {
                Ok(acceptor.accept(self.stream).await)
            } else {
                tokio::time::timeout(header, acceptor.accept(self.stream)).await
            }
        };
        let stream = tokio::select! {
            _ = self.kill.cancelled() => return,
            _ = self.stop.cancelled() => return,
            r = handshake => match r {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    debug!(peer = %self.peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    // The handshake is part of the time allowed for a head.
                    hit("http_header_timeout");
                    debug!(peer = %self.peer, "TLS handshake timed out");
                    return;
                }
            },
        };
        serving.run(stream).await;
    }
}

/// The HTTP part of a connection, over plain TCP or TLS.
struct Serving {
    accepted: tokio::time::Instant,
    peer: SocketAddr,
    stop: CancellationToken,
    kill: CancellationToken,
    shared: Arc<Shared>,
}

impl Serving {
    /// Serves requests until hyper is done with the connection, a timer runs out,
    /// or the server stops.
    async fn run<IO>(self, io: IO)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let limits = &self.shared.limits;
        let phase = ConnPhase::new(limits.max_header_bytes.max(1), self.accepted);
        let handler = self.handler(&phase);
        let mut conn = http1_builder(limits.max_header_bytes)
            .serve_connection(TokioIo::new(Guarded::new(io, phase.clone())), handler);
        let mut stopping = false;
        let timeouts = Timeouts {
            idle: limits.idle_timeout,
            header: limits.header_timeout,
            request: limits.request_timeout,
        };
        loop {
            let due = phase.deadline(&timeouts);
            let timer = async {
                match due {
                    Some((at, _)) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => {
                    let io = conn.into_parts().io.into_inner().into_inner();
                    self.served(io, r, &phase).await;
                    return;
                }
                _ = timer => {
                    // Activity may have moved the deadline since it was read.
                    let Some((at, which)) = phase.deadline(&timeouts) else {
                        continue;
                    };
                    if tokio::time::Instant::now() < at {
                        continue;
                    }
                    let io = conn.into_parts().io.into_inner().into_inner();
                    self.timed_out(io, which, &phase).await;
                    return;
                }
                _ = phase.changed() => {}
                _ = self.stop.cancelled(), if !stopping => {
                    // Idle connections close now; a request in progress is
                    // answered (with `Connection: close`) first.
                    stopping = true;
                    std::pin::Pin::new(&mut conn).graceful_shutdown();
                }
                _ = self.kill.cancelled() => return,
            }
        }
    }

    /// What hyper hands each request to.
    fn handler(&self, phase: &Arc<ConnPhase>) -> Handler {
        Handler {
            app: self.shared.app.clone(),
            peer: self.peer,
            proxied: self
                .shared
                .trusted_proxies
                .trusts(canonical(self.peer.ip())),
            shared: self.shared.clone(),
            phase: phase.clone(),
        }
    }

    /// hyper is done with the connection: it is closed, or answered first when the
    /// head scanner refused a head.
    async fn served<IO>(&self, io: IO, r: hyper::Result<()>, phase: &ConnPhase)
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        match (r, phase.refusal()) {
            (Ok(()), _) => close(io).await,
            (Err(_), Some(refused)) => {
                hit("http_header_bytes");
                let max = self.shared.limits.max_header_bytes;
                refuse(io, &head_refusal(refused, max)).await;
            }
            (Err(e), None) => debug!(peer = %self.peer, error = %e, "HTTP connection failed"),
        }
    }

    /// A timer ran out: the connection is closed, answered 408 first when a head
    /// started and did not arrive in time.
    async fn timed_out<IO>(&self, io: IO, which: Due, phase: &ConnPhase)
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        match which {
            Due::Idle => {
                hit("http_idle_timeout");
                close(io).await;
            }
            Due::Request => {
                // A body that never comes (or an answer nobody reads) holds a
                // slot no longer.
                hit("http_request_timeout");
                debug!(peer = %self.peer, "request not finished within limits.http.request_timeout");
                close(io).await;
            }
            Due::Header if !phase.head_started() => {
                // A connection that never sent a byte asked nothing: it is closed
                // without an answer.
                hit("http_header_timeout");
                close(io).await;
            }
            Due::Header => {
                hit("http_header_timeout");
                let body = refusal(
                    StatusCode::REQUEST_TIMEOUT,
                    -408,
                    &format!(
                        "request head not received within {:?} (limits.http.header_timeout)",
                        self.shared.limits.header_timeout
                    ),
                );
                refuse(io, &body).await;
            }
        }
    }
}

/// hyper's HTTP/1.1 settings: keep-alive, and no header timer of its own.
fn http1_builder(max_header_bytes: usize) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .keep_alive(true)
        // herald runs its own header and idle timers (see the module doc).
        .header_read_timeout(None)
        // A backstop above the head scanner's own limit; hyper needs 8 KiB.
        .max_buf_size(max_header_bytes.max(8192) + 8192);
    builder
}

/// Closes a connection politely (TLS close_notify, then FIN).
async fn close<IO: AsyncWrite + Unpin>(mut io: IO) {
    let _ = tokio::time::timeout(REFUSAL_TIME, io.shutdown()).await;
}

/// Writes a canned answer, closes the write side, then reads and discards what the
/// client is still sending for a moment, so that closing does not reset the
/// connection before the client has read the answer.
async fn refuse<IO: AsyncRead + AsyncWrite + Unpin>(mut io: IO, answer: &[u8]) {
    let _ = tokio::time::timeout(REFUSAL_TIME, async {
        io.write_all(answer).await?;
        io.shutdown().await?;
        let mut sink = [0u8; 8192];
        let mut drained = 0usize;
        while drained < 1 << 20 {
            match io.read(&mut sink).await? {
                0 => break,
                n => drained += n,
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// An HTTP/1.1 answer in goim's envelope, closing the connection.
pub(super) fn refusal(status: StatusCode, code: i32, message: &str) -> Vec<u8> {
    let body = serde_json::json!({"code": code, "message": message}).to_string();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

fn head_refusal(r: HeadRefusal, max: usize) -> Vec<u8> {
    match r {
        HeadRefusal::TooLarge => refusal(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            -431,
            &format!(
                "request line and headers exceed {max} bytes (limits.http.max_header_bytes); \
                 send long recipient lists to POST /herald/push/keys or /herald/push/mids"
            ),
        ),
        HeadRefusal::UriTooLong => refusal(
            StatusCode::URI_TOO_LONG,
            -414,
            &format!(
                "request target exceeds {MAX_URI_BYTES} bytes; \
                 send long recipient lists to POST /herald/push/keys or /herald/push/mids"
            ),
        ),
    }
}

/// Hands each request to the router with the client's address.
#[derive(Clone)]
struct Handler {
    app: Router,
    peer: SocketAddr,
    /// The peer is a trusted proxy: its `X-Forwarded-For` names the client.
    proxied: bool,
    shared: Arc<Shared>,
    phase: Arc<ConnPhase>,
}

impl Handler {
    fn client_ip(&self, req: &Request<Incoming>) -> IpAddr {
        if !self.proxied {
            return canonical(self.peer.ip());
        }
        let xff = req
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok());
        self.shared.trusted_proxies.client_ip(self.peer.ip(), xff)
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for Handler {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture;

    fn call(&self, req: Request<Incoming>) -> BoxFuture {
        let in_flight = InFlight::start(self.phase.clone());
        let client = self.client_ip(&req);
        // Behind a trusted proxy one connection carries many clients: each
        // client's requests in progress are counted instead of its connections.
        let per_client = match (&self.shared.per_proxied_client, self.proxied) {
            (Some(counter), true) => match counter.try_acquire(client) {
                Some(guard) => Some(guard),
                None => {
                    hit("http_connections_per_ip");
                    let res = ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        -429,
                        format!(
                            "too many requests in progress from {client}: the limit is {} \
                             (limits.http.connections_per_ip)",
                            self.shared.limits.connections_per_ip
                        ),
                    )
                    .into_response();
                    let res = res.map(|b| Body::new(Tracked::new(b, (in_flight, None))));
                    return Box::pin(async move { Ok(res) });
                }
            },
            _ => None,
        };
        let (mut parts, body) = req.into_parts();
        parts.extensions.insert(ClientAddr(client));
        parts.extensions.insert(ConnectInfo(self.peer));
        let req = Request::from_parts(parts, Body::new(body));
        let app = self.app.clone();
        Box::pin(async move {
            let res = match tower::ServiceExt::oneshot(app, req).await {
                Ok(res) => res,
                Err(never) => match never {},
            };
            Ok(res.map(|b| Body::new(Tracked::new(b, (in_flight, per_client)))))
        })
    }
}

/// A response body holding what must live until it is sent: the request's
/// in-progress mark and its per-client count.
struct Tracked {
    inner: Body,
    _hold: (InFlight, Option<IpGuard>),
}

impl Tracked {
    fn new(inner: Body, hold: (InFlight, Option<IpGuard>)) -> Tracked {
        Tracked { inner, _hold: hold }
    }
}

impl http_body::Body for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
