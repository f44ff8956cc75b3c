//! The client to the upstream: hyper-util's pooled client over rustls
//! (ring, webpki roots), HTTP/1.1 and HTTP/2 (by ALPN), plain `http://`
//! too.

use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{header, Request, Uri, Version};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::respond::strip_hop_by_hop;

/// The upstream client: request bodies stream through as they come.
pub(crate) type UpstreamClient = Client<HttpsConnector<HttpConnector>, Incoming>;

pub(crate) fn client() -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
        .expect("ring supports the default TLS versions")
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector)
}

/// Where requests go: the upstream's scheme and authority.
#[derive(Debug, Clone)]
pub(crate) struct Upstream {
    scheme: Scheme,
    authority: Authority,
}

impl Upstream {
    pub(crate) fn new(uri: &Uri) -> Self {
        Upstream {
            scheme: uri.scheme().cloned().unwrap_or(Scheme::HTTPS),
            authority: uri.authority().cloned().expect("checked by the config"),
        }
    }

    /// The client's request, to the upstream: same method, path and query,
    /// headers and body, less the hop-by-hop headers and `Host` (the
    /// client sets the upstream's).
    pub(crate) fn rewrite(&self, request: Request<Incoming>) -> Request<Incoming> {
        let (mut parts, body) = request.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()
            .expect("a valid URI from valid parts");
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(header::HOST);
        // The client's version is between it and us: the upstream's is
        // negotiated (ALPN).
        parts.version = Version::HTTP_11;
        Request::from_parts(parts, body)
    }
}
