//! The protected gRPC between tiers, over real loopback connections and real TLS
//! handshakes: the cluster token (right, wrong, missing), TLS with the right and
//! a wrong CA, mutual TLS with and without a trusted client certificate, and the
//! dialer's refusal to downgrade.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_rpc::grpc::{self, ClientTimeouts, RemoteLogic};
use herald_rpc::transport::{self, Dialer, ServeOptions};
use herald_rpc::*;
use herald_testkit::Pki;
use herald_tls::transport::{TlsConnector, ALPN_H2};
use herald_tls::{ClientTls, ServerTls};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A logic that answers `Nodes` with a fixed domain.
struct Fixed;

#[async_trait]
impl LogicService for Fixed {
    async fn connect(&self, _: ConnectReq) -> RpcResult<ConnectReply> {
        Ok(ConnectReply::default())
    }
    async fn disconnect(&self, _: DisconnectReq) -> RpcResult<DisconnectReply> {
        Ok(DisconnectReply::default())
    }
    async fn heartbeat(&self, _: HeartbeatReq) -> RpcResult<()> {
        Ok(())
    }
    async fn renew_online(&self, _: OnlineReq) -> RpcResult<OnlineReply> {
        Ok(OnlineReply::default())
    }
    async fn receive(&self, _: ReceiveReq) -> RpcResult<ReceiveReply> {
        Ok(ReceiveReply::default())
    }
    async fn refresh(&self, _: ConnectReq) -> RpcResult<ConnectReply> {
        Ok(ConnectReply::default())
    }
    async fn nodes(&self, _: NodesReq) -> RpcResult<NodesReply> {
        Ok(NodesReply {
            domain: "served".into(),
            ..Default::default()
        })
    }
}

/// A served logic, stopped on drop.
struct Served {
    addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve(options: ServeOptions) -> Served {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let routes = tonic::service::Routes::new(grpc::logic_server(Arc::new(Fixed)));
    tokio::spawn(transport::serve(
        listener,
        routes,
        options,
        stop.clone().cancelled_owned(),
    ));
    Served { addr, stop }
}

fn timeouts() -> ClientTimeouts {
    ClientTimeouts {
        connect: Duration::from_secs(2),
        call: Duration::from_secs(2),
    }
}

fn server_tls(pki: &Pki, mutual: bool) -> Arc<herald_tls::rustls::ServerConfig> {
    let tls = ServerTls {
        cert_file: pki.server_cert.clone(),
        key_file: pki.server_key.clone(),
        client_ca_file: if mutual {
            pki.ca.clone()
        } else {
            Default::default()
        },
    };
    herald_tls::server_config(&tls, &[ALPN_H2]).unwrap().config
}

fn connector(
    ca: &std::path::Path,
    identity: Option<(&std::path::Path, &std::path::Path)>,
) -> TlsConnector {
    let tls = ClientTls {
        ca_file: ca.to_path_buf(),
        cert_file: identity.map(|i| i.0.to_path_buf()).unwrap_or_default(),
        key_file: identity.map(|i| i.1.to_path_buf()).unwrap_or_default(),
        ..Default::default()
    };
    let config = herald_tls::client_config(&tls, &[ALPN_H2]).unwrap();
    TlsConnector::new(config, "").unwrap()
}

async fn nodes(addr: &str, dialer: &Dialer) -> RpcResult<NodesReply> {
    RemoteLogic::dial(addr, dialer)?
        .nodes(NodesReq::default())
        .await
}

#[tokio::test]
async fn the_token_is_required_and_checked() {
    let s = serve(ServeOptions {
        token: "s3cret-token".into(),
        tls: None,
    })
    .await;
    let addr = format!("grpc://{}", s.addr);

    let right = Dialer::new(timeouts()).with_token("s3cret-token").unwrap();
    assert_eq!(nodes(&addr, &right).await.unwrap().domain, "served");

    let missing = Dialer::new(timeouts());
    let err = nodes(&addr, &missing).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unauthenticated, "{err}");
    assert!(err.message.contains("requires the cluster token"), "{err}");

    for wrong in ["s3cret-tokem", "s3cret-token-", "s"] {
        let d = Dialer::new(timeouts()).with_token(wrong).unwrap();
        let err = nodes(&addr, &d).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Unauthenticated, "{wrong}: {err}");
        assert!(err.message.contains("wrong cluster token"), "{err}");
    }

    // A token that cannot travel in a header is refused up front.
    let err = Dialer::new(timeouts()).with_token("two words").unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidArgument);
}

#[tokio::test]
async fn a_server_without_token_ignores_one() {
    // goim's behaviour by default; a client that already sends the token (a
    // cluster being switched over) still gets answers.
    let s = serve(ServeOptions::default()).await;
    let d = Dialer::new(timeouts()).with_token("anything").unwrap();
    assert_eq!(
        nodes(&s.addr.to_string(), &d).await.unwrap().domain,
        "served"
    );
}

