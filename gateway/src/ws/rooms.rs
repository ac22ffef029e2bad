//! [`Rooms`]: which sockets are in which room, and the fan-out into their bounded queues.
//!
//! A message is serialised once and shared (`Utf8Bytes` is reference counted), so fanning one
//! event out to 10 000 sockets costs 10 000 queue pushes, not 10 000 encodings. A push never
//! waits: a full queue means the client is not reading, and that socket is told to close
//! (1013) rather than slowing everyone else down.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicU16, AtomicU64, Ordering},
        Arc, RwLock,
    },
};

use axum::extract::ws::Utf8Bytes;
use futures::task::AtomicWaker;
use tokio::sync::mpsc;

use crate::metrics::GatewayMetrics;

/// Close code for a client too slow to keep up ("try again later").
pub const CLOSE_SLOW_CLIENT: u16 = 1013;
/// Close code for a socket whose device session was revoked (policy violation).
pub const CLOSE_REVOKED: u16 = 1008;

/// The part of a socket the rest of the gateway can reach: its queue and its close signal.
#[derive(Debug)]
pub struct Conn {
    pub id: u64,
    /// The user and device of the token the socket was opened with.
    pub user_id: Box<str>,
    pub device_id: Option<Box<str>>,
    tx: mpsc::Sender<Utf8Bytes>,
    /// Non-zero once someone asked the socket to close; the value is the close code.
    close_code: AtomicU16,
    /// The socket's task, woken by [`Conn::close`]. One waiter only (the socket's own task):
    /// cheaper to poll than a `Notify`, whose waiter list sits behind a mutex, and the socket
    /// polls it once per message it forwards.
    closed: AtomicWaker,
}

impl Conn {
    /// Asks the socket to close with `code`; the first request wins.
    pub fn close(&self, code: u16) {
        if self.close_code.compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.closed.wake();
        }
    }

    /// The close code requested, if any.
    pub fn close_requested(&self) -> Option<u16> {
        match self.close_code.load(Ordering::Acquire) {
            0 => None,
            code => Some(code),
        }
    }

    /// Resolves once [`Conn::close`] was called (at once if it already was). Only the socket's
    /// own task may wait on it.
    pub fn closing(&self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.close_requested().is_some() {
                return std::task::Poll::Ready(());
            }
            self.closed.register(cx.waker());
            match self.close_requested() {
                Some(_) => std::task::Poll::Ready(()),
                None => std::task::Poll::Pending,
            }
        })
    }
}

/// Every open socket by room. Cheap to clone.
#[derive(Clone)]
pub struct Rooms {
    inner: Arc<Inner>,
}

/// Sockets of one room by connection id.
type Members = HashMap<u64, Arc<Conn>>;

struct Inner {
    rooms: RwLock<HashMap<Box<str>, Members>>,
    next_id: AtomicU64,
    queue_len: usize,
    metrics: GatewayMetrics,
}

impl Rooms {
    pub fn new(queue_len: usize, metrics: GatewayMetrics) -> Self {
        Self {
            inner: Arc::new(Inner {
                rooms: RwLock::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                queue_len: queue_len.max(1),
                metrics,
            }),
        }
    }

    /// Registers a socket in `rooms`; returns its handle and the receiving end of its queue.
    pub fn join(
        &self,
        user_id: &str,
        device_id: Option<&str>,
        rooms: &[String],
    ) -> (Arc<Conn>, mpsc::Receiver<Utf8Bytes>) {
        let (tx, rx) = mpsc::channel(self.inner.queue_len);
        let conn = Arc::new(Conn {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            user_id: user_id.into(),
            device_id: device_id.map(Into::into),
            tx,
            close_code: AtomicU16::new(0),
            closed: AtomicWaker::new(),
        });
        let mut map = self.inner.rooms.write().expect("rooms lock poisoned");
        for room in rooms {
            map.entry(room.as_str().into()).or_default().insert(conn.id, conn.clone());
        }
        (conn, rx)
    }

    /// Removes a socket from `rooms` (empty rooms are dropped so memory follows the sockets).
    pub fn leave(&self, conn: &Conn, rooms: &[String]) {
        let mut map = self.inner.rooms.write().expect("rooms lock poisoned");
        for room in rooms {
            if let Some(members) = map.get_mut(room.as_str()) {
                members.remove(&conn.id);
                if members.is_empty() {
                    map.remove(room.as_str());
                }
            }
        }
    }

