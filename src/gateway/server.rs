//! The gateway's HTTP/1.1 server: warp's routes on hyper connections we accept
//! ourselves, so that hyper's own answers to requests it cannot parse are JSON too.

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use super::{routes, Backend, GatewaySettings};
use crate::tls;

/// A client must send a whole request head within this time (slow-loris bound).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections past the cap being answered 503 at once; beyond this many, further ones
/// are closed without an answer (so that a flood costs no more than a few tasks).
const MAX_REFUSING: usize = 64;
/// How long a refused connection may take to receive its 503.
const REFUSAL_TIME: Duration = Duration::from_secs(1);

/// Serves the gateway on `listener` until `shutdown` resolves, then finishes the
/// requests in flight. With `tls`, every connection is HTTPS (no client certificate
/// asked: see docs/security.md).
pub async fn serve(
    settings: GatewaySettings,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    backend: Backend,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let open = match crate::plant::active(crate::plant::Plant::NoConnectionCap) {
        true => Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)),
        false => Arc::new(Semaphore::new(settings.max_connections)),
    };
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let max_connections = settings.max_connections;
    let service = warp::service(routes(settings, backend));
    let connections = GracefulShutdown::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of file descriptors, or a connection reset while queued:
                    // pause briefly rather than spin.
                    debug!("accepting an HTTP connection failed: {err}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // At the cap, a quick answer rather than a wait in the kernel's queue.
        let Ok(permit) = open.clone().try_acquire_owned() else {
            // (Over TLS the plaintext answer would be garbage: just close.)
            let plaintext = tls.is_none();
            if let (true, Ok(refusal)) = (plaintext, refusing.clone().try_acquire_owned()) {
                tokio::spawn(async move {
                    refuse_connection(stream, max_connections).await;
                    drop(refusal);
                });
            }
            continue;
        };
        // Answers are small and written whole: send them at once.
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(service.clone());
        let watcher = connections.watcher();
        match &tls {
            None => {
                tokio::spawn(async move {
                    serve_connection(stream, service, watcher).await;
                    drop(permit);
                });
            }
            Some(acceptor) => {
                // The handshake runs in the connection's own task (bounded), never
                // in the accept loop.
                let handshake = acceptor.accept(stream);
                tokio::spawn(async move {
                    match tokio::time::timeout(tls::HANDSHAKE_TIMEOUT, handshake).await {
                        Ok(Ok(stream)) => serve_connection(stream, service, watcher).await,
                        Ok(Err(err)) => debug!("HTTPS handshake failed: {err}"),
                        Err(_elapsed) => debug!("HTTPS handshake timed out"),
                    }
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    connections.shutdown().await;
}

/// Answers a connection past the cap with a 503 JSON error and closes it. The request
/// (if the client sent one already) is read and dropped first, bounded, so that the
/// kernel does not reset the connection over unread data before the answer arrives.
async fn refuse_connection(mut stream: TcpStream, max_connections: usize) {
    let body = format!(
        "{}\n",
        json!({"ok": false, "error": format!(
            "too many open connections (at most {max_connections}); try again later"
        )})
    );
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_TIME, async {
        // Give a client that writes its request right after connecting the chance to
        // do so, so that our close does not turn into a reset.
        let mut request = [0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_millis(50), stream.read(&mut request)).await;
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        while stream.read(&mut request).await? > 0 {}
        Ok::<_, io::Error>(())
    })
    .await;
}

/// Serves the HTTP/1.1 requests of one connection (plain or TLS) until it closes or a
/// graceful shutdown finishes it.
async fn serve_connection<IO, S>(stream: IO, service: S, watcher: Watcher)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming> + Send + 'static,
    S::Future: Send + 'static,
    S::ResBody: Send + 'static,
    <S::ResBody as hyper::body::Body>::Data: Send,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(JsonParseErrors::new(stream)), service);
    if let Err(err) = watcher.watch(connection).await {
        debug!("HTTP connection: {err}");
    }
}

/// hyper answers a request it cannot parse (a URI over 64 KiB, a head over its
/// buffer, malformed syntax) by itself, before any route runs, with an empty body —
/// and offers no hook to change that answer. This wrapper around the connection
/// recognises such an answer on its way out (a 400, 414 or 431 head with
/// `content-length: 0`, which the routes never send: their errors are JSON) and
/// writes the JSON error in its place. hyper closes the connection right after.
struct JsonParseErrors<IO> {
    inner: IO,
    /// The replacement answer still to be written, from this offset.
    replacing: Option<(Vec<u8>, usize)>,
}

impl<IO> JsonParseErrors<IO> {
    fn new(inner: IO) -> Self {
        Self {
            inner,
            replacing: None,
        }
    }
}

/// The JSON answer for one of hyper's own bodyless error heads, or `None` for any
/// other write.
fn json_for_automatic_error(head: &[u8]) -> Option<Vec<u8>> {
    // Such a head is a short status line, a date and a length: never look further
    // into ordinary answers (a value can be a megabyte).
    const MAX_AUTOMATIC_HEAD: usize = 256;
    if head.len() > MAX_AUTOMATIC_HEAD || !head.starts_with(b"HTTP/1.1 4") {
        return None;
    }
    let text = std::str::from_utf8(head).ok()?;
    let (status_line, rest) = text.split_once("\r\n")?;
    let message = match status_line.split(' ').nth(1)? {
        "400" => "malformed HTTP request",
        "414" => "the request URI is longer than the server accepts (64 KiB)",
        "431" => "the request head (headers) is larger than the server accepts",
        _ => return None,
    };
    let headers = rest.strip_suffix("\r\n\r\n")?;
    let mut bodyless = false;
    let mut kept = Vec::new();
    for line in headers.split("\r\n") {
        match line.split_once(':') {
            Some((name, value)) if name.eq_ignore_ascii_case("content-length") => {
                bodyless = value.trim() == "0";
            }
            _ => kept.push(line),
        }
    }
    if !bodyless {
        return None;
    }
    let body = format!("{}\n", json!({"ok": false, "error": message}));
    let mut answer = format!("{status_line}\r\n");
    for line in kept {
        answer.push_str(line);
        answer.push_str("\r\n");
    }
    answer.push_str(&format!(
        "content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    ));
    Some(answer.into_bytes())
}

impl<IO: AsyncRead + Unpin> AsyncRead for JsonParseErrors<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for JsonParseErrors<IO> {
    /// hyper hands over each answer in one buffer (this type does not claim vectored
    /// writes, so hyper flattens head and body), so an automatic error head arrives
    /// alone and whole. While its replacement is being written, hyper retries with
    /// the same buffer and is told it was written once the replacement is.
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.replacing.is_none() {
            match json_for_automatic_error(buf) {
                Some(answer) => this.replacing = Some((answer, 0)),
                None => return Pin::new(&mut this.inner).poll_write(cx, buf),
            }
        }
        if let Some((answer, written)) = &mut this.replacing {
            while *written < answer.len() {
                let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &answer[*written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                *written += n;
            }
        }
        this.replacing = None;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::json_for_automatic_error;

    #[test]
    fn only_bodyless_automatic_errors_are_replaced() {
        let hyper_414 = b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let answer = json_for_automatic_error(hyper_414).expect("replaced");
        let answer = String::from_utf8(answer).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{head}");
        assert!(head.contains("date: x\r\n"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["ok"], false);

        // Our own answers (with a body) and other statuses pass through.
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 40\r\n\r\n{\"ok\":false}";
        assert!(json_for_automatic_error(ours).is_none());
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert!(json_for_automatic_error(ok).is_none());
        assert!(json_for_automatic_error(b"\xff\xfe").is_none());
    }
}