#[tokio::test]
async fn tls_with_the_right_ca_works_and_a_wrong_ca_fails() {
    let pki = Pki::new();
    let s = serve(ServeOptions {
        token: "t0ken".into(),
        tls: Some(server_tls(&pki, false)),
    })
    .await;
    let tls_addr = format!("grpcs://{}", s.addr);

    let good = Dialer::new(timeouts())
        .with_token("t0ken")
        .unwrap()
        .with_tls(connector(&pki.ca, None), false);
    assert_eq!(nodes(&tls_addr, &good).await.unwrap().domain, "served");
    // `localhost` is in the certificate too; `server_name` verifies it when the
    // server is dialled by another name.
    let by_name = Dialer::new(timeouts())
        .with_token("t0ken")
        .unwrap()
        .with_tls(
            TlsConnector::new(
                herald_tls::client_config(
                    &ClientTls {
                        ca_file: pki.ca.clone(),
                        ..Default::default()
                    },
                    &[ALPN_H2],
                )
                .unwrap(),
                "localhost",
            )
            .unwrap(),
            false,
        );
    assert_eq!(nodes(&tls_addr, &by_name).await.unwrap().domain, "served");

    let wrong_ca = Dialer::new(timeouts())
        .with_token("t0ken")
        .unwrap()
        .with_tls(connector(&pki.other_ca, None), false);
    let err = nodes(&tls_addr, &wrong_ca).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unavailable, "{err}");
    assert!(err.message.contains("UnknownIssuer"), "{err}");

    let wrong_name = Dialer::new(timeouts())
        .with_token("t0ken")
        .unwrap()
        .with_tls(
            TlsConnector::new(
                herald_tls::client_config(
                    &ClientTls {
                        ca_file: pki.ca.clone(),
                        ..Default::default()
                    },
                    &[ALPN_H2],
                )
                .unwrap(),
                "comet.example.org",
            )
            .unwrap(),
            false,
        );
    assert!(nodes(&tls_addr, &wrong_name).await.is_err());

    // Plain gRPC to a TLS port gets nothing back.
    let plain = Dialer::new(timeouts()).with_token("t0ken").unwrap();
    assert!(nodes(&format!("grpc://{}", s.addr), &plain).await.is_err());
    // And the server keeps serving good clients after all of these.
    assert_eq!(nodes(&tls_addr, &good).await.unwrap().domain, "served");
}

#[tokio::test]
async fn mutual_tls_needs_a_client_certificate_from_the_ca() {
    let pki = Pki::new();
    let s = serve(ServeOptions {
        token: String::new(),
        tls: Some(server_tls(&pki, true)),
    })
    .await;
    let addr = format!("grpcs://{}", s.addr);

    let with_cert = Dialer::new(timeouts()).with_tls(
        connector(&pki.ca, Some((&pki.client_cert, &pki.client_key))),
        false,
    );
    assert_eq!(nodes(&addr, &with_cert).await.unwrap().domain, "served");

    let without = Dialer::new(timeouts()).with_tls(connector(&pki.ca, None), false);
    let err = nodes(&addr, &without).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unavailable, "{err}");
    assert!(err.message.contains("CertificateRequired"), "{err}");

    let stranger = Dialer::new(timeouts()).with_tls(
        connector(
            &pki.ca,
            Some((&pki.other_client_cert, &pki.other_client_key)),
        ),
        false,
    );
    assert!(nodes(&addr, &stranger).await.is_err());
    assert_eq!(nodes(&addr, &with_cert).await.unwrap().domain, "served");
}

#[tokio::test]
async fn the_dialer_does_not_downgrade() {
    let pki = Pki::new();
    let s = serve(ServeOptions::default()).await;
    let plain_addr = format!("grpc://{}", s.addr);

    let strict = Dialer::new(timeouts()).with_tls(connector(&pki.ca, None), false);
    let err = nodes(&plain_addr, &strict).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidArgument, "{err}");
    assert!(err.message.contains("requires TLS"), "{err}");

    // Accepting plain peers is explicit (a cluster part way to TLS).
    let lenient = Dialer::new(timeouts()).with_tls(connector(&pki.ca, None), true);
    assert_eq!(nodes(&plain_addr, &lenient).await.unwrap().domain, "served");

    // A TLS address needs TLS settings.
    let err = nodes(&format!("grpcs://{}", s.addr), &Dialer::new(timeouts()))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidArgument, "{err}");
    assert!(err.message.contains("rpc.tls.ca_file"), "{err}");
}

/// A peer that opens a connection and never speaks TLS holds up nobody: other
/// clients complete their handshakes and calls meanwhile.
#[tokio::test]
async fn a_stalled_handshake_does_not_block_others() {
    let pki = Pki::new();
    let s = serve(ServeOptions {
        token: String::new(),
        tls: Some(server_tls(&pki, false)),
    })
    .await;
    let _silent = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let _half = {
        use tokio::io::AsyncWriteExt;
        let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        // The first bytes of a TLS record header, then nothing.
        c.write_all(&[0x16, 0x03]).await.unwrap();
        c
    };
    let d = Dialer::new(timeouts()).with_tls(connector(&pki.ca, None), false);
    let addr = format!("grpcs://{}", s.addr);
    for _ in 0..3 {
        assert_eq!(nodes(&addr, &d).await.unwrap().domain, "served");
    }
}
