//! The one backend every case measures: a small hyper HTTP/1.1 server.
//!
//! - `GET /bulk?bytes=N`: N bytes (pattern), streamed in [`BULK_CHUNK`] pieces.
//! - `GET /hold?ms=N`: headers at once, then one body byte after N ms (at
//!   most [`MAX_HOLD`]): keeps a stream open through a tunnel.
//! - anything else: a 612-byte page (the size of nginx's default page).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Length of the small page.
pub const SMALL_BODY_LEN: usize = 612;
/// Piece size for `/bulk`.
pub const BULK_CHUNK: usize = 256 * 1024;
/// Longest `/hold`.
pub const MAX_HOLD: Duration = Duration::from_secs(120);

/// A response body: the small page, a bulk stream or a held stream.
pub enum BenchBody {
    Full(Option<Bytes>),
    Bulk { remaining: u64, chunk: Bytes },
    Hold(Pin<Box<tokio::time::Sleep>>, bool),
}

impl Body for BenchBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match &mut *self {
            BenchBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            BenchBody::Bulk { remaining, chunk } => {
                if *remaining == 0 {
                    return Poll::Ready(None);
                }
                let n = (*remaining).min(chunk.len() as u64) as usize;
                *remaining -= n as u64;
                Poll::Ready(Some(Ok(Frame::data(chunk.slice(..n)))))
            }
            BenchBody::Hold(sleep, done) => {
                if *done {
                    return Poll::Ready(None);
                }
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        *done = true;
                        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b".")))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            BenchBody::Full(b) => b.is_none(),
            BenchBody::Bulk { remaining, .. } => *remaining == 0,
            BenchBody::Hold(_, done) => *done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            BenchBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            BenchBody::Bulk { remaining, .. } => SizeHint::with_exact(*remaining),
            BenchBody::Hold(_, done) => SizeHint::with_exact(if *done { 0 } else { 1 }),
        }
    }
}

/// The 612-byte page.
pub fn small_page() -> Bytes {
    let head = b"<!DOCTYPE html>\n<html><head><title>Routehub bench</title></head><body>\n";
    let tail = b"\n</body></html>\n";
    let mut v = Vec::with_capacity(SMALL_BODY_LEN);
    v.extend_from_slice(head);
    while v.len() < SMALL_BODY_LEN - tail.len() {
        v.push(b'a' + (v.len() % 26) as u8);
    }
    v.extend_from_slice(tail);
    Bytes::from(v)
}

fn query_u64(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        if k == key { v.parse().ok() } else { None }
    })
}

fn respond(req: &Request<Incoming>, page: &Bytes, chunk: &Bytes) -> Response<BenchBody> {
    let body = match req.uri().path() {
        "/bulk" => BenchBody::Bulk {
            remaining: query_u64(req, "bytes").unwrap_or(0),
            chunk: chunk.clone(),
        },
        "/hold" => {
            let ms = Duration::from_millis(query_u64(req, "ms").unwrap_or(1000)).min(MAX_HOLD);
            BenchBody::Hold(Box::pin(tokio::time::sleep(ms)), false)
        }
        _ => BenchBody::Full(Some(page.clone())),
    };
    let mut resp = Response::new(body);
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/html"));
    resp
}

/// Serves until the process ends.
pub async fn serve(listener: TcpListener) {
    let page = small_page();
    let chunk = Bytes::from((0..BULK_CHUNK).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (page, chunk) = (page.clone(), chunk.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let resp = respond(&req, &page, &chunk);
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

/// `benches backend`: binds, prints `listening ADDR`, serves until its
/// stdin closes (the parent holds the other end, so it never outlives it).
pub fn run_process(listen: SocketAddr) -> anyhow::Result<()> {
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        std::process::exit(0);
    });
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(listen).await?;
        println!("listening {}", listener.local_addr()?);
        use std::io::Write;
        std::io::stdout().flush()?;
        serve(listener).await;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn small_page_is_612_bytes() {
        assert_eq!(super::small_page().len(), super::SMALL_BODY_LEN);
    }
}
