//! Property tests of the two parsers that face the vendor's bytes: the CSV reader and the
//! timestamp parser. Whatever the input: no panic, no hang, and every record is either
//! accepted with the right value or rejected with a reason.

use chrono_tz::Tz;
use proptest::prelude::*;
use session_sync::snapshot::{Row, SnapshotReader};
use session_sync::timestamp::{parse_timestamp, Timestamp, TimestampError};

fn read_all(body: &[u8]) -> Result<Vec<Row>, String> {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(async {
            let mut reader = SnapshotReader::open(body, Tz::UTC)
                .await
                .map_err(|e| e.to_string())?;
            let mut rows = Vec::new();
            while let Some(row) = reader.next_row().await.map_err(|e| e.to_string())? {
                rows.push(row);
            }
            Ok(rows)
        })
}

/// Any instant session-sync can store, in milliseconds.
fn instant() -> impl Strategy<Value = i64> {
    0i64..253_402_300_800_000
}

/// A date and time written in one of the calendar forms the parser takes, from fields drawn
/// a little past their ranges (month 13, day 32, hour 24, second 60, offset +24:60, years
/// before 1970), so that both outcomes come up often, and often at the ends of months and
/// in century years (leap or not).
#[derive(Debug, Clone)]
struct CalendarText {
    text: String,
    fields: [u32; 6],
    /// Digits after the seconds' point (1 to 9 of them), if any.
    fraction: Option<String>,
    /// East of UTC in (hours, minutes); `None` when the text has no offset (read as UTC).
    offset: Option<(i32, u32, u32)>,
}

impl CalendarText {
    /// What the text names, worked out with chrono rather than the parser's own calendar:
    /// the instant to the millisecond (finer digits truncated), or out of range.
    fn expected(&self) -> Result<Timestamp, TimestampError> {
        use chrono::{NaiveDate, NaiveTime};
        let [year, month, day, hour, minute, second] = self.fields;
        let millis = self
            .fraction
            .as_ref()
            .map_or(0, |f| format!("{f:0<3}")[..3].parse::<u32>().unwrap());
        let date = NaiveDate::from_ymd_opt(year as i32, month, day);
        let time = NaiveTime::from_hms_milli_opt(hour, minute, second, millis);
        let offset_ms = match self.offset {
            None => Some(0),
            Some((sign, h, m)) if h <= 23 && m <= 59 => {
                Some(i64::from(sign) * i64::from(h * 60 + m) * 60_000)
            }
            Some(_) => None,
        };
        let (Some(date), Some(time), Some(offset_ms)) = (date, time, offset_ms) else {
            return Err(TimestampError::OutOfRange);
        };
        let ms = date.and_time(time).and_utc().timestamp_millis() - offset_ms;
        Timestamp::from_millis(ms).ok_or(TimestampError::OutOfRange)
    }
}

