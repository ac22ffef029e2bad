//! One socket's life after the upgrade: the ack, the client's `{"type":"ping"}`, the server's
//! heartbeat, the queue of room messages and the close. Generic over the sink and stream halves
//! so tests drive it with channels and a paused clock instead of a network.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{Context, Poll, Wake, Waker},
    time::Duration,
};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures::{task::AtomicWaker, Sink, SinkExt, Stream, StreamExt};
use tokio::{sync::mpsc, time::Instant};

use super::rooms::Conn;
use crate::metrics::GatewayMetrics;

/// Close code sent when a pong does not arrive in time.
pub const CLOSE_HEARTBEAT_TIMEOUT: u16 = 4000;

const PONG: Utf8Bytes = Utf8Bytes::from_static(r#"{"type":"pong"}"#);

/// Heartbeat timing of one socket.
#[derive(Debug, Clone, Copy)]
pub struct Heartbeat {
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
}

/// Why a socket ended, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The client closed or the connection dropped.
    ClientGone,
    /// No pong within the timeout.
    HeartbeatTimeout,
    /// The gateway closed it with this code (slow client, revoked session).
    ClosedByServer(u16),
}

/// Runs one socket until it ends: sends `ack` first, then forwards queued messages, answers
/// client pings and keeps the heartbeat.
pub async fn serve<Tx, Rx, E>(
    mut sink: Tx,
    stream: Rx,
    conn: &Conn,
    mut queue: mpsc::Receiver<Utf8Bytes>,
    ack: Utf8Bytes,
    heartbeat: Heartbeat,
    metrics: &GatewayMetrics,
) -> Ended
where
    Tx: Sink<Message> + Unpin,
    Rx: Stream<Item = Result<Message, E>> + Unpin,
{
    // The close signal and the heartbeat timer live across iterations: one registration each
    // per socket, not one per message (a fan-out to 10 000 sockets would otherwise insert and
    // remove 10 000 timers and waiters).
    let closing = conn.closing();
    tokio::pin!(closing);
    let mut stream = PolledWhenWoken::new(stream);
    if send(&mut sink, closing.as_mut(), Message::Text(ack)).await.is_err() {
        return finish(&mut sink, conn, &mut queue).await;
    }
    let mut next_ping = Instant::now() + heartbeat.ping_interval;
    // Set while a server ping waits for its pong.
    let mut pong_deadline: Option<Instant> = None;
    let timer = tokio::time::sleep_until(next_ping);
    tokio::pin!(timer);
    loop {
        let deadline = pong_deadline.unwrap_or(next_ping);
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        tokio::select! {
            biased;
            _ = closing.as_mut() => return finish(&mut sink, conn, &mut queue).await,
            incoming = stream.next() => match incoming {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Ended::ClientGone,
                Some(Ok(Message::Pong(_))) => pong_deadline = None,
                Some(Ok(Message::Text(text))) => {
                    if is_client_ping(text.as_str()) && send(&mut sink, closing.as_mut(), Message::Text(PONG)).await.is_err() {
                        return finish(&mut sink, conn, &mut queue).await;
                    }
                }
                // Pings are answered by the WebSocket layer itself; binary frames mean nothing here.
                Some(Ok(_)) => {}
            },
            queued = queue.recv() => match queued {
                Some(text) => {
                    if send(&mut sink, closing.as_mut(), Message::Text(text)).await.is_err() {
                        return finish(&mut sink, conn, &mut queue).await;
                    }
                }
                None => return Ended::ClientGone,
            },
            _ = timer.as_mut() => {
                if pong_deadline.is_some() {
                    metrics.ws_heartbeat_timeout();
                    close_with(&mut sink, CLOSE_HEARTBEAT_TIMEOUT, "heartbeat timeout").await;
                    return Ended::HeartbeatTimeout;
                }
                if send(&mut sink, closing.as_mut(), Message::Ping(Default::default())).await.is_err() {
                    return finish(&mut sink, conn, &mut queue).await;
                }
                pong_deadline = Some(Instant::now() + heartbeat.pong_timeout);
                next_ping = Instant::now() + heartbeat.ping_interval;
            }
        }
    }
}

