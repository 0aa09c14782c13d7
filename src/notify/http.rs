//! A small HTTP/1.1 client for deliveries: one connection per request (robots take at most 20
//! messages a minute), TLS by rustls with the system's root certificates, one timeout over
//! connect, TLS, request and response, and a bounded response body.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderMap, HeaderValue, USER_AGENT};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use url::Url;

/// Largest response body kept (robots answer with a few hundred bytes).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The body as text (lossy), shortened for logs and dead letters.
    pub fn text(&self) -> String {
        let s = String::from_utf8_lossy(&self.body);
        let s = super::wecom::truncate_bytes(&s, 2048);
        format!("HTTP {}: {}", self.status.as_u16(), s)
    }
}

#[cfg(test)]
impl Reply {
    /// A reply with no headers, for classification tests.
    pub(crate) fn for_test(status: u16, body: &str) -> Reply {
        Reply {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::IM_A_TEAPOT),
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_string()),
        }
    }
}

/// Why no response came back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The URL cannot be requested at all (a configuration error: not retried).
    #[error("bad url: {0}")]
    BadUrl(String),
    /// No TLS roots on this machine (not retried).
    #[error("tls: {0}")]
    TlsSetup(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// Connect, TLS, or a broken exchange: worth retrying.
    #[error("{0}")]
    Io(String),
}

/// The client; cheap to clone.
#[derive(Clone)]
pub struct HttpClient {
    timeout: Duration,
    tls: Arc<OnceLock<Result<Arc<rustls::ClientConfig>, String>>>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl HttpClient {
    pub fn new(timeout: Duration) -> HttpClient {
        HttpClient {
            timeout,
            tls: Arc::new(OnceLock::new()),
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The TLS configuration, built on first https use from the system's roots.
    fn tls(&self) -> Result<Arc<rustls::ClientConfig>, HttpError> {
        self.tls
            .get_or_init(|| {
                let found = rustls_native_certs::load_native_certs();
                let mut roots = rustls::RootCertStore::empty();
                let (added, _) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    let why = found
                        .errors
                        .first()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default();
                    return Err(format!(
                        "no root certificates found on this machine (install ca-certificates){why}"
                    ));
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
                    .map_err(|e| format!("rustls: {e}"))
            })
            .clone()
            .map_err(HttpError::TlsSetup)
    }

    /// POSTs `body` as JSON to `url` with extra `headers`.
    pub async fn post_json(
        &self,
        url: &Url,
        headers: &[(&'static str, String)],
        body: Bytes,
    ) -> Result<Reply, HttpError> {
        match tokio::time::timeout(self.timeout, self.exchange(url, headers, body)).await {
            Ok(r) => r,
            Err(_) => Err(HttpError::Timeout(self.timeout)),
        }
    }

    async fn exchange(
        &self,
        url: &Url,
        headers: &[(&'static str, String)],
        body: Bytes,
    ) -> Result<Reply, HttpError> {
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| HttpError::BadUrl("no host".into()))?;
        let port = url
            .port_or_known_default()
            .ok_or_else(|| HttpError::BadUrl(format!("no port for scheme {}", url.scheme())))?;
        let mut path = url.path().to_string();
        if let Some(q) = url.query() {
            path.push('?');
            path.push_str(q);
        }
        let host_header = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        let mut request = Request::post(path)
            .header(HOST, host_header)
            .header(CONTENT_TYPE, "application/json; charset=utf-8")
            .header(CONTENT_LENGTH, body.len())
            .header(
                USER_AGENT,
                concat!("touchstream/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in headers {
            let value = HeaderValue::from_str(value)
                .map_err(|e| HttpError::BadUrl(format!("header {name}: {e}")))?;
            request = request.header(*name, value);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| HttpError::BadUrl(e.to_string()))?;
        // IPv6 literals come bracketed from the URL; the socket wants them bare.
        let connect_host = host.trim_start_matches('[').trim_end_matches(']');
        let tcp = TcpStream::connect((connect_host, port))
            .await
            .map_err(|e| HttpError::Io(format!("connect {host}:{port}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        match url.scheme() {
            "http" => send(tcp, request).await,
            "https" => {
                let name = rustls::pki_types::ServerName::try_from(connect_host.to_string())
                    .map_err(|e| HttpError::BadUrl(format!("server name {host}: {e}")))?;
                let tls = tokio_rustls::TlsConnector::from(self.tls()?)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| HttpError::Io(format!("tls with {host}: {e}")))?;
                send(tls, request).await
            }
            other => Err(HttpError::BadUrl(format!("scheme {other}"))),
        }
    }
}

async fn send<S>(stream: S, request: Request<Full<Bytes>>) -> Result<Reply, HttpError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| HttpError::Io(format!("http handshake: {e}")))?;
    let driver = tokio::spawn(async move {
        // Errors surface through `send_request` below.
        let _ = connection.await;
    });
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| HttpError::Io(format!("request: {e}")))?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| HttpError::Io(format!("response body: {e}")))?
            .to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
    .await;
    driver.abort();
    result
}
