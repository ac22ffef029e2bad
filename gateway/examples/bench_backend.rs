//! Bench-only backend for `scripts/bench-gateway.sh`: answers every path with a small body
//! (`GET`), swallows streamed uploads and streams downloads of `?bytes=N`, so the proxy in front
//! of it is what the benchmark measures.
//!
//! `cargo run --release -p mfe-gateway --example bench_backend -- PORT`

use axum::{body::Body, extract::Request, response::Response};
use futures::StreamExt;

#[tokio::main]
async fn main() {
    let port: u16 = std::env::args().nth(1).and_then(|p| p.parse().ok()).unwrap_or(24100);
    let app = axum::Router::new().fallback(handle);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind the bench backend");
    eprintln!("bench backend on 127.0.0.1:{port}");
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await.expect("serve");
}

async fn handle(req: Request) -> Response {
    let wanted: Option<u64> = req.uri().query().and_then(|q| q.strip_prefix("bytes=")).and_then(|n| n.parse().ok());
    if let Some(total) = wanted {
        static CHUNK: [u8; 65536] = [b'x'; 65536];
        let n = total / 65536;
        return Response::new(Body::from_stream(futures::stream::iter(
            (0..n).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from_static(&CHUNK))),
        )));
    }
    let mut body = req.into_body().into_data_stream();
    let mut n = 0usize;
    while let Some(Ok(chunk)) = body.next().await {
        n += chunk.len();
    }
    Response::new(Body::from(if n == 0 { "{\"ok\":true}".to_string() } else { format!("{{\"bytes\":{n}}}") }))
}
