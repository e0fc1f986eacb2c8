//! TLS under HTTP/2 clients and servers built on tokio (tonic's gRPC channels and
//! servers): [`TlsConnector`] dials TCP and completes a TLS handshake for a
//! channel, [`TlsIncoming`] turns a listener into a stream of TLS connections for
//! a server.
//!
//! Both take their rustls configurations from [`client_config`](crate::client_config)
//! and [`server_config`](crate::server_config), so internal gRPC uses the same
//! `ring` provider, CA handling and reloadable certificates as every other edge.
//! Handshakes run concurrently inside the incoming stream (a client that stalls its
//! handshake holds up nobody) and are bounded by a timeout.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, Stream, StreamExt};
use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{client, server};

/// How long a peer may take to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The ALPN protocol of gRPC (HTTP/2 over TLS).
pub const ALPN_H2: &[u8] = b"h2";

/// Dials `https://host:port` URIs over TCP and TLS (a `tower` service, as
/// `tonic::transport::Endpoint::connect_with_connector` wants).
#[derive(Clone)]
pub struct TlsConnector {
    connector: tokio_rustls::TlsConnector,
    /// The name to verify instead of the URI's host (servers dialled by IP whose
    /// certificate names a host).
    server_name: Option<ServerName<'static>>,
}

impl TlsConnector {
    /// A connector with `config` (offer ALPN `h2` in it) and an optional name to
    /// verify in place of each URI's host.
    pub fn new(
        config: Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> Result<TlsConnector, crate::TlsError> {
        let server_name = if server_name.is_empty() {
            None
        } else {
            Some(ServerName::try_from(server_name.to_string()).map_err(|e| {
                crate::TlsError::Config(format!("server_name {server_name:?}: {e}"))
            })?)
        };
        Ok(TlsConnector {
            connector: tokio_rustls::TlsConnector::from(config),
            server_name,
        })
    }

    fn target(&self, uri: &Uri) -> io::Result<(String, u16, ServerName<'static>)> {
        let host = uri.host().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("no host in {uri}"))
        })?;
        // `[::1]` in a URI is `::1` to the resolver and to certificate checks.
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(443);
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => ServerName::try_from(host.clone())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{host}: {e}")))?,
        };
        Ok((host, port, name))
    }
}

impl tower_service::Service<Uri> for TlsConnector {
    type Response = TokioIo<client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let target = self.target(&uri);
        let connector = self.connector.clone();
        Box::pin(async move {
            let (host, port, name) = target?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp))
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no TLS handshake with {host}:{port} within {HANDSHAKE_TIMEOUT:?}"),
                    )
                })?
                .map_err(|e| io::Error::new(e.kind(), format!("TLS with {host}:{port}: {e}")))?;
            Ok(TokioIo::new(tls))
        })
    }
}

type Handshake = Pin<Box<dyn Future<Output = io::Result<server::TlsStream<TcpStream>>> + Send>>;

/// Accepted TCP connections after their TLS handshake, as a stream for
/// `tonic::transport::Server::serve_with_incoming*`. A failed or timed-out
/// handshake is logged and skipped; an accept error is passed on (the server logs
/// it and keeps accepting).
pub struct TlsIncoming {
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    handshakes: FuturesUnordered<Handshake>,
}

/// Handshakes in progress at once on one internal listener: whoever reaches the
/// port cannot make it hold more descriptors than this (plus established
/// connections).
pub const MAX_HANDSHAKES: usize = 256;

impl TlsIncoming {
    /// Serves TLS with `config` (offer ALPN `h2` in it) on `listener`.
    pub fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> TlsIncoming {
        TlsIncoming {
            listener,
            acceptor: tokio_rustls::TlsAcceptor::from(config),
            handshakes: FuturesUnordered::new(),
        }
    }

    fn handshake(&self, tcp: TcpStream) -> Handshake {
        let acceptor = self.acceptor.clone();
        Box::pin(async move {
            let _ = tcp.set_nodelay(true);
            let peer = tcp.peer_addr().ok();
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => Ok(tls),
                Ok(Err(e)) => Err(io::Error::new(
                    e.kind(),
                    format!("TLS handshake with {peer:?} failed: {e}"),
                )),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no TLS handshake from {peer:?} within {HANDSHAKE_TIMEOUT:?}"),
                )),
            }
        })
    }
}

impl Stream for TlsIncoming {
    type Item = io::Result<server::TlsStream<TcpStream>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // Take connections waiting in the backlog (at most MAX_HANDSHAKES in
        // progress: beyond that they wait in the backlog and hold no descriptor),
        // then hand out a finished handshake if there is one; both register the
        // waker, and a finished handshake makes room for the next accept.
        while self.handshakes.len() < MAX_HANDSHAKES {
            match self.listener.poll_accept(cx) {
                Poll::Ready(Ok((tcp, _))) => {
                    let h = self.handshake(tcp);
                    self.handshakes.push(h);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                Poll::Pending => break,
            }
        }
        loop {
            match self.handshakes.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(tls))) => return Poll::Ready(Some(Ok(tls))),
                Poll::Ready(Some(Err(e))) => {
                    // One peer's failure (wrong CA, no client certificate, not TLS
                    // at all) is that peer's problem: log it and keep serving.
                    tracing::warn!(error = %e, "internal TLS connection refused");
                }
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}
