//! Reading one snapshot: the vendor's CSV of open sessions, streamed record by record.
//!
//! What the file may look like is in `vendor-api.md`: a header naming `source` (or `origem`,
//! `origin`) and `session_created_at` in any case, with a UTF-8 BOM and spaces tolerated;
//! `,` or `;` as delimiter (detected from the header line); CRLF or LF; quoted fields; extra
//! columns ignored. A file without a header, or whose header lacks the two columns (an HTML
//! error page, say), is not a snapshot: [`SnapshotReader::open`] fails and the run fails. So
//! is a header with two number columns (`origem,source`, or `source` twice) or two timestamp
//! columns: which one the vendor meant cannot be known, and guessing could close sessions.
//!
//! Past the header, every record is either a [`SessionKey`] or a [`Rejection`] with its
//! 1-based line number (the header is line 1) and the reason; the caller decides whether the
//! snapshot can still be trusted. Memory stays flat: one record buffer is reused throughout.

use std::fmt;

use chrono_tz::Tz;
use csv_async::{AsyncReader, AsyncReaderBuilder, ByteRecord};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

use crate::timestamp::{parse_timestamp, Timestamp};

/// The longest header line accepted; anything longer is not the vendor's two-column file.
pub const MAX_HEADER_BYTES: u64 = 64 * 1024;
/// The longest line accepted anywhere in the file; the vendor's lines are about 40 bytes.
pub const MAX_LINE_BYTES: u64 = 1024 * 1024;
/// How much of a rejected record is kept in `rejected_rows.raw_record`.
pub const MAX_RAW_RECORD_BYTES: usize = 1024;

const SOURCE_NAMES: [&str; 3] = ["source", "origem", "origin"];
const CREATED_NAME: &str = "session_created_at";

/// Why a body is not a snapshot at all. A run that meets one of these fails.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("the file is empty: not even a header line (a snapshot of no sessions still has its header)")]
    Empty,
    #[error("the header line is longer than {MAX_HEADER_BYTES} bytes: not a session CSV")]
    HeaderTooLong,
    #[error("the header has no {missing} column (header seen: {seen:?}): not a session CSV")]
    MissingColumns { missing: &'static str, seen: String },
    #[error("the header is ambiguous: {columns} columns hold the {what} (header seen: {seen:?}); which one the vendor means cannot be known, so the file is refused")]
    AmbiguousColumns {
        what: &'static str,
        columns: usize,
        seen: String,
    },
    #[error("line {line}: a quoted field runs past the end of its line (a stray quote?): the file cannot be split into records reliably")]
    QuoteAcrossLines { line: u64 },
    #[error("line {line} is longer than {MAX_LINE_BYTES} bytes: not a session CSV")]
    LineTooLong { line: u64 },
    // The step ("reading the file") is named by the caller; these say only what broke.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Csv(#[from] csv_async::Error),
}

impl SnapshotError {
    /// csv wraps I/O errors, and so our own [`LineGuard`] errors: unwrap them again.
    fn from_csv(e: csv_async::Error) -> SnapshotError {
        if !matches!(e.kind(), csv_async::ErrorKind::Io(_)) {
            return SnapshotError::Csv(e);
        }
        match e.into_kind() {
            csv_async::ErrorKind::Io(io) => match io.downcast::<SnapshotError>() {
                Ok(ours) => ours,
                Err(io) => SnapshotError::Io(io),
            },
            _ => unreachable!("checked above"),
        }
    }
}

/// A phone number as stored: 8 to 15 ASCII digits, held inline.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PhoneNumber {
    len: u8,
    digits: [u8; 15],
}