fn calendar_text() -> impl Strategy<Value = CalendarText> {
    (
        (
            prop_oneof![1965u32..=9999, (20u32..=99).prop_map(|c| c * 100)],
            0u32..=13,
            prop_oneof![0u32..=32, 28u32..=31],
            0u32..=24,
            0u32..=60,
            0u32..=60,
        ),
        (
            any::<bool>(),
            any::<bool>(),
            proptest::option::of("[0-9]{1,9}"),
        ),
        proptest::option::of((any::<bool>(), 0u32..=24, 0u32..=60, 0u8..3)),
    )
        .prop_map(|(fields, (space, seconds, fraction), offset)| {
            let (year, month, day, hour, minute, second) = fields;
            let mut text = format!(
                "{year:04}-{month:02}-{day:02}{}{hour:02}:{minute:02}",
                if space { ' ' } else { 'T' }
            );
            // Without seconds there is no fraction either.
            let (second, fraction) = if seconds {
                text.push_str(&format!(":{second:02}"));
                if let Some(f) = &fraction {
                    text.push('.');
                    text.push_str(f);
                }
                (second, fraction)
            } else {
                (0, None)
            };
            let offset = offset.map(|(east, h, m, form)| {
                let sign = if east { '+' } else { '-' };
                // Z, +HH, +HHMM or +HH:MM.
                let (written, m) = match form {
                    _ if (h, m) == (0, 0) && east => ("Z".to_owned(), 0),
                    0 => (format!("{sign}{h:02}"), 0),
                    1 => (format!("{sign}{h:02}{m:02}"), m),
                    _ => (format!("{sign}{h:02}:{m:02}"), m),
                };
                text.push_str(&written);
                (if east { 1 } else { -1 }, h, m)
            });
            CalendarText {
                text,
                fields: [year, month, day, hour, minute, second],
                fraction,
                offset,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_text_is_a_timestamp_or_a_reason(s in "\\PC{0,40}") {
        if let Ok(t) = parse_timestamp(&s, Tz::UTC) {
            // Whatever was accepted is a storable instant that reads back the same.
            prop_assert_eq!(Timestamp::parse_iso(&t.to_iso()), Some(t));
        }
    }

    #[test]
    fn every_stored_instant_round_trips_through_each_written_form(ms in instant()) {
        let t = Timestamp::from_millis(ms).unwrap();
        let iso = t.to_iso();
        prop_assert_eq!(parse_timestamp(&iso, Tz::UTC), Ok(t));
        prop_assert_eq!(parse_timestamp(&iso.replace('T', " ").replace('Z', ""), Tz::UTC), Ok(t));
        prop_assert_eq!(parse_timestamp(&iso.replace('Z', "+00:00"), Tz::UTC), Ok(t));
        if (1_000_000_000_000..10_000_000_000_000).contains(&ms) {
            prop_assert_eq!(parse_timestamp(&ms.to_string(), Tz::UTC), Ok(t));
        }
    }

    #[test]
    fn any_bytes_are_read_without_panic_and_every_record_has_an_outcome(
        body in proptest::collection::vec(any::<u8>(), 0..2048)
    ) {
        let mut with_header = b"source,session_created_at\n".to_vec();
        with_header.extend_from_slice(&body);
        for input in [&body[..], &with_header[..]] {
            if let Ok(rows) = read_all(input) {
                for row in rows {
                    match row {
                        Row::Session(key) => prop_assert!((8..=15).contains(&key.source.as_str().len())),
                        Row::Rejected(r) => {
                            prop_assert!(!r.reason.is_empty());
                            prop_assert!(r.line_number >= 2);
                            prop_assert!(!r.raw_record.contains('\0'));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_well_formed_file_reads_back_exactly_whatever_its_dialect(
        sessions in proptest::collection::vec((10_000_000u64..999_999_999_999_999, instant()), 0..40),
        semicolon in any::<bool>(),
        crlf in any::<bool>(),
        quoted in any::<bool>(),
        bom in any::<bool>(),
    ) {
        let (d, eol) = (if semicolon { ';' } else { ',' }, if crlf { "\r\n" } else { "\n" });
        let q = |s: String| if quoted { format!("\"{s}\"") } else { s };
        let mut body = String::new();
        if bom {
            body.push('\u{feff}');
        }
        body.push_str(&format!("Source{d}session_created_at{eol}"));
        for (number, ms) in &sessions {
            let t = Timestamp::from_millis(*ms).unwrap();
            body.push_str(&format!("{}{d}{}{eol}", q(number.to_string()), q(t.to_iso())));
        }
        let rows = read_all(body.as_bytes()).unwrap();
        prop_assert_eq!(rows.len(), sessions.len());
        for (row, (number, ms)) in rows.iter().zip(&sessions) {
            match row {
                Row::Session(key) => {
                    prop_assert_eq!(key.source.as_str(), number.to_string());
                    prop_assert_eq!(key.created_at.as_millis(), *ms);
                }
                Row::Rejected(r) => prop_assert!(false, "rejected {:?}", r),
            }
        }
    }
}

proptest! {
    // Cheap cases, and the calendar's edges (29 February of a century) need many to come up.
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn timestamp_like_text_is_the_instant_it_names_or_out_of_range(t in calendar_text()) {
        prop_assert_eq!(parse_timestamp(&t.text, Tz::UTC), t.expected(), "{}", t.text);
    }
}
