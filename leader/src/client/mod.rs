//! A small HTTPS client for the admin API: one kept-alive HTTP/1.1 connection,
//! verified against the cluster CA. Tests, `pce bench api` and tools use it; it is
//! not needed to use the API (any HTTP client is).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;

pub mod cluster;

/// Why a request did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting, TLS, or the HTTP exchange failed.
    #[error("{0}")]
    Transport(String),
    /// The API answered with a refusal; the message quotes it.
    #[error("{0}")]
    Refused(String),
    /// The cluster did not settle in time; the message says what is wrong.
    #[error("{0}")]
    NotConverged(String),
}

/// An answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: hyper::HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON (`Null` when empty or not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The first error token of an error answer.
    pub fn token(&self) -> String {
        self.json()[0]["token"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

/// How long a new connection may take, TCP and TLS together, before the
/// client gives up on the node: an API whose process hangs still has its
/// connections accepted by the kernel and would never answer the hello.
/// Far above a WAN round trip's share of a handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A new connection, before HTTP runs over it.
enum Opened {
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
    Plain(tokio::net::TcpStream),
}

/// A connection to one node's API.
pub struct ApiClient {
    addr: SocketAddr,
    tls: Option<tokio_rustls::TlsConnector>,
    auth: Option<String>,
    conn: Option<SendRequest<Full<Bytes>>>,
}

impl ApiClient {
    /// A client for `addr`; `ca_pem` verifies the server (HTTPS), `None` speaks HTTP.
    pub fn new(addr: SocketAddr, ca_pem: Option<&str>) -> Result<ApiClient, ClientError> {
        let tls = match ca_pem {
            None => None,
            Some(pem) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                    let c = c.map_err(|e| ClientError::Transport(format!("CA: {e}")))?;
                    roots
                        .add(c)
                        .map_err(|e| ClientError::Transport(format!("CA: {e}")))?;
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let cfg = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| ClientError::Transport(e.to_string()))?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                Some(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
            }
        };
        Ok(ApiClient {
            addr,
            tls,
            auth: None,
            conn: None,
        })
    }

    /// A TCP connection to the node, and TLS over it when the client speaks
    /// HTTPS, within the connect timeout.
    async fn open(&self) -> Result<Opened, ClientError> {
        let opening = async {
            let tcp = tokio::net::TcpStream::connect(self.addr)
                .await
                .map_err(|e| ClientError::Transport(format!("connect {}: {e}", self.addr)))?;
            let _ = tcp.set_nodelay(true);
            match &self.tls {
                Some(tls) => {
                    let name = ServerName::IpAddress(self.addr.ip().into());
                    let stream = tls
                        .connect(name, tcp)
                        .await
                        .map_err(|e| ClientError::Transport(format!("TLS: {e}")))?;
                    Ok(Opened::Tls(Box::new(stream)))
                }
                None => Ok(Opened::Plain(tcp)),
            }
        };
        tokio::time::timeout(CONNECT_TIMEOUT, opening).await.map_err(|_| {
            ClientError::Transport(format!(
                "{}: no connection within {CONNECT_TIMEOUT:?} (the node takes connections but does not answer)",
                self.addr
            ))
        })?
    }

    /// Sends every later request with these HTTP Basic credentials.
    pub fn with_key(mut self, user: &str, secret: &str) -> Self {
        self.set_key(user, secret);
        self
    }

    /// Changes the credentials.
    pub fn set_key(&mut self, user: &str, secret: &str) {
        let enc = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"));
        self.auth = Some(format!("Basic {enc}"));
    }

    /// Drops the connection (after a caller gave up on an answer, the next
    /// request must not queue behind it); the next request opens a new one.
    pub fn reset(&mut self) {
        self.conn = None;
    }

    /// Drops the credentials.
    pub fn without_key(mut self) -> Self {
        self.auth = None;
        self
    }

    async fn connect(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, ClientError> {
        if self.conn.as_ref().is_none_or(|c| c.is_closed()) {
            let sender = match self.open().await? {
                Opened::Tls(stream) => {
                    let (s, c) = hyper::client::conn::http1::handshake(TokioIo::new(*stream))
                        .await
                        .map_err(|e| ClientError::Transport(e.to_string()))?;
                    tokio::spawn(c);
                    s
                }
                Opened::Plain(tcp) => {
                    let (s, c) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                        .await
                        .map_err(|e| ClientError::Transport(e.to_string()))?;
                    tokio::spawn(c);
                    s
                }
            };
            self.conn = Some(sender);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| ClientError::Transport("no connection".into()))
    }

    /// Sends a request head declaring a body of `declared` bytes, then only
    /// `prefix` of it, and reads the status line of the answer: a server that
    /// decides before reading the body (refusing an unauthenticated upload)
    /// answers at once; one that waits for the body never does. A probe for
    /// tests and attackers' checks; on its own connection.
    pub async fn send_partial(
        &self,
        method: Method,
        path: &str,
        declared: u64,
        prefix: &[u8],
    ) -> Result<u16, ClientError> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        if self.tls.is_none() {
            return Err(ClientError::Transport(
                "send_partial speaks HTTPS only".into(),
            ));
        }
        // HTTPS, checked above: `open` gives a TLS stream.
        let Opened::Tls(mut stream) = self.open().await? else {
            return Err(ClientError::Transport(
                "send_partial speaks HTTPS only".into(),
            ));
        };
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/octet-stream\r\ncontent-length: {declared}\r\n",
            self.addr
        );
        if let Some(a) = &self.auth {
            head.push_str(&format!("authorization: {a}\r\n"));
        }
        head.push_str("\r\n");
        let io = |e: std::io::Error| ClientError::Transport(e.to_string());
        stream.write_all(head.as_bytes()).await.map_err(io)?;
        stream.write_all(prefix).await.map_err(io)?;
        stream.flush().await.map_err(io)?;
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.windows(2).any(|w| w == b"\r\n") {
            let n = stream.read(&mut buf).await.map_err(io)?;
            if n == 0 {
                return Err(ClientError::Transport("closed before answering".into()));
            }
            got.extend_from_slice(&buf[..n]);
        }
        let line = String::from_utf8_lossy(&got);
        line.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| ClientError::Transport(format!("not an HTTP answer: {line}")))
    }

    /// Sends one request (path from `/api/v2` on) with optional JSON body and headers.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<Answer, ClientError> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string());
        if let Some(a) = &self.auth {
            req = req.header("authorization", a);
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let conn = self.connect().await?;
        // HTTP/1.1: the previous exchange may still be finishing; wait for the turn.
        if conn.ready().await.is_err() {
            self.conn = None;
        }
        let conn = self.connect().await?;
        let resp = match conn.send_request(req).await {
            Ok(r) => r,
            Err(e) => {
                self.conn = None;
                return Err(ClientError::Transport(e.to_string()));
            }
        };
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?
            .to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// GET.
    pub async fn get(&mut self, path: &str) -> Result<Answer, ClientError> {
        self.send(Method::GET, path, None, &[]).await
    }

    /// POST with a JSON body.
    pub async fn post(&mut self, path: &str, body: &Value) -> Result<Answer, ClientError> {
        self.send(Method::POST, path, Some(body.to_string().into_bytes()), &[])
            .await
    }

    /// POST with a body of raw bytes (a backup to restore).
    pub async fn post_bytes(&mut self, path: &str, body: Vec<u8>) -> Result<Answer, ClientError> {
        self.send(Method::POST, path, Some(body), &[]).await
    }

    /// PUT with a JSON body.
    pub async fn put(&mut self, path: &str, body: &Value) -> Result<Answer, ClientError> {
        self.send(Method::PUT, path, Some(body.to_string().into_bytes()), &[])
            .await
    }

    /// DELETE.
    pub async fn delete(&mut self, path: &str) -> Result<Answer, ClientError> {
        self.send(Method::DELETE, path, None, &[]).await
    }
}