impl PhoneNumber {
    /// Strips `+`, spaces and dashes (and surrounding whitespace); what is left must be 8 to 15
    /// digits.
    pub fn parse(raw: &[u8]) -> Result<PhoneNumber, &'static str> {
        let mut digits = [0u8; 15];
        let mut len = 0usize;
        for &c in raw.trim_ascii() {
            match c {
                b'+' | b' ' | b'-' => {}
                b'0'..=b'9' => {
                    if len == digits.len() {
                        return Err("number has more than 15 digits");
                    }
                    digits[len] = c;
                    len += 1;
                }
                _ => return Err("number holds a character other than digits, '+', ' ' or '-'"),
            }
        }
        match len {
            0 => Err("number is empty"),
            1..=7 => Err("number has fewer than 8 digits"),
            _ => Ok(PhoneNumber {
                len: len as u8,
                digits,
            }),
        }
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits are ever stored.
        std::str::from_utf8(&self.digits[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl fmt::Debug for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What identifies a session within an account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey {
    pub source: PhoneNumber,
    pub created_at: Timestamp,
}

/// A record that could not be used, for `rejected_rows`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub line_number: u64,
    pub raw_record: String,
    pub reason: String,
    /// The number, when only the timestamp was unusable: the vendor still lists a session of
    /// this number, so none of its open sessions may be closed by this snapshot.
    pub listed_number: Option<PhoneNumber>,
}

/// One data record of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Row {
    Session(SessionKey),
    Rejected(Rejection),
}

/// Streams the records of one snapshot.
pub struct SnapshotReader<R> {
    csv: AsyncReader<HeaderThenRest<R>>,
    record: ByteRecord,
    source_idx: usize,
    created_idx: usize,
    delimiter: u8,
    tz: Tz,
    /// Later creation times are rejected as implausible (see [`SnapshotReader::reject_after`]).
    latest: Option<Timestamp>,
}

type HeaderThenRest<R> = LineGuard<tokio::io::Chain<std::io::Cursor<Vec<u8>>, BufReader<R>>>;

impl<R: AsyncRead + Unpin + Send> SnapshotReader<R> {
    /// Reads the header line, picks the delimiter and finds the two columns.
    pub async fn open(reader: R, tz: Tz) -> Result<Self, SnapshotError> {
        let mut reader = BufReader::with_capacity(64 * 1024, reader);
        let mut header = Vec::new();
        (&mut reader)
            .take(MAX_HEADER_BYTES + 1)
            .read_until(b'\n', &mut header)
            .await?;
        if header.len() as u64 > MAX_HEADER_BYTES {
            return Err(SnapshotError::HeaderTooLong);
        }
        if header.is_empty() {
            return Err(SnapshotError::Empty);
        }
        if let Some(rest) = header.strip_prefix(b"\xEF\xBB\xBF") {
            header = rest.to_vec();
        }
        let delimiter = detect_delimiter(&header);
        // Records end at LF; a CR before it is trimmed with the field's whitespace. (With the
        // CRLF-aware default terminator, csv's line numbers lag by one on CRLF files.)
        let mut csv = AsyncReaderBuilder::new()
            .delimiter(delimiter)
            .terminator(csv_async::Terminator::Any(b'\n'))
            .flexible(true)
            .has_headers(true)
            .create_reader(LineGuard::new(
                std::io::Cursor::new(header).chain(reader),
                delimiter,
            ));
        let headers = csv
            .byte_headers()
            .await
            .map_err(SnapshotError::from_csv)?
            .clone();
        let seen = || truncate_lossy(&join_fields(&headers, delimiter), 200);
        // Exactly one column of each: with two (`origem,source`, or `source` twice) the file
        // says two things and picking one could close sessions the other still lists.
        let find = |names: &[&str], what: &'static str| {
            let mut found = headers.iter().enumerate().filter(|(_, h)| {
                let h = String::from_utf8_lossy(h);
                let h = h.trim();
                names.iter().any(|n| h.eq_ignore_ascii_case(n))
            });
            match (found.next(), found.count()) {
                (None, _) => Err(SnapshotError::MissingColumns {
                    missing: what,
                    seen: seen(),
                }),
                (Some((i, _)), 0) => Ok(i),
                (Some(_), more) => Err(SnapshotError::AmbiguousColumns {
                    what,
                    columns: more + 1,
                    seen: seen(),
                }),
            }
        };
        let source_idx = find(&SOURCE_NAMES, "source (or origem/origin)")?;
        let created_idx = find(&[CREATED_NAME], "session_created_at")?;
        Ok(SnapshotReader {
            csv,
            record: ByteRecord::new(),
            source_idx,
            created_idx,
            delimiter,
            tz,
            latest: None,
        })
    }

