//! Bench-only: the bare broadcast server `scripts/bench-gateway.sh` compares the gateway with.
//! The same WebSocket crate (axum's), but no JWT check, no rooms and no broker: every socket is
//! in one list and `POST /api/payments` fans a `payment:created` carrying the request's
//! `description` out to all of them. It speaks just enough of the gateway's protocol (ack,
//! `payment:created`) for `mfe ws probe --trigger payment` to drive both the same way.
//!
//! `cargo run --release -p mfe-gateway --example bare_broadcast -- PORT`

use std::sync::{Arc, Mutex};

use axum::{
    extract::{
        ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade},
        State,
    },
    response::Response,
    routing::{get, post},
    Json, Router,
};
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;

type Clients = Arc<Mutex<Vec<mpsc::Sender<Utf8Bytes>>>>;

#[tokio::main]
async fn main() {
    let port: u16 = std::env::args().nth(1).and_then(|p| p.parse().ok()).unwrap_or(24200);
    let clients: Clients = Arc::default();
    let app = Router::new().route("/ws", get(ws)).route("/api/payments", post(publish)).with_state(clients);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind the bare server");
    eprintln!("bare broadcast server on 127.0.0.1:{port}");
    axum::serve(listener, app).await.expect("serve");
}

async fn ws(State(clients): State<Clients>, upgrade: WebSocketUpgrade) -> Response {
    upgrade.read_buffer_size(1024).write_buffer_size(0).on_upgrade(move |socket| serve(socket, clients))
}

async fn serve(socket: WebSocket, clients: Clients) {
    let (tx, mut rx) = mpsc::channel::<Utf8Bytes>(256);
    clients.lock().unwrap().push(tx);
    let (mut sink, mut stream) = socket.split();
    let ack = r#"{"type":"connection:ack","payload":{"userId":"bare","rooms":["broadcast"]},"timestamp":"-"}"#;
    if sink.send(Message::Text(ack.into())).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            m = rx.recv() => match m {
                Some(text) => if sink.send(Message::Text(text)).await.is_err() { return },
                None => return,
            },
            incoming = stream.next() => match incoming {
                Some(Ok(Message::Text(t))) if t.as_str().contains("\"ping\"") => {
                    if sink.send(Message::Text(r#"{"type":"pong"}"#.into())).await.is_err() { return }
                }
                Some(Ok(_)) => {}
                _ => return,
            },
        }
    }
}

async fn publish(State(clients): State<Clients>, Json(body): Json<serde_json::Value>) -> Json<serde_json::Value> {
    let text: Utf8Bytes = serde_json::json!({"type": "payment:created", "payload": body}).to_string().into();
    let mut list = clients.lock().unwrap();
    list.retain(|tx| !tx.is_closed());
    for tx in list.iter() {
        let _ = tx.try_send(text.clone());
    }
    Json(serde_json::json!({"delivered": list.len()}))
}
