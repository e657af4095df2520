//! Property tests of the two parsers that face the vendor's bytes: the CSV reader and the
//! timestamp parser. Whatever the input: no panic, no hang, and every record is either
//! accepted with the right value or rejected with a reason.

use chrono_tz::Tz;
use proptest::prelude::*;
use session_sync::snapshot::{Row, SnapshotReader};
use session_sync::timestamp::{parse_timestamp, Timestamp};

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
    fn timestamp_like_text_is_a_timestamp_or_a_reason(
        s in "[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\\.[0-9]{1,9})?)?(Z|[+-][0-9]{2}(:?[0-9]{2})?)?"
    ) {
        let _ = parse_timestamp(&s, Tz::UTC);
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
