//! Ports and TCP forwarding for tests that play a server going away.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// A TCP port on 127.0.0.1 that nothing listens on (bound, then released).
///
/// # Panics
/// When no ephemeral port can be bound.
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// Forwards every connection on a port of 127.0.0.1 to `target` until [`Forwarder::cut`], which
/// closes the listener and every forwarded connection at once — an outage of `target` as its
/// clients see it, without touching the server other tests share. [`Forwarder::restore`]
/// listens again on the same port.
pub struct Forwarder {
    /// The port the forwarder listens on (or will, after [`Forwarder::restore`]).
    pub port: u16,
    target: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl Forwarder {
    /// A forwarder to `target` on a free port, listening.
    pub async fn start(target: SocketAddr) -> Self {
        Self::start_on(0, target).await
    }

    /// A forwarder to `target` on `port` (0: a free one), listening.
    pub async fn start_on(port: u16, target: SocketAddr) -> Self {
        let mut forwarder = Self { port, target, task: None };
        forwarder.restore().await;
        forwarder
    }

    /// A forwarder to `target` that does not listen yet: its port refuses connections until
    /// [`Forwarder::restore`] (a server that "returns").
    pub fn cut_from_start(target: SocketAddr) -> Self {
        Self { port: closed_port(), target, task: None }
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Accepts and forwards connections (again) on the same port.
    ///
    /// # Panics
    /// When the port cannot be bound (again).
    pub async fn restore(&mut self) {
        if self.task.is_some() {
            return;
        }
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.expect("bind the forwarder's port");
        self.port = listener.local_addr().expect("bound").port();
        let target = self.target;
        self.task = Some(tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                conns.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }

    /// Closes the listener and every forwarded connection (dropping the task drops them all).
    pub async fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(addr: &str) -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await?;
        Ok(buf.to_vec())
    }

    #[test]
    fn a_closed_port_refuses_connections() {
        let port = closed_port();
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    }

    #[tokio::test]
    async fn a_forwarder_forwards_is_cut_and_comes_back_on_the_same_port() {
        let mut f = Forwarder::start(echo_server().await).await;
        let port = f.port;
        let mut open = TcpStream::connect(f.addr()).await.unwrap();
        assert_eq!(round_trip(&f.addr()).await.unwrap(), b"ping");

        f.cut().await;
        assert!(round_trip(&f.addr()).await.is_err(), "refused while cut");
        let mut buf = [0u8; 1];
        assert_eq!(open.read(&mut buf).await.unwrap_or(0), 0, "a connection forwarded before the cut is closed");

        f.restore().await;
        assert_eq!(f.port, port);
        assert_eq!(round_trip(&f.addr()).await.unwrap(), b"ping");
    }

    #[tokio::test]
    async fn a_forwarder_cut_from_the_start_listens_once_restored() {
        let mut f = Forwarder::cut_from_start(echo_server().await);
        assert!(round_trip(&f.addr()).await.is_err());
        f.restore().await;
        assert_eq!(round_trip(&f.addr()).await.unwrap(), b"ping");
    }
}