    /// Rejects records created after `latest` (this host's clock plus the tolerated skew): a
    /// session cannot have opened in the future, and storing `9999-12-31` would count it as
    /// opened recently for ever. The number is still listed, so its sessions stay open.
    pub fn reject_after(mut self, latest: Timestamp) -> Self {
        self.latest = Some(latest);
        self
    }

    /// The next data record, or `None` at the end of the file.
    pub async fn next_row(&mut self) -> Result<Option<Row>, SnapshotError> {
        loop {
            if !self
                .csv
                .read_byte_record(&mut self.record)
                .await
                .map_err(SnapshotError::from_csv)?
            {
                return Ok(None);
            }
            // A blank line (CRLF files included) is no record.
            if !(self.record.len() == 1 && self.record[0].trim_ascii().is_empty()) {
                break;
            }
        }
        let reported = self.record.position().map_or(0, |p| p.line());
        let line_number = self.csv.get_mut().correct_line(reported);
        Ok(Some(match self.classify() {
            Ok(key) => Row::Session(key),
            Err((reason, listed_number)) => Row::Rejected(Rejection {
                line_number,
                raw_record: truncate_lossy(
                    &join_fields(&self.record, self.delimiter),
                    MAX_RAW_RECORD_BYTES,
                ),
                reason,
                listed_number,
            }),
        }))
    }

    /// The record's session, or why not (with the number when only the timestamp failed).
    fn classify(&self) -> Result<SessionKey, (String, Option<PhoneNumber>)> {
        let (Some(source), Some(created)) = (
            self.record.get(self.source_idx),
            self.record.get(self.created_idx),
        ) else {
            let reason = format!(
                "record has {} fields; the header names {}",
                self.record.len(),
                self.source_idx.max(self.created_idx) + 1
            );
            // The number may still be there: protect its sessions.
            let listed = self
                .record
                .get(self.source_idx)
                .and_then(|s| PhoneNumber::parse(s).ok());
            return Err((reason, listed));
        };
        let source = PhoneNumber::parse(source).map_err(|e| (e.to_owned(), None))?;
        let created = std::str::from_utf8(created).map_err(|_| {
            (
                "session_created_at is not valid UTF-8".to_owned(),
                Some(source),
            )
        })?;
        let created_at = parse_timestamp(created, self.tz)
            .map_err(|e| (format!("session_created_at: {e}"), Some(source)))?;
        if self.latest.is_some_and(|latest| created_at > latest) {
            return Err((
                "session_created_at is in the future, beyond the clock skew tolerated \
                 (max_clock_skew_secs): implausible"
                    .to_owned(),
                Some(source),
            ));
        }
        Ok(SessionKey { source, created_at })
    }
}

/// Follows csv's quoting rules byte by byte and stops the file where a quoted field would
/// run into the next line or a line grows past [`MAX_LINE_BYTES`]. The vendor's fields never
/// hold a newline, so a quote left open is a broken file: without this guard it would
/// silently swallow the records that follow (and buffer them), and the sessions on those
/// lines would be closed as if the vendor no longer listed them.
pub struct LineGuard<R> {
    inner: R,
    delimiter: u8,
    state: QuoteState,
    line: u64,
    line_bytes: u64,
    /// Empty lines seen ahead of the records handed out: csv skips them and then reports the
    /// next record at the first skipped line's number, which [`SnapshotReader::next_row`]
    /// corrects with these. Pruned as records pass, so it stays small.
    blank_lines: std::collections::VecDeque<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum QuoteState {
    FieldStart,
    Unquoted,
    Quoted,
    QuoteInQuoted,
}

impl<R> LineGuard<R> {
    fn new(inner: R, delimiter: u8) -> Self {
        LineGuard {
            inner,
            delimiter,
            state: QuoteState::FieldStart,
            line: 1,
            line_bytes: 0,
            blank_lines: std::collections::VecDeque::new(),
        }
    }

    /// The true line of a record that csv reports at `line`.
    fn correct_line(&mut self, mut line: u64) -> u64 {
        while let Some(&blank) = self.blank_lines.front() {
            if blank > line {
                break;
            }
            if blank == line {
                line += 1;
            }
            self.blank_lines.pop_front();
        }
        line
    }

