//! Checksums of the migration.
//!
//! - Files: sha256 and size of every export file, checked by `import` before anything is written.
//! - Export stream: [`TupleScanner`] walks PostgreSQL's binary COPY format as it streams by, to
//!   count rows and add up a 64-bit hash of every tuple (order-independent: a wrapping sum).
//! - Tables: [`table_checksum_sql`] is the one SQL both sides of `validate` run — a count and the
//!   exact sum of `hashtextextended(ROW(<legacy columns>)::text, 0)`, a 64-bit hash of each row's
//!   text. Both databases have the same column types (SPEC §5), and every session of
//!   `mfe migrate` pins DateStyle/IntervalStyle, so a row renders to the same text on both sides;
//!   the sum does not depend on row order, and it is one sequential scan with no sort.
//!   `hashtextextended` is the function hash partitioning relies on, so it is stable across
//!   servers and versions; over the 300 000 rows of payment_transactions it took 300 ms where the
//!   md5 of the same text (hex, cut to 64 bits) took 616 ms. Rendering the row is what remains;
//!   `hash_record_extended` skips it (150 ms) but hashes an enum by its OID, which differs between
//!   the databases, and a numeric without its scale — too easy to get wrong for the gain.

use super::tables::TableSpec;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;
use xxhash_rust::xxh3::Xxh3;

/// The 11-byte signature that opens a binary COPY stream.
pub const PGCOPY_SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// Where the scanner is inside the binary COPY format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Signature, flags and header-extension length: 19 fixed bytes.
    Header,
    HeaderExtension(u32),
    TupleFieldCount,
    FieldLength,
    FieldData(u32),
    Trailer,
}

/// Counts the tuples of a binary COPY stream fed in arbitrary chunks, and sums a hash of each.
pub struct TupleScanner {
    state: State,
    /// Bytes of a fixed-size item (header, count, length) split across chunks.
    pending: Vec<u8>,
    fields_left: u16,
    tuple_hash: Xxh3,
    /// Tuples seen so far.
    pub n_rows: u64,
    /// Wrapping sum of the xxh3-64 of every tuple's bytes.
    pub content_sum: u64,
    /// The first field of every tuple (the text `id` of every carried-over table), when asked
    /// for with [`TupleScanner::capturing_ids`].
    ids: Option<Ids>,
    /// The field of the current tuple the scanner is in (0 = the first).
    field_index: u16,
}

/// The first fields of the tuples scanned (a chunk's ids, kept for the rollback record).
///
/// As long as every id is a canonical uuid (36 characters, lowercase, hyphenated — what every
/// generated and sample dataset holds) each costs its 16 bytes: a 64 MB chunk of
/// payment_transactions (375 000 rows) holds 6 MB of ids, against 16.5 MB as text and offsets,
/// which with three chunks in flight made 40 % of the import's peak RSS. The first id of another
/// shape turns the whole set into text, one buffer and the end offsets (a chunk's ids never as
/// separate `String`s).
#[derive(Debug, Clone)]
pub struct Ids {
    /// Every id so far as a uuid; `None` once one was not.
    uuids: Option<Vec<[u8; 16]>>,
    /// The ids as text (all of them, or with `uuids`, only the one being scanned).
    bytes: Vec<u8>,
    /// Where each id of `bytes` ends (without `uuids`).
    ends: Vec<usize>,
}

impl Default for Ids {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

/// The 16 bytes of `text` when it is a canonical uuid, which they format back to exactly.
fn canonical_uuid(text: &[u8]) -> Option<[u8; 16]> {
    if text.len() != 36 || text.iter().any(u8::is_ascii_uppercase) {
        return None;
    }
    uuid::Uuid::try_parse_ascii(text).ok().map(uuid::Uuid::into_bytes)
}

impl Ids {
    fn with_capacity(rows: usize) -> Self {
        Self { uuids: Some(Vec::with_capacity(rows)), bytes: Vec::new(), ends: Vec::new() }
    }

    fn push_bytes(&mut self, data: &[u8]) {
        self.bytes.extend_from_slice(data);
    }

    /// The id being scanned is complete.
    fn end_id(&mut self) {
        if let Some(uuids) = &mut self.uuids {
            if let Some(u) = canonical_uuid(&self.bytes) {
                uuids.push(u);
                self.bytes.clear();
                return;
            }
            // Not a uuid: every id so far becomes text, then this one follows.
            let current = std::mem::take(&mut self.bytes);
            let uuids = self.uuids.take().unwrap_or_default();
            self.bytes.reserve(uuids.len() * 36 + current.len());
            self.ends.reserve(uuids.len() + 1);
            for u in uuids {
                self.bytes.extend_from_slice(uuid::Uuid::from_bytes(u).hyphenated().to_string().as_bytes());
                self.ends.push(self.bytes.len());
            }
            self.bytes.extend_from_slice(&current);
        }
        self.ends.push(self.bytes.len());
    }

