//! One replication-protocol connection to the legacy server: the connection on which
//! `CREATE_REPLICATION_SLOT … LOGICAL pgoutput (SNAPSHOT 'export')` runs, and which must then stay
//! open and idle while the export reads from the snapshot it exported.
//!
//! Why hand-sequenced messages: the slot's snapshot is exported only by the replication command
//! (the SQL function `pg_create_logical_replication_slot` exports none), and that command needs a
//! connection opened with the startup parameter `replication=database`. sqlx cannot send that
//! parameter, and tokio-postgres 0.7 cannot either (its replication mode lives only in forks, not
//! in the released crate). So this module speaks the few messages such a session needs — startup,
//! password/MD5/SCRAM authentication, one simple query, terminate — with the message encoding and
//! the SCRAM-SHA-256 exchange of `postgres-protocol` (the rust-postgres project's own layer);
//! nothing here parses data beyond the one result row. Plain TCP: the split and legacy servers of
//! this stack listen on loopback or the compose network (a TLS legacy server would need the
//! SSLRequest step added here).

use anyhow::{bail, Context};
use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::{backend, frontend};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::PgTarget;

/// How long connecting and each command may take (slot creation waits for running transactions
/// to end, which a busy legacy server keeps short).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// An open replication connection (logical, bound to the target database).
pub struct ReplicationConn {
    stream: TcpStream,
    buf: BytesMut,
    label: String,
}

/// What `CREATE_REPLICATION_SLOT` answered.
#[derive(Debug, Clone)]
pub struct CreatedSlot {
    pub slot_name: String,
    /// The LSN from which the slot streams: everything committed after the snapshot.
    pub consistent_point: String,
    /// The exported snapshot, valid while this connection stays open and idle.
    pub snapshot_name: String,
}

impl ReplicationConn {
    /// Opens a logical replication connection to `target` (`label` names it in errors).
    pub async fn connect(target: &PgTarget, label: &str) -> anyhow::Result<Self> {
        let fut = async {
            let stream = TcpStream::connect((target.host.as_str(), target.port))
                .await
                .with_context(|| format!("{label}: cannot open a replication connection to {}", target.addr()))?;
            let mut conn = Self { stream, buf: BytesMut::with_capacity(8192), label: label.to_string() };
            conn.startup(target).await?;
            anyhow::Ok(conn)
        };
        tokio::time::timeout(COMMAND_TIMEOUT, fut)
            .await
            .map_err(|_| anyhow::anyhow!("{label}: the replication connection to {} timed out", target.addr()))?
    }

    async fn send(&mut self, out: &BytesMut) -> anyhow::Result<()> {
        self.stream.write_all(out).await.with_context(|| format!("{}: replication connection lost", self.label))
    }

    async fn next(&mut self) -> anyhow::Result<backend::Message> {
        loop {
            if let Some(m) = backend::Message::parse(&mut self.buf)
                .with_context(|| format!("{}: bad message on the replication connection", self.label))?
            {
                return Ok(m);
            }
            let n = self
                .stream
                .read_buf(&mut self.buf)
                .await
                .with_context(|| format!("{}: replication connection lost", self.label))?;
            if n == 0 {
                bail!("{}: the server closed the replication connection", self.label);
            }
        }
    }

