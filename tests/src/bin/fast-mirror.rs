//! `fast-mirror ADDR [--h2]`: the mirror service of `cargo xtask bench mirror`, answering every
//! request `200 ok` on one thread, as nginx's `return 200` does, but cheap under pipelining.
//! With `--h2` it speaks HTTP/2 with prior knowledge (h2c) instead, for `cargo xtask bench h2`.
//!
//! The agent pipelines a client connection's queued copies on one mirror connection. nginx
//! answers pipelined requests with one `writev` (one TCP segment) per response, so as a mirror
//! it costs as much CPU per request as the primary; on a 2-vCPU machine that puts the mirror,
//! not the agent, at the limit of the bench. hyper's `pipeline_flush` writes the answers to
//! one read's worth of pipelined requests together, so this mirror stands for one with CPU to
//! spare (in production a mirror runs on its own hosts). Request bodies are read and
//! discarded; the process runs until killed.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

async fn answer(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // Drain the body so the connection stays usable; its bytes are not needed.
    let _ = req.into_body().collect().await;
    // The primary nginx's `return 200 "ok\n"` answer (its default type): `--compare` runs find
    // the same headers on both sides.
    let mut resp = Response::new(Full::new(Bytes::from_static(b"ok\n")));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    Ok(resp)
}

fn main() -> anyhow::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: fast-mirror ADDR:PORT [--h2]"))?
        .parse()?;
    let h2 = match std::env::args().nth(2).as_deref() {
        None => false,
        Some("--h2") => true,
        Some(other) => anyhow::bail!("fast-mirror: unknown option {other:?} (--h2)"),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(addr).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            tokio::spawn(async move {
                let io = TokioIo::new(stream);
                if h2 {
                    let _ = http2::Builder::new(TokioExecutor::new())
                        .max_concurrent_streams(1024)
                        .serve_connection(io, service_fn(answer))
                        .await;
                } else {
                    let _ = http1::Builder::new()
                        .keep_alive(true)
                        .pipeline_flush(true)
                        .serve_connection(io, service_fn(answer))
                        .await;
                }
            });
        }
    })
}