/// A stream polled only after it woke its task (and once at the start). The socket's loop
/// wakes for every queued message; polling the WebSocket's read side each time costs a lock, a
/// waker registration and a zeroed read buffer before the read finds nothing, about as much CPU
/// as forwarding the message itself.
struct PolledWhenWoken<S> {
    inner: S,
    flag: Arc<WakeFlag>,
    /// Wakes `flag`; the waker the inner stream registers.
    waker: Waker,
}

struct WakeFlag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<S> PolledWhenWoken<S> {
    fn new(inner: S) -> Self {
        let flag = Arc::new(WakeFlag { woken: AtomicBool::new(true), task: AtomicWaker::new() });
        Self { inner, waker: Waker::from(flag.clone()), flag }
    }
}

impl<S: Stream + Unpin> Stream for PolledWhenWoken<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = &mut *self;
        // Registered before the flag is read: a wake-up in between is seen by the swap.
        this.flag.task.register(cx.waker());
        if !this.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let polled = Pin::new(&mut this.inner).poll_next(&mut Context::from_waker(&this.waker));
        if polled.is_ready() {
            // More frames may be buffered already; the next poll must look.
            this.flag.woken.store(true, Ordering::Release);
        }
        polled
    }
}

/// Sends one message unless the socket is asked to close meanwhile (a client that stopped
/// reading would otherwise hold this task in a blocked write forever).
/// `closing` is the socket's [`Conn::closing`], still pending.
async fn send<Tx: Sink<Message> + Unpin>(
    sink: &mut Tx,
    closing: Pin<&mut impl Future<Output = ()>>,
    message: Message,
) -> Result<(), ()> {
    tokio::select! {
        biased;
        result = sink.send(message) => result.map_err(|_| ()),
        _ = closing => Err(()),
    }
}

/// Ends a socket: when the gateway asked for the close, flushes what is already queued (the
/// `session:revoked` message precedes its close) and sends the close frame, each bounded in time.
async fn finish<Tx: Sink<Message> + Unpin>(sink: &mut Tx, conn: &Conn, queue: &mut mpsc::Receiver<Utf8Bytes>) -> Ended {
    let Some(code) = conn.close_requested() else { return Ended::ClientGone };
    let flush = async {
        if code != super::rooms::CLOSE_SLOW_CLIENT {
            while let Ok(text) = queue.try_recv() {
                if sink.send(Message::Text(text)).await.is_err() {
                    return;
                }
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), flush).await;
    let reason = match code {
        super::rooms::CLOSE_SLOW_CLIENT => "send queue full",
        super::rooms::CLOSE_REVOKED => "session revoked",
        _ => "closed by server",
    };
    close_with(sink, code, reason).await;
    Ended::ClosedByServer(code)
}

async fn close_with<Tx: Sink<Message> + Unpin>(sink: &mut Tx, code: u16, reason: &'static str) {
    let frame = CloseFrame { code, reason: Utf8Bytes::from_static(reason) };
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(Message::Close(Some(frame)))).await;
}

