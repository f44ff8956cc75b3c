//! The upstream over TLS: HTTP/2 when the upstream offers it by ALPN,
//! HTTP/1.1 when it offers only that, with a certificate trusted through
//! `--upstream-ca-file`.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use support::{get_me, listener, request, send};
use tower_rest_ratelimit_proxy::{Config, Proxy, PROXY_HEADER};

/// A TLS server for `localhost` offering `alpn`, answering with the
/// version and the body length it got, and a bucket's headers.
fn upstream(alpn: &[&[u8]]) -> (SocketAddr, String) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let pem = certified.cert.pem();
    let cert: CertificateDer<'static> = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let (listener, addr) = listener();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service = service_fn(|request: Request<Incoming>| async move {
                    let version = format!("{:?}", request.version());
                    let host = request
                        .uri()
                        .authority()
                        .map(|a| a.to_string())
                        .or_else(|| {
                            let host = request.headers().get(http::header::HOST)?;
                            Some(host.to_str().ok()?.to_owned())
                        })
                        .unwrap_or_default();
                    let length = request
                        .into_body()
                        .collect()
                        .await
                        .unwrap()
                        .to_bytes()
                        .len();
                    let response = Response::builder()
                        .header("x-upstream-version", version)
                        .header("x-upstream-host", host)
                        .header("x-ratelimit-bucket", "tls")
                        .header("x-ratelimit-limit", "5")
                        .header("x-ratelimit-remaining", "4")
                        .header("x-ratelimit-reset-after", "1.000")
                        .body(Full::new(Bytes::from(length.to_string())))
                        .unwrap();
                    Ok::<_, Infallible>(response)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, pem)
}

async fn through_tls(alpn: &[&[u8]], want: &str) {
    let (upstream, pem) = upstream(alpn);
    let dir = std::env::temp_dir().join(format!(
        "discord-ratelimit-proxy-tls-{}-{}",
        std::process::id(),
        want.len()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, pem).unwrap();

    let mut config = Config::new(
        format!("https://localhost:{}", upstream.port())
            .parse()
            .unwrap(),
    );
    config.upstream_ca_file = Some(ca);
    let proxy = Proxy::start(config).await.unwrap();
    for channel in 1..=3 {
        let mut request = request(
            Method::POST,
            proxy.addr(),
            &format!("/api/v10/channels/{channel}/messages"),
            Some("Bot tls"),
        );
        *request.body_mut() = Full::new(Bytes::from_static(b"{\"content\":\"hi\"}"));
        let response = send(request).await;
        assert_eq!(
            response.status(),
            200,
            "{:?}",
            response.headers().get(PROXY_HEADER)
        );
        assert_eq!(response.headers()["x-upstream-version"], want);
        assert_eq!(
            response.headers()["x-upstream-host"],
            format!("localhost:{}", upstream.port()).as_str()
        );
        assert_eq!(response.body().as_ref(), b"16");
    }
    proxy.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_over_tls_when_the_upstream_offers_it() {
    through_tls(&[b"h2", b"http/1.1"], "HTTP/2.0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_over_tls_otherwise() {
    through_tls(&[b"http/1.1"], "HTTP/1.1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_upstream_is_a_502() {
    let (upstream, _) = upstream(&[b"h2", b"http/1.1"]);
    let config = Config::new(
        format!("https://localhost:{}", upstream.port())
            .parse()
            .unwrap(),
    );
    let proxy = Proxy::start(config).await.unwrap();
    let response = get_me(proxy.addr(), "Bot tls").await;
    assert_eq!(response.status(), 502);
    assert_eq!(response.headers()[PROXY_HEADER], "upstream-connect");
    proxy.shutdown().await;
}