    fn scan(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
        use QuoteState::*;
        for &c in bytes {
            self.line_bytes += 1;
            if c == b'\n' {
                if self.state == Quoted {
                    return Err(SnapshotError::QuoteAcrossLines { line: self.line });
                }
                if self.line_bytes == 1 {
                    self.blank_lines.push_back(self.line);
                }
                self.state = FieldStart;
                self.line += 1;
                self.line_bytes = 0;
                continue;
            }
            if self.line_bytes > MAX_LINE_BYTES {
                return Err(SnapshotError::LineTooLong { line: self.line });
            }
            self.state = match (self.state, c) {
                (FieldStart, b'"') => Quoted,
                (Quoted, b'"') => QuoteInQuoted,
                (Quoted, _) => Quoted,
                (QuoteInQuoted, b'"') => Quoted,
                (_, d) if d == self.delimiter => FieldStart,
                _ => Unquoted,
            };
        }
        Ok(())
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for LineGuard<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let poll = std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(())) = poll {
            if let Err(e) = this.scan(&buf.filled()[before..]) {
                return std::task::Poll::Ready(Err(std::io::Error::other(e)));
            }
        }
        poll
    }
}

/// `;` when the header line has more semicolons than commas outside quotes, else `,`.
fn detect_delimiter(header: &[u8]) -> u8 {
    let (mut commas, mut semicolons, mut quoted) = (0usize, 0usize, false);
    for &c in header {
        match c {
            b'"' => quoted = !quoted,
            b',' if !quoted => commas += 1,
            b';' if !quoted => semicolons += 1,
            _ => {}
        }
    }
    if semicolons > commas {
        b';'
    } else {
        b','
    }
}

/// The record written back as one CSV line, quoting where needed.
fn join_fields(record: &ByteRecord, delimiter: u8) -> Vec<u8> {
    let mut out = Vec::new();
    let last = record.len().saturating_sub(1);
    for (i, field) in record.iter().enumerate() {
        if i > 0 {
            out.push(delimiter);
        }
        // The CR of a CRLF line end is not part of the record.
        let field = match field.strip_suffix(b"\r") {
            Some(stripped) if i == last => stripped,
            _ => field,
        };
        if field
            .iter()
            .any(|&c| c == delimiter || c == b'"' || c == b'\n' || c == b'\r')
        {
            out.push(b'"');
            for &c in field {
                if c == b'"' {
                    out.push(b'"');
                }
                out.push(c);
            }
            out.push(b'"');
        } else {
            out.extend_from_slice(field);
        }
        if out.len() > MAX_RAW_RECORD_BYTES * 4 {
            break;
        }
    }
    out
}

