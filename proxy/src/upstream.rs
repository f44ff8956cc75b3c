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
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

use crate::respond::strip_hop_by_hop;

/// The upstream client: request bodies stream through as they come.
pub(crate) type UpstreamClient = Client<HttpsConnector<HttpConnector>, Incoming>;

/// The client; `extra_roots`: certificates trusted besides the web roots.
pub(crate) fn client(extra_roots: &[CertificateDer<'static>]) -> Result<UpstreamClient, String> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    let mut roots = RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in extra_roots {
        roots
            .add(cert.clone())
            .map_err(|e| format!("an upstream CA certificate is invalid: {e}"))?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(
        rustls::crypto::ring::default_provider().into(),
    )
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector))
}

/// The certificates of a PEM file.
pub(crate) fn read_pem(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", path.display()));
    }
    Ok(certs)
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
        // The proxy answered `Expect: 100-continue` to its client already.
        parts.headers.remove(header::EXPECT);
        // The client's version is between it and us: the upstream's is
        // negotiated (ALPN).
        parts.version = Version::HTTP_11;
        Request::from_parts(parts, body)
    }
}
