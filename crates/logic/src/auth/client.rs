//! The small HTTP/1.1 client of the webhook and JWKS authenticators.
//!
//! hyper-util's pooling client over a connector of our own: plain TCP for `http`,
//! tokio-rustls (ring) for `https`, trusting either the public web PKI roots (a
//! public JWKS endpoint) or the CA of a [`ClientTls`] (a private backend, optionally
//! with a client certificate). Connections are kept alive between calls, so a busy
//! webhook does not pay a handshake per connect. Every connection task runs on the
//! caller's [`TaskTracker`] and ends when `stop` fires.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use herald_tls::rustls::pki_types::ServerName;
use herald_tls::rustls::{self, RootCertStore};
use herald_tls::ClientTls;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::AuthSetupError;

/// Why a call got no usable answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    /// No connection could be made (refused, DNS, TLS handshake).
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The exchange failed after connecting.
    #[error("request failed: {0}")]
    Request(String),
    /// The answer was larger than allowed.
    #[error("answer larger than {0} bytes")]
    TooLarge(usize),
}

/// An answer: status and the whole body.
pub(crate) struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

/// A pooled HTTP/1.1 client.
#[derive(Clone)]
pub(crate) struct HttpClient {
    inner: Client<Connector, Full<Bytes>>,
}

impl HttpClient {
    /// A client for `url`'s scheme; `tls` applies to https. `what` names the
    /// setting in errors. At most `max_idle` connections are kept alive.
    pub(crate) fn new(
        url: &Uri,
        tls: &ClientTls,
        what: &'static str,
        max_idle: usize,
        stop: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<HttpClient, AuthSetupError> {
        let connector = Connector {
            tls: match url.scheme_str() {
                Some("https") => Some(tls_config(tls, what)?),
                _ => None,
            },
            server_name: Arc::from(tls_server_name(url, &tls.server_name)),
        };
        let inner = Client::builder(TrackedExecutor {
            tracker: tracker.clone(),
            stop,
        })
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(max_idle)
        .pool_timer(TokioTimer::new())
        .build(connector);
        Ok(HttpClient { inner })
    }

    /// Sends `req` and reads an answer of at most `limit` bytes.
    pub(crate) async fn send(
        &self,
        req: Request<Full<Bytes>>,
        limit: usize,
    ) -> Result<Answer, CallError> {
        let resp = self.inner.request(req).await.map_err(|e| {
            if e.is_connect() {
                CallError::Connect(source_chain(&e))
            } else {
                CallError::Request(source_chain(&e))
            }
        })?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), limit)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    CallError::TooLarge(limit)
                } else {
                    CallError::Request(e.to_string())
                }
            })?
            .to_bytes();
        Ok(Answer { status, body })
    }
}

/// The error and its causes on one line (hyper's own message is terse).
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// The name the server certificate must carry: `server_name` when set, else the
/// URL's host.
fn tls_server_name(url: &Uri, server_name: &str) -> String {
    if !server_name.is_empty() {
        return server_name.to_string();
    }
    url.host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string()
}

/// The rustls configuration for an https URL: `tls`'s CA when it names one, else
/// the public web PKI roots.
fn tls_config(
    tls: &ClientTls,
    what: &'static str,
) -> Result<Arc<rustls::ClientConfig>, AuthSetupError> {
    let alpn: &[&[u8]] = &[b"http/1.1"];
    if !tls.ca_file.as_os_str().is_empty() {
        return herald_tls::client_config(tls, alpn)
            .map_err(|source| AuthSetupError::Tls { what, source });
    }
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let builder = rustls::ClientConfig::builder_with_provider(herald_tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| AuthSetupError::Tls {
            what,
            source: herald_tls::TlsError::Config(e.to_string()),
        })?
        .with_root_certificates(roots);
    let mut config = if tls.cert_file.as_os_str().is_empty() {
        builder.with_no_client_auth()
    } else {
        let tls_err = |source| AuthSetupError::Tls { what, source };
        let chain = herald_tls::load_certs(&tls.cert_file).map_err(tls_err)?;
        let key = herald_tls::load_key(&tls.key_file).map_err(tls_err)?;
        builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| AuthSetupError::Tls {
                what,
                source: herald_tls::TlsError::Config(format!("client certificate: {e}")),
            })?
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Spawns hyper's connection tasks on the owner's tracker, stopped by `stop`.
#[derive(Clone)]
struct TrackedExecutor {
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl<F> hyper::rt::Executor<F> for TrackedExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = fut => {}
            }
        });
    }
}

/// Opens TCP, then TLS for https.
#[derive(Clone)]
struct Connector {
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The certificate name to verify (see [`tls_server_name`]).
    server_name: Arc<str>,
}

impl tower_service::Service<Uri> for Connector {
    type Response = Stream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Stream>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        let server_name = self.server_name.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "URL without a host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let https = uri.scheme_str() == Some("https");
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            let _ = tcp.set_nodelay(true);
            match (https, tls) {
                (false, _) => Ok(Stream::Plain(TokioIo::new(tcp))),
                (true, Some(config)) => {
                    let name = ServerName::try_from(server_name.to_string())
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
                    let tls = TlsConnector::from(config).connect(name, tcp).await?;
                    Ok(Stream::Tls(Box::new(TokioIo::new(tls))))
                }
                (true, None) => Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "https URL on a client built for http",
                )),
            }
        })
    }
}

/// A connection, plain or TLS.
enum Stream {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl Read for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl Write for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