    /// The ids in stream order; one line naming the row when an id is not UTF-8 text.
    pub fn to_strings(&self) -> Result<Vec<String>, String> {
        self.slice_strings(0, self.len())
    }

    /// Ids `from..to` in stream order (callers take a few thousand at a time, so the strings
    /// of a whole chunk never exist at once).
    pub fn slice_strings(&self, from: usize, to: usize) -> Result<Vec<String>, String> {
        if let Some(uuids) = &self.uuids {
            return Ok(uuids[from..to].iter().map(|u| uuid::Uuid::from_bytes(*u).hyphenated().to_string()).collect());
        }
        let mut out = Vec::with_capacity(to.saturating_sub(from));
        let mut start = if from == 0 { 0 } else { self.ends[from - 1] };
        for n in from..to {
            let end = self.ends[n];
            let id = std::str::from_utf8(&self.bytes[start..end])
                .map_err(|_| format!("the id of row {} is not UTF-8 text", n + 1))?;
            out.push(id.to_string());
            start = end;
        }
        Ok(out)
    }

    /// Ids `from..to` as uuids, while every id is one (`None` once one was not).
    pub fn slice_uuids(&self, from: usize, to: usize) -> Option<Vec<uuid::Uuid>> {
        Some(self.uuids.as_ref()?[from..to].iter().map(|u| uuid::Uuid::from_bytes(*u)).collect())
    }