/// Whether a client text frame is the application-level `{"type":"ping"}`.
fn is_client_ping(text: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Typed<'a> {
        #[serde(borrow, rename = "type")]
        kind: &'a str,
    }
    serde_json::from_str::<Typed<'_>>(text).is_ok_and(|t| t.kind == "ping")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::rooms::{Rooms, CLOSE_REVOKED};
    use futures::channel::mpsc as chan;
    use std::convert::Infallible;

    struct Harness {
        to_server: chan::UnboundedSender<Result<Message, Infallible>>,
        from_server: chan::UnboundedReceiver<Message>,
        rooms: Rooms,
        task: tokio::task::JoinHandle<Ended>,
    }

    fn start(heartbeat: Heartbeat) -> Harness {
        let rooms = Rooms::new(4, GatewayMetrics::new());
        let (to_server, server_rx) = chan::unbounded();
        let (server_tx, from_server) = chan::unbounded();
        let room_names = vec!["user:u1".to_string(), "broadcast".to_string()];
        let (conn, queue) = rooms.join("u1", Some("d1"), &room_names);
        let task = tokio::spawn(async move {
            serve(server_tx, server_rx, &conn, queue, Utf8Bytes::from_static("ack"), heartbeat, &GatewayMetrics::new())
                .await
        });
        Harness { to_server, from_server, rooms, task }
    }

    fn text(m: Message) -> String {
        match m {
            Message::Text(t) => t.to_string(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    const SLOW: Heartbeat = Heartbeat { ping_interval: Duration::from_secs(30), pong_timeout: Duration::from_secs(10) };

    #[tokio::test]
    async fn the_ack_comes_first_and_a_client_ping_gets_a_pong() {
        let mut h = start(SLOW);
        assert_eq!(text(h.from_server.next().await.unwrap()), "ack");
        h.to_server.unbounded_send(Ok(Message::Text(r#"{"type":"ping"}"#.into()))).unwrap();
        assert_eq!(text(h.from_server.next().await.unwrap()), r#"{"type":"pong"}"#);
        h.to_server.unbounded_send(Ok(Message::Text("not json".into()))).unwrap();
        h.rooms.send(&["broadcast".into()], &Utf8Bytes::from_static("event"));
        assert_eq!(text(h.from_server.next().await.unwrap()), "event");
    }

    // Real time with short intervals: the heartbeat arithmetic is the same at any scale.
    const FAST: Heartbeat =
        Heartbeat { ping_interval: Duration::from_millis(60), pong_timeout: Duration::from_millis(40) };

    #[tokio::test]
    async fn a_client_that_never_pongs_is_closed_after_interval_plus_timeout() {
        let mut h = start(FAST);
        let started = Instant::now();
        h.from_server.next().await.unwrap();
        assert!(matches!(h.from_server.next().await.unwrap(), Message::Ping(_)));
        assert!(started.elapsed() >= Duration::from_millis(60), "{:?}", started.elapsed());
        match h.from_server.next().await.unwrap() {
            Message::Close(Some(frame)) => assert_eq!(frame.code, CLOSE_HEARTBEAT_TIMEOUT),
            other => panic!("expected a close frame, got {other:?}"),
        }
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(100) && took < Duration::from_secs(2), "{took:?}");
        assert_eq!(h.task.await.unwrap(), Ended::HeartbeatTimeout);
    }

    #[tokio::test]
    async fn a_client_that_pongs_stays_open_across_many_pings() {
        let mut h = start(FAST);
        h.from_server.next().await.unwrap();
        for _ in 0..5 {
            assert!(matches!(h.from_server.next().await.unwrap(), Message::Ping(_)));
            h.to_server.unbounded_send(Ok(Message::Pong(Default::default()))).unwrap();
        }
        assert!(!h.task.is_finished());
    }

    #[tokio::test]
    async fn a_revoked_device_gets_the_queued_message_then_a_close() {
        let mut h = start(SLOW);
        h.from_server.next().await.unwrap();
        h.rooms.send(&["user:u1".into()], &Utf8Bytes::from_static("revoked"));
        h.rooms.close_device("u1", "d1", CLOSE_REVOKED);
        let mut frames = vec![h.from_server.next().await.unwrap(), h.from_server.next().await.unwrap()];
        if let Message::Close(Some(f)) = frames.pop().unwrap() {
            assert_eq!(f.code, CLOSE_REVOKED);
        } else {
            panic!("expected a close frame last");
        }
        assert_eq!(text(frames.pop().unwrap()), "revoked");
        assert_eq!(h.task.await.unwrap(), Ended::ClosedByServer(CLOSE_REVOKED));
    }

    #[tokio::test]
    async fn a_client_close_ends_the_socket() {
        let mut h = start(SLOW);
        h.from_server.next().await.unwrap();
        h.to_server.unbounded_send(Ok(Message::Close(None))).unwrap();
        assert_eq!(h.task.await.unwrap(), Ended::ClientGone);
    }
}