    async fn startup(&mut self, target: &PgTarget) -> anyhow::Result<()> {
        let mut out = BytesMut::new();
        let params = [
            ("user", target.user.as_str()),
            ("database", target.database.as_str()),
            ("replication", "database"),
            ("application_name", "mfe migrate sync"),
            ("client_encoding", "UTF8"),
        ];
        frontend::startup_message(params.iter().copied(), &mut out)?;
        self.send(&out).await?;
        let password = super::sync::url_password(target);
        let mut scram: Option<ScramSha256> = None;
        loop {
            match self.next().await? {
                backend::Message::AuthenticationOk => {}
                backend::Message::AuthenticationCleartextPassword => {
                    let mut out = BytesMut::new();
                    frontend::password_message(password.as_bytes(), &mut out)?;
                    self.send(&out).await?;
                }
                backend::Message::AuthenticationMd5Password(body) => {
                    let hash = postgres_protocol::authentication::md5_hash(
                        target.user.as_bytes(),
                        password.as_bytes(),
                        body.salt(),
                    );
                    let mut out = BytesMut::new();
                    frontend::password_message(hash.as_bytes(), &mut out)?;
                    self.send(&out).await?;
                }
                backend::Message::AuthenticationSasl(body) => {
                    let mut mechanisms = body.mechanisms();
                    let mut found = false;
                    while let Some(m) = fallible_iterator::FallibleIterator::next(&mut mechanisms)? {
                        found |= m == SCRAM_SHA_256;
                    }
                    if !found {
                        bail!("{}: the server offers no SCRAM-SHA-256 authentication", self.label);
                    }
                    let s = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                    let mut out = BytesMut::new();
                    frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut out)?;
                    self.send(&out).await?;
                    scram = Some(s);
                }
                backend::Message::AuthenticationSaslContinue(body) => {
                    let s = scram.as_mut().context("SCRAM continue without a start")?;
                    s.update(body.data()).with_context(|| format!("{}: SCRAM exchange failed", self.label))?;
                    let mut out = BytesMut::new();
                    frontend::sasl_response(s.message(), &mut out)?;
                    self.send(&out).await?;
                }
                backend::Message::AuthenticationSaslFinal(body) => {
                    let s = scram.as_mut().context("SCRAM final without a start")?;
                    s.finish(body.data())
                        .with_context(|| format!("{}: the server's SCRAM proof is wrong", self.label))?;
                }
                backend::Message::ErrorResponse(body) => bail!("{}: {}", self.label, error_text(&body)),
                backend::Message::ReadyForQuery(_) => return Ok(()),
                // ParameterStatus, BackendKeyData, NoticeResponse: nothing to do.
                _ => {}
            }
        }
    }

    /// Runs one replication command; returns the text columns of its rows.
    pub async fn simple_query(&mut self, command: &str) -> anyhow::Result<Vec<Vec<Option<String>>>> {
        let label = self.label.clone();
        let fut = async {
            let mut out = BytesMut::new();
            frontend::query(command, &mut out)?;
            self.send(&out).await?;
            let mut rows = Vec::new();
            let mut error = None;
            loop {
                match self.next().await? {
                    backend::Message::DataRow(body) => {
                        let buf = body.buffer();
                        let mut ranges = body.ranges();
                        let mut row = Vec::new();
                        while let Some(r) = fallible_iterator::FallibleIterator::next(&mut ranges)? {
                            row.push(r.map(|r| String::from_utf8_lossy(&buf[r]).into_owned()));
                        }
                        rows.push(row);
                    }
                    backend::Message::ErrorResponse(body) => error = Some(error_text(&body)),
                    backend::Message::ReadyForQuery(_) => break,
                    _ => {}
                }
            }
            match error {
                Some(e) => bail!("{label}: {e}"),
                None => Ok(rows),
            }
        };
        tokio::time::timeout(COMMAND_TIMEOUT, fut).await.map_err(|_| {
            anyhow::anyhow!("{label}: `{command}` did not answer within {} s", COMMAND_TIMEOUT.as_secs())
        })?
    }

    /// Creates a permanent logical slot for pgoutput and exports its snapshot (PostgreSQL 15
    /// syntax). The snapshot stays importable until this connection runs another command or closes.
    pub async fn create_slot_exporting_snapshot(&mut self, slot: &str) -> anyhow::Result<CreatedSlot> {
        let rows = self
            .simple_query(&format!("CREATE_REPLICATION_SLOT {slot} LOGICAL pgoutput (SNAPSHOT 'export')"))
            .await
            .with_context(|| format!("cannot create the replication slot {slot}"))?;
        let row = rows.into_iter().next().context("CREATE_REPLICATION_SLOT returned no row")?;
        let col = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
        let created = CreatedSlot { slot_name: col(0), consistent_point: col(1), snapshot_name: col(2) };
        if created.snapshot_name.is_empty() {
            bail!("{}: slot {slot} was created without an exported snapshot", self.label);
        }
        Ok(created)
    }

    /// Ends the session politely (the exported snapshot goes with it).
    pub async fn close(mut self) {
        let mut out = BytesMut::new();
        frontend::terminate(&mut out);
        let _ = self.stream.write_all(&out).await;
    }
}

/// `SEVERITY: message (SQLSTATE)` of an error response.
fn error_text(body: &backend::ErrorResponseBody) -> String {
    let mut fields = body.fields();
    let (mut severity, mut message, mut code) = (String::new(), String::new(), String::new());
    while let Ok(Some(f)) = fallible_iterator::FallibleIterator::next(&mut fields) {
        match f.type_() {
            b'S' => severity = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            b'M' => message = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            b'C' => code = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            _ => {}
        }
    }
    format!("{severity}: {message} ({code})")
}
