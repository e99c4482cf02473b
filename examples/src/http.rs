//! A minimal HTTP/1.1 server and client on hyper, for examples that need a web to talk to
//! without leaving the machine. Both run on the current thread's tokio `LocalSet`, so handlers
//! and clients may hold `!Send` state (a worker's client does).

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::HeaderMap;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::cell::RefCell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use tokio::net::{TcpListener, TcpStream};

/// An error from the helpers.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Serves every connection accepted on `listener` (until the task is dropped), answering each
/// request with `handle`. Must run inside a `tokio::task::LocalSet`.
pub async fn serve<F, Fut>(listener: TcpListener, handle: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let handle = handle.clone();
        tokio::task::spawn_local(async move {
            let service = hyper::service::service_fn(move |req| {
                let answer = handle(req);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            let connection = hyper::server::conn::http1::Builder::new();
            let _ = connection
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A response with `body` and the given extra headers.
pub fn response(body: impl Into<Bytes>, headers: &[(&str, &str)]) -> Response<Full<Bytes>> {
    let mut builder = Response::builder();
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder
        .body(Full::new(body.into()))
        .expect("a valid response")
}

/// An HTTP/1.1 client that keeps one idle connection per host for reuse. Not `Send`: make one
/// per event loop (each worker makes its own).
#[derive(Default)]
pub struct Client {
    idle: RefCell<HashMap<String, SendRequest<Empty<Bytes>>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("idle", &self.idle.borrow().len())
            .finish()
    }
}

impl Client {
    /// A client with no connections yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// GETs `url` (`http://host:port/path`) and returns the status, headers and body.
    pub async fn get(&self, url: &str) -> Result<(u16, HeaderMap, Bytes), Error> {
        let uri: hyper::Uri = url.parse()?;
        let authority = uri.authority().ok_or("the URL has no host")?.to_string();
        let idle = self.idle.borrow_mut().remove(&authority);
        let mut sender = match idle {
            Some(sender) if !sender.is_closed() => sender,
            _ => connect(&authority).await?,
        };
        sender.ready().await?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let request = Request::get(path)
            .header(hyper::header::HOST, &authority)
            .body(Empty::new())?;
        let (parts, body) = sender.send_request(request).await?.into_parts();
        let body = body.collect().await?.to_bytes();
        self.idle.borrow_mut().insert(authority, sender);
        Ok((parts.status.as_u16(), parts.headers, body))
    }
}

async fn connect(authority: &str) -> Result<SendRequest<Empty<Bytes>>, Error> {
    let stream = TcpStream::connect(authority).await?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::task::spawn_local(async move {
        let _ = connection.await;
    });
    Ok(sender)
}