/// Text that every database accepts: invalid UTF-8 and NUL become U+FFFD; cut at a char
/// boundary after `max` bytes, saying how much was cut.
fn truncate_lossy(bytes: &[u8], max: usize) -> String {
    let cut = bytes.len() > max;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(max)]).replace('\0', "\u{FFFD}");
    if cut {
        format!("{text}…[truncated]")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_all(body: &[u8]) -> Result<Vec<Row>, SnapshotError> {
        let mut r = SnapshotReader::open(body, Tz::UTC).await?;
        let mut rows = Vec::new();
        while let Some(row) = r.next_row().await? {
            rows.push(row);
        }
        Ok(rows)
    }

    fn session(source: &str, created: &str) -> Row {
        Row::Session(SessionKey {
            source: PhoneNumber::parse(source.as_bytes()).unwrap(),
            created_at: Timestamp::parse_iso(created).unwrap(),
        })
    }

    #[tokio::test]
    async fn reads_the_documented_layout() {
        let rows = read_all(
            b"source,session_created_at\n5519900000000,2017-12-18T17:09:31.473Z\n5519900000001,1513616971473\n",
        )
        .await
        .unwrap();
        assert_eq!(
            rows,
            vec![
                session("5519900000000", "2017-12-18T17:09:31.473Z"),
                session("5519900000001", "2017-12-18T17:09:31.473Z"),
            ]
        );
    }

    #[tokio::test]
    async fn tolerates_bom_aliases_semicolons_crlf_quotes_and_extra_columns() {
        let body = b"\xEF\xBB\xBF extra ; ORIGEM ;Session_Created_At\r\nx;\"+55 19 9000-00000\";\"2017-12-18 17:09:31.473\"\r\n";
        let rows = read_all(body).await.unwrap();
        assert_eq!(
            rows,
            vec![session("5519900000000", "2017-12-18T17:09:31.473Z")]
        );
        let rows = read_all(b"origin,session_created_at\n5519900000000,2017-12-18T17:09:31Z")
            .await
            .unwrap();
        assert_eq!(
            rows,
            vec![session("5519900000000", "2017-12-18T17:09:31.000Z")]
        );
    }

    #[tokio::test]
    async fn header_only_is_a_snapshot_of_nothing() {
        assert_eq!(
            read_all(b"source,session_created_at\n").await.unwrap(),
            vec![]
        );
        assert_eq!(
            read_all(b"source,session_created_at").await.unwrap(),
            vec![]
        );
    }

    #[tokio::test]
    async fn a_body_that_is_not_a_session_csv_is_refused_whole() {
        assert!(matches!(read_all(b"").await, Err(SnapshotError::Empty)));
        let html = b"<!DOCTYPE html><html><body>Service Unavailable</body></html>\n";
        assert!(matches!(
            read_all(html).await,
            Err(SnapshotError::MissingColumns { .. })
        ));
        assert!(matches!(
            read_all(b"source,created\n5519900000000,x\n").await,
            Err(SnapshotError::MissingColumns {
                missing: "session_created_at",
                ..
            })
        ));
        let long = vec![b'a'; MAX_HEADER_BYTES as usize + 10];
        assert!(matches!(
            read_all(&long).await,
            Err(SnapshotError::HeaderTooLong)
        ));
    }

    #[tokio::test]
    async fn records_created_after_the_limit_are_rejected_but_keep_their_number() {
        let body = b"source,session_created_at\n\
            5519900000001,2026-11-20T10:00:00.000Z\n\
            5519900000002,2026-11-20T10:00:00.001Z\n\
            5519900000003,9999-12-31T23:59:59Z\n";
        let limit = Timestamp::parse_iso("2026-11-20T10:00:00.000Z").unwrap();
        let mut r = SnapshotReader::open(&body[..], Tz::UTC)
            .await
            .unwrap()
            .reject_after(limit);
        let mut rows = Vec::new();
        while let Some(row) = r.next_row().await.unwrap() {
            rows.push(row);
        }
        assert_eq!(
            rows[0],
            session("5519900000001", "2026-11-20T10:00:00.000Z")
        );
        for (row, number) in rows[1..].iter().zip(["5519900000002", "5519900000003"]) {
            let Row::Rejected(r) = row else {
                panic!("{row:?}")
            };
            assert!(r.reason.contains("future"), "{r:?}");
            assert_eq!(
                r.listed_number.map(|n| n.to_string()).as_deref(),
                Some(number)
            );
        }
    }

    #[tokio::test]
    async fn two_columns_for_the_number_or_the_time_make_the_file_ambiguous() {
        for header in [
            "origem,source,session_created_at",
            "source;SOURCE;session_created_at",
            "origin,x,source,session_created_at",
            "source,session_created_at, Session_Created_At ",
        ] {
            let body = format!("{header}\n5519900000001,5519900000002,2017-12-18T17:09:31Z\n");
            assert!(
                matches!(
                    read_all(body.as_bytes()).await,
                    Err(SnapshotError::AmbiguousColumns { columns: 2, .. })
                ),
                "{header}"
            );
        }
    }

    #[tokio::test]
    async fn bad_records_are_rejected_with_line_number_and_reason() {
        let body = b"source,session_created_at\n\
            5519900000000,2017-12-18T17:09:31.473Z\n\
            55199abc00000,2017-12-18T17:09:31.473Z\n\
            1234567,2017-12-18T17:09:31.473Z\n\
            \"5519900000002\",\"not \"\"a\"\" time\"\n\
            \n\
            5519900000003\n\
            5519900000004,2017-12-18T17:09:31\0Z\n";
        let crlf: Vec<u8> = String::from_utf8_lossy(body)
            .replace('\n', "\r\n")
            .into_bytes();
        let rows = read_all(body).await.unwrap();
        assert_eq!(rows, read_all(&crlf).await.unwrap(), "CRLF reads as LF");
        let rejected: Vec<&Rejection> = rows
            .iter()
            .filter_map(|r| match r {
                Row::Rejected(r) => Some(r),
                _ => None,
            })
            .collect();
        assert_eq!(rows.len(), 6, "the blank line is no record");
        assert_eq!(rejected.len(), 5, "{rejected:?}");
        assert_eq!(rejected[0].line_number, 3);
        assert!(rejected[0].reason.contains("character other than digits"));
        assert_eq!(rejected[0].listed_number, None);
        assert_eq!(rejected[1].line_number, 4);
        assert_eq!(rejected[1].reason, "number has fewer than 8 digits");
        assert_eq!(rejected[2].line_number, 5);
        assert!(rejected[2].reason.starts_with("session_created_at"));
        assert_eq!(
            rejected[2].raw_record,
            "5519900000002,\"not \"\"a\"\" time\""
        );
        // Only the timestamp was bad: the number is still listed by the vendor.
        assert_eq!(
            rejected[2].listed_number.map(|n| n.to_string()).as_deref(),
            Some("5519900000002")
        );
        assert_eq!(rejected[3].line_number, 7);
        assert!(rejected[3].reason.contains("fields"));
        assert_eq!(rejected[4].line_number, 8);
        assert!(!rejected[4].raw_record.contains('\0'));
    }

    #[tokio::test]
    async fn a_quote_left_open_fails_the_file_instead_of_swallowing_lines() {
        let body = b"source,session_created_at\n\
            5519900000001,2017-12-18T17:09:31.473Z\n\
            \"5519900000002,2017-12-18T17:09:31.473Z\n\
            5519900000003,2017-12-18T17:09:31.473Z\n";
        assert!(matches!(
            read_all(body).await,
            Err(SnapshotError::QuoteAcrossLines { line: 3 })
        ));
        // A quote inside an unquoted field is a literal, as csv reads it.
        let body = b"source,session_created_at\n55\"19900000001,2017-12-18T17:09:31.473Z\n";
        let rows = read_all(body).await.unwrap();
        assert!(matches!(&rows[0], Row::Rejected(r) if r.line_number == 2));
    }

    #[tokio::test]
    async fn an_endless_line_fails_the_file_without_buffering_it() {
        let mut body = b"source,session_created_at\n5519900000001,".to_vec();
        body.extend(std::iter::repeat_n(b'9', MAX_LINE_BYTES as usize + 10));
        assert!(matches!(
            read_all(&body).await,
            Err(SnapshotError::LineTooLong { line: 2 })
        ));
    }

    #[test]
    fn phone_numbers_are_normalised_to_digits() {
        assert_eq!(
            PhoneNumber::parse(b" +55 19-90000 0000 ").unwrap().as_str(),
            "5519900000000"
        );
        assert_eq!(
            PhoneNumber::parse(b"12345678").unwrap().as_str(),
            "12345678"
        );
        assert_eq!(
            PhoneNumber::parse(b"123456789012345").unwrap().as_str(),
            "123456789012345"
        );
        assert!(PhoneNumber::parse(b"1234567890123456").is_err());
        assert!(PhoneNumber::parse(b"1234567").is_err());
        assert!(PhoneNumber::parse(b"").is_err());
        assert!(PhoneNumber::parse(b"5519'; DROP TABLE sessions;--").is_err());
    }

    #[test]
    fn raw_records_are_cut_and_cleaned_for_storage() {
        let long = vec![b'9'; 5000];
        let t = truncate_lossy(&long, MAX_RAW_RECORD_BYTES);
        assert!(t.len() < 1100 && t.ends_with("[truncated]"));
        assert_eq!(truncate_lossy(b"a\0b\xff", 100), "a\u{FFFD}b\u{FFFD}");
    }
}