    pub fn len(&self) -> usize {
        self.uuids.as_ref().map_or(self.ends.len(), Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for TupleScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl TupleScanner {
    pub fn new() -> Self {
        Self {
            state: State::Header,
            pending: Vec::with_capacity(19),
            fields_left: 0,
            tuple_hash: Xxh3::new(),
            n_rows: 0,
            content_sum: 0,
            ids: None,
            field_index: 0,
        }
    }

    /// A scanner that also keeps the first field of every tuple (see [`TupleScanner::take_ids`]).
    pub fn capturing_ids() -> Self {
        Self { ids: Some(Ids::default()), ..Self::new() }
    }

    /// [`TupleScanner::capturing_ids`] with room for `rows` uuids made up front: a chunk's id
    /// buffer then never grows by doubling (each regrowth holds the old buffer beside the new
    /// one, and three import jobs grow theirs at once).
    pub fn capturing_ids_for(rows: u64) -> Self {
        Self { ids: Some(Ids::with_capacity(rows as usize)), ..Self::new() }
    }

    /// The first fields kept so far (empty unless made with [`TupleScanner::capturing_ids`]).
    pub fn take_ids(&mut self) -> Ids {
        self.ids.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// True once the trailer has been seen: the stream is complete.
    pub fn finished(&self) -> bool {
        self.state == State::Trailer
    }

    /// The content checksum as written in the manifest.
    pub fn content_checksum(&self) -> String {
        format!("{:016x}", self.content_sum)
    }

    /// Fills `pending` up to `n` bytes from `data`; returns the bytes consumed and whether the
    /// item is complete.
    fn take_fixed(&mut self, data: &[u8], n: usize) -> (usize, bool) {
        let want = n - self.pending.len();
        let took = want.min(data.len());
        self.pending.extend_from_slice(&data[..took]);
        (took, self.pending.len() == n)
    }

    fn end_field(&mut self) {
        if self.field_index == 0 {
            if let Some(ids) = &mut self.ids {
                ids.end_id();
            }
        }
        self.field_index += 1;
        self.fields_left -= 1;
        if self.fields_left == 0 {
            self.end_tuple();
        } else {
            self.state = State::FieldLength;
        }
    }

    fn end_tuple(&mut self) {
        self.n_rows += 1;
        self.content_sum = self.content_sum.wrapping_add(self.tuple_hash.digest());
        self.tuple_hash.reset();
        self.state = State::TupleFieldCount;
    }

    /// Feeds the next chunk of the stream.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), String> {
        while !data.is_empty() {
            match self.state {
                State::Header => {
                    let (took, done) = self.take_fixed(data, 19);
                    data = &data[took..];
                    if done {
                        if &self.pending[..11] != PGCOPY_SIGNATURE {
                            return Err("not a binary COPY stream (bad signature)".into());
                        }
                        let ext = u32::from_be_bytes(self.pending[15..19].try_into().expect("4 bytes"));
                        self.pending.clear();
                        self.state = if ext > 0 { State::HeaderExtension(ext) } else { State::TupleFieldCount };
                    }
                }
                State::HeaderExtension(left) => {
                    let took = (left as usize).min(data.len());
                    data = &data[took..];
                    let left = left - took as u32;
                    self.state = if left == 0 { State::TupleFieldCount } else { State::HeaderExtension(left) };
                }
                State::TupleFieldCount => {
                    let (took, done) = self.take_fixed(data, 2);
                    data = &data[took..];
                    if done {
                        let n = i16::from_be_bytes([self.pending[0], self.pending[1]]);
                        self.pending.clear();
                        if n == -1 {
                            self.state = State::Trailer;
                        } else if n < 0 {
                            return Err(format!("corrupt binary COPY stream: field count {n}"));
                        } else {
                            self.tuple_hash.update(&n.to_be_bytes());
                            self.fields_left = n as u16;
                            self.field_index = 0;
                            if n == 0 {
                                self.end_tuple();
                            } else {
                                self.state = State::FieldLength;
                            }
                        }
                    }
                }
                State::FieldLength => {
                    let (took, done) = self.take_fixed(data, 4);
                    data = &data[took..];
                    if done {
                        let len = i32::from_be_bytes(self.pending[..4].try_into().expect("4 bytes"));
                        self.pending.clear();
                        self.tuple_hash.update(&len.to_be_bytes());
                        if len < -1 {
                            return Err(format!("corrupt binary COPY stream: field length {len}"));
                        }
                        if len <= 0 {
                            self.end_field();
                        } else {
                            self.state = State::FieldData(len as u32);
                        }
                    }
                }
                State::FieldData(left) => {
                    let took = (left as usize).min(data.len());
                    self.tuple_hash.update(&data[..took]);
                    if self.field_index == 0 {
                        if let Some(ids) = &mut self.ids {
                            ids.push_bytes(&data[..took]);
                        }
                    }
                    data = &data[took..];
                    let left = left - took as u32;
                    if left == 0 {
                        self.end_field();
                    } else {
                        self.state = State::FieldData(left);
                    }
                }
                State::Trailer => return Err("data after the end of the binary COPY stream".into()),
            }
        }
        Ok(())
    }
}

/// sha256 (hex) and size of a file, read in 1 MiB blocks (blocking: call from a blocking task).
pub fn file_sha256(path: &Path) -> std::io::Result<(String, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n_bytes = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        n_bytes += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), n_bytes))
}

/// `md5(ROW(<legacy columns>)::text)` of a table row aliased `t`.
pub fn row_md5_sql(table: &TableSpec) -> String {
    let cols: Vec<String> = table.columns.iter().map(|c| format!("t.{}", super::tables::quote_ident(c))).collect();
    format!("md5(ROW({})::text)", cols.join(", "))
}

/// Count and order-independent content checksum of a table, the same SQL on both sides:
/// returns `(n_rows int8, checksum text)`.
pub fn table_checksum_sql(table: &TableSpec) -> String {
    let cols: Vec<String> = table.columns.iter().map(|c| format!("t.{}", super::tables::quote_ident(c))).collect();
    format!(
        "SELECT count(*)::int8, coalesce(sum(hashtextextended(ROW({})::text, 0)), 0)::text FROM {} AS t",
        cols.join(", "),
        table.ident()
    )
}

/// Every row's id and md5, ordered by id byte-wise on both sides (collation "C"), for finding
/// the sample ids of a mismatch by a merge of two streams.
pub fn row_hashes_sql(table: &TableSpec) -> String {
    format!("SELECT t.\"id\", {} FROM {} AS t ORDER BY t.\"id\" COLLATE \"C\"", row_md5_sql(table), table.ident())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binary COPY stream of `rows`, each a list of optional field values.
    fn stream(rows: &[Vec<Option<&[u8]>>]) -> Vec<u8> {
        let mut out = PGCOPY_SIGNATURE.to_vec();
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        for row in rows {
            out.extend_from_slice(&(row.len() as i16).to_be_bytes());
            for field in row {
                match field {
                    None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(v) => {
                        out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                        out.extend_from_slice(v);
                    }
                }
            }
        }
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    #[test]
    fn the_scanner_counts_rows_whatever_the_chunking_and_its_checksum_ignores_row_order() {
        let a: Vec<Option<&[u8]>> = vec![Some(b"id-1"), None, Some(b"")];
        let b: Vec<Option<&[u8]>> = vec![Some(b"id-2"), Some(b"tab\there"), Some(b"x")];
        let data = stream(&[a.clone(), b.clone()]);
        let mut whole = TupleScanner::new();
        whole.feed(&data).unwrap();
        assert!(whole.finished());
        assert_eq!(whole.n_rows, 2);
        for chunk in [1, 2, 3, 7] {
            let mut s = TupleScanner::new();
            for c in data.chunks(chunk) {
                s.feed(c).unwrap();
            }
            assert_eq!((s.n_rows, s.content_sum, s.finished()), (2, whole.content_sum, true), "chunk {chunk}");
        }
        let mut reversed = TupleScanner::new();
        reversed.feed(&stream(&[b, a])).unwrap();
        assert_eq!(reversed.content_sum, whole.content_sum);
    }

    #[test]
    fn the_scanner_keeps_every_first_field_whatever_the_chunking() {
        let rows: Vec<Vec<Option<&[u8]>>> =
            vec![vec![Some("id-ü".as_bytes()), Some(b"x")], vec![Some(b"id-2"), None], vec![Some(b""), Some(b"y")]];
        let data = stream(&rows);
        for chunk in [1, 3, data.len()] {
            let mut s = TupleScanner::capturing_ids();
            for c in data.chunks(chunk) {
                s.feed(c).unwrap();
            }
            assert_eq!(s.take_ids().to_strings().unwrap(), ["id-ü", "id-2", ""], "chunk {chunk}");
        }
        let mut plain = TupleScanner::new();
        plain.feed(&data).unwrap();
        assert!(plain.take_ids().is_empty());
        let mut bad = TupleScanner::capturing_ids();
        bad.feed(&stream(&[vec![Some(&[0xff, 0xfe][..])]])).unwrap();
        assert!(bad.take_ids().to_strings().unwrap_err().contains("row 1"));
    }

    #[test]
    fn uuid_ids_are_kept_in_16_bytes_and_any_other_id_turns_them_all_into_text() {
        let (a, b) = ("0b6f3c1e-5d2a-4c8e-9f10-2a3b4c5d6e7f", "ffffffff-0000-4000-8000-000000000001");
        let upper = "0B6F3C1E-5D2A-4C8E-9F10-2A3B4C5D6E7F";
        let scan = |ids: &[&str]| {
            let rows: Vec<Vec<Option<&[u8]>>> = ids.iter().map(|i| vec![Some(i.as_bytes()), Some(&b"x"[..])]).collect();
            let mut s = TupleScanner::capturing_ids_for(ids.len() as u64);
            // Cut mid-id, so an id arrives in pieces.
            for c in stream(&rows).chunks(7) {
                s.feed(c).unwrap();
            }
            s.take_ids()
        };
        let only_uuids = scan(&[a, b]);
        assert!(only_uuids.uuids.is_some(), "two canonical uuids stay compact");
        assert_eq!(only_uuids.to_strings().unwrap(), [a, b]);
        assert_eq!(only_uuids.slice_strings(1, 2).unwrap(), [b]);
        let as_uuids = only_uuids.slice_uuids(0, 2).expect("compact ids slice as uuids");
        assert_eq!(as_uuids.iter().map(|u| u.to_string()).collect::<Vec<_>>(), [a, b], "they format back exactly");
        // An uppercase uuid would not format back to itself; an id of another shape neither.
        for other in [upper, "p-big", ""] {
            let mixed = scan(&[a, other, b]);
            assert!(mixed.uuids.is_none(), "{other:?} turns the set into text");
            assert_eq!(mixed.len(), 3);
            assert_eq!(mixed.to_strings().unwrap(), [a, other, b], "{other:?}");
            assert!(mixed.slice_uuids(0, 1).is_none(), "{other:?}: recorded as text");
        }
    }

    #[test]
    fn a_truncated_stream_is_not_finished_and_a_bad_signature_is_refused() {
        let data = stream(&[vec![Some(b"x")]]);
        let mut s = TupleScanner::new();
        s.feed(&data[..data.len() - 1]).unwrap();
        assert!(!s.finished());
        let mut bad = TupleScanner::new();
        assert!(bad.feed(b"id\temail\nxxxxxxxxxxxxxxxxxxxxx").is_err());
    }
}