    /// Queues `message` to every socket in any of `rooms`, once per socket; returns how many
    /// sockets got it. Sockets whose queue is full are told to close as slow clients.
    pub fn send(&self, rooms: &[String], message: &Utf8Bytes) -> usize {
        let map = self.inner.rooms.read().expect("rooms lock poisoned");
        let targets: Vec<&Members> =
            rooms.iter().filter_map(|room| map.get(room.as_str())).filter(|m| !m.is_empty()).collect();
        // A socket can be in several target rooms only when several of them have members; the
        // common case (a user's room while no admin is connected, or the broadcast room alone)
        // skips the duplicate check entirely.
        let mut seen: Option<HashSet<u64>> = (targets.len() > 1).then(HashSet::new);
        let mut delivered = 0;
        for members in targets {
            for conn in members.values() {
                if let Some(seen) = seen.as_mut() {
                    if !seen.insert(conn.id) {
                        continue;
                    }
                }
                match conn.tx.try_send(message.clone()) {
                    Ok(()) => delivered += 1,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        if conn.close_requested().is_none() {
                            self.inner.metrics.ws_slow_dropped();
                            tracing::warn!(conn = conn.id, "websocket client too slow, closing it");
                        }
                        conn.close(CLOSE_SLOW_CLIENT);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
        }
        self.inner.metrics.ws_messages_sent(delivered as u64);
        delivered
    }

    /// Closes the sockets of `user_id` opened on `device_id`; returns how many.
    pub fn close_device(&self, user_id: &str, device_id: &str, code: u16) -> usize {
        let map = self.inner.rooms.read().expect("rooms lock poisoned");
        let Some(members) = map.get(crate::routing::user_room(user_id).as_str()) else { return 0 };
        let mut n = 0;
        for conn in members.values().filter(|c| c.device_id.as_deref() == Some(device_id)) {
            conn.close(code);
            n += 1;
        }
        n
    }

    /// Sockets in `room` now.
    pub fn members(&self, room: &str) -> usize {
        self.inner.rooms.read().expect("rooms lock poisoned").get(room).map_or(0, HashMap::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rooms_of(user: &str, role: &str) -> Vec<String> {
        vec![crate::routing::user_room(user), crate::routing::role_room(role), "broadcast".into()]
    }

    #[tokio::test]
    async fn a_socket_in_two_target_rooms_gets_the_message_once() {
        let rooms = Rooms::new(8, GatewayMetrics::new());
        let (_admin, mut rx) = rooms.join("a1", None, &rooms_of("a1", "ADMIN"));
        let n = rooms.send(&["user:a1".into(), "role:admin".into()], &Utf8Bytes::from_static("m"));
        assert_eq!(n, 1);
        assert_eq!(rx.recv().await.unwrap().as_str(), "m");
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_full_queue_closes_that_socket_only_and_counts_it() {
        let metrics = GatewayMetrics::new();
        let rooms = Rooms::new(2, metrics.clone());
        let (slow, _slow_rx) = rooms.join("u1", None, &rooms_of("u1", "CUSTOMER"));
        let (fast, mut fast_rx) = rooms.join("u2", None, &rooms_of("u2", "CUSTOMER"));
        for _ in 0..3 {
            rooms.send(&["broadcast".into()], &Utf8Bytes::from_static("m"));
            fast_rx.recv().await.unwrap();
        }
        assert_eq!(slow.close_requested(), Some(CLOSE_SLOW_CLIENT));
        assert_eq!(fast.close_requested(), None);
        assert_eq!(metrics.ws_slow_dropped_count(), 1);
    }

    #[tokio::test]
    async fn closing_a_device_closes_only_that_devices_sockets() {
        let rooms = Rooms::new(4, GatewayMetrics::new());
        let (phone, _a) = rooms.join("u1", Some("phone"), &rooms_of("u1", "CUSTOMER"));
        let (laptop, _b) = rooms.join("u1", Some("laptop"), &rooms_of("u1", "CUSTOMER"));
        assert_eq!(rooms.close_device("u1", "phone", CLOSE_REVOKED), 1);
        assert_eq!(phone.close_requested(), Some(CLOSE_REVOKED));
        assert_eq!(laptop.close_requested(), None);
    }

    #[test]
    fn leaving_removes_empty_rooms() {
        let rooms = Rooms::new(4, GatewayMetrics::new());
        let r = rooms_of("u1", "VENDOR");
        let (conn, _rx) = rooms.join("u1", None, &r);
        assert_eq!(rooms.members("role:vendor"), 1);
        rooms.leave(&conn, &r);
        assert_eq!(rooms.members("role:vendor"), 0);
        assert!(rooms.inner.rooms.read().unwrap().is_empty());
    }
}
