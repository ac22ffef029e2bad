//! Hand-written HTTP/1.1 requests for the attacks a well-behaved client library refuses to
//! send: two `Content-Length`s, `Content-Length` beside `Transfer-Encoding`, `..` left in the
//! path, a header sent one byte at a time. Over plain TCP or over TLS with the command's trust
//! ([`crate::tls::ClientTls`]).
//!
//! Only the status line and the headers of the first answer are read (and at most
//! [`MAX_ANSWER`] bytes of it): what the attacks judge is the status, whether the server closed
//! the connection, and whether a body leaked a file.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The most of an answer that is read.
const MAX_ANSWER: usize = 64 * 1024;

/// Where raw requests go: `host:port`, and the TLS name when the front speaks HTTPS.
#[derive(Clone)]
pub struct RawTarget {
    pub addr: String,
    pub host: String,
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// What came back.
#[derive(Debug, Clone, Default)]
pub struct RawAnswer {
    /// The status of the first answer, `None` when the server closed without one.
    pub status: Option<u16>,
    /// Everything read (headers and the start of the body), lossily decoded.
    pub text: String,
    /// Whether the server closed the connection within the read deadline.
    pub closed: bool,
}

impl RawAnswer {
    /// The value of the first header `name` (case-insensitive) of the answer.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.text.lines().skip(1).take_while(|l| !l.is_empty()).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

impl RawTarget {
    /// A target from a base URL (`http://h:p` or `https://h:p`).
    pub fn from_url(base: &str, tls: Arc<rustls::ClientConfig>) -> anyhow::Result<Self> {
        let url = url::Url::parse(base).with_context(|| format!("{base} is not a URL"))?;
        let host = url.host_str().with_context(|| format!("{base} has no host"))?.to_string();
        let port = url.port_or_known_default().with_context(|| format!("{base} has no port"))?;
        Ok(Self { addr: format!("{host}:{port}"), host, tls: (url.scheme() == "https").then_some(tls) })
    }

    async fn connect(&self) -> anyhow::Result<Box<dyn Stream>> {
        let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(&self.addr))
            .await
            .with_context(|| format!("connecting to {} timed out", self.addr))?
            .with_context(|| format!("cannot connect to {}", self.addr))?;
        tcp.set_nodelay(true)?;
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from(self.host.clone())
                    .with_context(|| format!("{} is not a TLS server name", self.host))?;
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .with_context(|| format!("TLS handshake with {}", self.addr))?;
                Ok(Box::new(tls))
            }
        }
    }

    /// Sends `request` as it is and reads the answer for at most `wait`.
    pub async fn send(&self, request: &[u8], wait: Duration) -> anyhow::Result<RawAnswer> {
        let mut stream = self.connect().await?;
        stream.write_all(request).await.with_context(|| format!("writing to {}", self.addr))?;
        stream.flush().await?;
        Ok(read_answer(&mut stream, wait).await)
    }

    /// Opens a connection and sends `head` one byte every `every`, for at most `for_at_most`,
    /// never finishing the header block: how long until the server closes it (`None`: it was
    /// still open when the time ran out).
    pub async fn trickle(
        &self,
        head: &[u8],
        every: Duration,
        for_at_most: Duration,
    ) -> anyhow::Result<Option<Duration>> {
        let mut stream = self.connect().await?;
        let started = Instant::now();
        let mut bytes = head.iter().cycle();
        while started.elapsed() < for_at_most {
            let byte = [*bytes.next().expect("a cycled non-empty header")];
            if stream.write_all(&byte).await.is_err() || stream.flush().await.is_err() {
                return Ok(Some(started.elapsed()));
            }
            let mut buf = [0u8; 1024];
            match tokio::time::timeout(every, stream.read(&mut buf)).await {
                // The server answered (a 408, say) or closed: either way it gave up on us.
                Ok(Ok(_)) | Ok(Err(_)) => return Ok(Some(started.elapsed())),
                Err(_) => {}
            }
        }
        Ok(None)
    }
}

async fn read_answer(stream: &mut Box<dyn Stream>, wait: Duration) -> RawAnswer {
    let deadline = Instant::now() + wait;
    let mut bytes = Vec::new();
    let mut closed = false;
    let mut buf = [0u8; 8192];
    while bytes.len() < MAX_ANSWER {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&bytes).into_owned();
    RawAnswer { status: parse_status(&text), text, closed }
}

/// The status code of an HTTP/1.x status line.
fn parse_status(text: &str) -> Option<u16> {
    let line = text.lines().next()?;
    let mut parts = line.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/1."))?;
    parts.next()?.parse().ok()
}

/// The number of answers (status lines) in `text`: a desynchronised front answers a request
/// it was never sent as its own.
pub fn answers_in(text: &str) -> usize {
    text.lines().filter(|l| l.starts_with("HTTP/1.") && parse_status(l).is_some()).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_and_headers_are_read() {
        let a = RawAnswer {
            status: parse_status("HTTP/1.1 431 Request Header Fields Too Large\r\nLocation: https://x/\r\n\r\nbody"),
            text: "HTTP/1.1 431 Request Header Fields Too Large\r\nLocation: https://x/\r\n\r\nbody".into(),
            closed: true,
        };
        assert_eq!(a.status, Some(431));
        assert_eq!(a.header("location"), Some("https://x/"));
        assert_eq!(a.header("content-type"), None);
        assert_eq!(parse_status("garbage"), None);
        assert_eq!(parse_status(""), None);
    }

    #[test]
    fn answers_are_counted_by_status_line() {
        let two = "HTTP/1.1 400 Bad Request\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(answers_in(two), 2);
        assert_eq!(answers_in("HTTP/1.1 200 OK\r\n\r\n{\"a\": \"HTTP/1.1 is in the body\"}"), 1);
    }
}
