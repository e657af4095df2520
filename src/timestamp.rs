//! Instants as session-sync stores them: UTC, millisecond precision.
//!
//! The vendor does not document `session_created_at`'s format (`vendor-api.md`), so
//! [`parse_timestamp`] accepts every form its other payloads use: RFC 3339 / ISO 8601 with or
//! without offset and fraction (`T` or a space between date and time), and epoch seconds or
//! milliseconds. A value without an offset is read in the configured zone.
//!
//! The parser is hand-written rather than built on `chrono`'s format strings because it runs
//! once per CSV record (millions per poll); calendar rules are still checked in full. Instants
//! are kept to the millisecond: finer digits are truncated, in both backends alike, so the
//! same snapshot yields the same keys in SQLite and PostgreSQL.

use std::fmt;

use chrono::{DateTime, LocalResult, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;

/// Milliseconds since 1970-01-01T00:00:00Z, within years 1970 to 9999 (so that the fixed-width
/// text form below stays fixed-width and sorts in time order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

const MS_PER_DAY: i64 = 86_400_000;
/// 10000-01-01T00:00:00Z.
const MAX_EXCLUSIVE_MS: i64 = 253_402_300_800_000;

/// Why a `session_created_at` value was rejected; the text goes to `rejected_rows.reason`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimestampError {
    #[error("empty timestamp")]
    Empty,
    #[error("unrecognised timestamp format")]
    Format,
    #[error("date or time out of range")]
    OutOfRange,
    #[error("an epoch value must have 10 digits (seconds) or 13 (milliseconds)")]
    EpochDigits,
    #[error("local time does not exist in {0} (skipped by a clock change)")]
    NonexistentLocalTime(&'static str),
}

impl Timestamp {
    pub fn from_millis(ms: i64) -> Option<Timestamp> {
        (0..MAX_EXCLUSIVE_MS).contains(&ms).then_some(Timestamp(ms))
    }

    pub fn now() -> Timestamp {
        Timestamp(Utc::now().timestamp_millis())
    }

    pub fn as_millis(self) -> i64 {
        self.0
    }

    pub fn to_chrono(self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.0).expect("Timestamp is always in chrono's range")
    }

    pub fn from_chrono(t: DateTime<Utc>) -> Option<Timestamp> {
        Timestamp::from_millis(t.timestamp_millis())
    }

    /// This instant plus `hours`, saturating at the end of the representable range.
    pub fn plus_hours(self, hours: u32) -> Timestamp {
        Timestamp((self.0 + i64::from(hours) * 3_600_000).min(MAX_EXCLUSIVE_MS - 1))
    }

    /// Writes `YYYY-MM-DDTHH:MM:SS.sssZ` (24 bytes): the stored text form in SQLite.
    pub fn write_iso(self, out: &mut [u8; 24]) {
        let days = self.0.div_euclid(MS_PER_DAY);
        let ms_of_day = self.0.rem_euclid(MS_PER_DAY);
        let (y, m, d) = civil_from_days(days);
        let (hh, rest) = (ms_of_day / 3_600_000, ms_of_day % 3_600_000);
        let (mi, rest) = (rest / 60_000, rest % 60_000);
        let (ss, ms) = (rest / 1000, rest % 1000);
        fn put(out: &mut [u8], mut v: i64) {
            for slot in out.iter_mut().rev() {
                *slot = b'0' + (v % 10) as u8;
                v /= 10;
            }
        }
        put(&mut out[0..4], y);
        out[4] = b'-';
        put(&mut out[5..7], m);
        out[7] = b'-';
        put(&mut out[8..10], d);
        out[10] = b'T';
        put(&mut out[11..13], hh);
        out[13] = b':';
        put(&mut out[14..16], mi);
        out[16] = b':';
        put(&mut out[17..19], ss);
        out[19] = b'.';
        put(&mut out[20..23], ms);
        out[23] = b'Z';
    }

    pub fn to_iso(self) -> String {
        let mut buf = [0u8; 24];
        self.write_iso(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Reads the stored text form back (SQLite's columns).
    pub fn parse_iso(s: &str) -> Option<Timestamp> {
        parse_timestamp(s, Tz::UTC).ok()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_iso())
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// A cursor over ASCII bytes for the hand-written grammar below.
struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn digits(&mut self, n: usize) -> Option<i64> {
        let part = self.b.get(self.i..self.i + n)?;
        let mut v = 0i64;
        for &c in part {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + i64::from(c - b'0');
        }
        self.i += n;
        Some(v)
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.b.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }
    fn done(&self) -> bool {
        self.i == self.b.len()
    }
}

/// Parses one `session_created_at` value; `tz` applies when the value has no offset.
pub fn parse_timestamp(raw: &str, tz: Tz) -> Result<Timestamp, TimestampError> {
    let s = raw.trim();
    if s.is_empty() {
        return Err(TimestampError::Empty);
    }
    let b = s.as_bytes();
    if b.iter().all(u8::is_ascii_digit) {
        return parse_epoch(s);
    }
    parse_calendar(b, tz)
}

/// Epoch seconds are 10 digits and epoch milliseconds 13 for every instant from 2001 to
/// 2286; any other length is ambiguous (`20171218170931` is a compact date, not an epoch)
/// and is rejected rather than guessed.
fn parse_epoch(s: &str) -> Result<Timestamp, TimestampError> {
    let scale = match s.len() {
        10 => 1000,
        13 => 1,
        _ => return Err(TimestampError::EpochDigits),
    };
    let v: i64 = s.parse().map_err(|_| TimestampError::OutOfRange)?;
    Timestamp::from_millis(v * scale).ok_or(TimestampError::OutOfRange)
}

fn parse_calendar(b: &[u8], tz: Tz) -> Result<Timestamp, TimestampError> {
    use TimestampError::{Format, OutOfRange};
    let mut c = Cursor { b, i: 0 };
    let year = c.digits(4).ok_or(Format)?;
    if !c.eat(b'-') {
        return Err(Format);
    }
    let month = c.digits(2).ok_or(Format)?;
    if !c.eat(b'-') {
        return Err(Format);
    }
    let day = c.digits(2).ok_or(Format)?;
    if !(c.eat(b'T') || c.eat(b't') || c.eat(b' ')) {
        return Err(Format);
    }
    let hour = c.digits(2).ok_or(Format)?;
    if !c.eat(b':') {
        return Err(Format);
    }
    let minute = c.digits(2).ok_or(Format)?;
    let mut second = 0;
    let mut millis = 0;
    if c.eat(b':') {
        second = c.digits(2).ok_or(Format)?;
        if c.eat(b'.') || c.eat(b',') {
            let start = c.i;
            let mut scale = 100;
            while let Some(d) = c.peek().filter(u8::is_ascii_digit) {
                millis += i64::from(d - b'0') * scale;
                scale /= 10;
                c.i += 1;
            }
            let n = c.i - start;
            if n == 0 || n > 9 {
                return Err(Format);
            }
        }
    }
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return Err(OutOfRange);
    }
    let days = days_from_civil(year, month, day);
    let local_ms = days * MS_PER_DAY + ((hour * 60 + minute) * 60 + second) * 1000 + millis;

    // Offset: Z, +HH, +HHMM or +HH:MM; a single space may precede it.
    if c.done() {
        return resolve_local(year, month, day, local_ms - days * MS_PER_DAY, local_ms, tz);
    }
    if c.peek() == Some(b' ') {
        c.i += 1;
    }
    let offset_ms = if c.eat(b'Z') || c.eat(b'z') {
        0
    } else {
        let sign = if c.eat(b'+') {
            1
        } else if c.eat(b'-') {
            -1
        } else {
            return Err(Format);
        };
        let oh = c.digits(2).ok_or(Format)?;
        let om = if c.done() {
            0
        } else {
            c.eat(b':');
            c.digits(2).ok_or(Format)?
        };
        if oh > 23 || om > 59 {
            return Err(OutOfRange);
        }
        sign * (oh * 60 + om) * 60_000
    };
    if !c.done() {
        return Err(Format);
    }
    Timestamp::from_millis(local_ms - offset_ms).ok_or(OutOfRange)
}

/// A wall-clock time in `tz`: the earlier instant when a clock change makes it ambiguous,
/// an error when a clock change skipped it.
fn resolve_local(
    year: i64,
    month: i64,
    day: i64,
    ms_of_day: i64,
    local_ms: i64,
    tz: Tz,
) -> Result<Timestamp, TimestampError> {
    if tz == Tz::UTC {
        return Timestamp::from_millis(local_ms).ok_or(TimestampError::OutOfRange);
    }
    let date = NaiveDate::from_ymd_opt(year as i32, month as u32, day as u32)
        .ok_or(TimestampError::OutOfRange)?;
    let naive = date
        .and_hms_milli_opt(
            (ms_of_day / 3_600_000) as u32,
            (ms_of_day / 60_000 % 60) as u32,
            (ms_of_day / 1000 % 60) as u32,
            (ms_of_day % 1000) as u32,
        )
        .ok_or(TimestampError::OutOfRange)?;
    let instant = match tz.from_local_datetime(&naive) {
        LocalResult::Single(t) => t,
        LocalResult::Ambiguous(earlier, _) => earlier,
        LocalResult::None => return Err(TimestampError::NonexistentLocalTime(tz.name())),
    };
    Timestamp::from_chrono(instant.with_timezone(&Utc)).ok_or(TimestampError::OutOfRange)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> Result<String, TimestampError> {
        parse_timestamp(s, Tz::UTC).map(|t| t.to_iso())
    }

    #[test]
    fn accepts_every_documented_form() {
        let want = "2017-12-18T17:09:31.473Z";
        for form in [
            "2017-12-18T17:09:31.473Z",
            "2017-12-18T17:09:31.473+00:00",
            "2017-12-18T14:09:31.473-03:00",
            "2017-12-18T14:09:31.473-0300",
            "2017-12-18 17:09:31.473",
            "2017-12-18T17:09:31.473",
            "2017-12-18t17:09:31.473z",
            "2017-12-18 17:09:31.473 +00",
            "1513616971473",
            "  2017-12-18T17:09:31.473456789Z ",
        ] {
            assert_eq!(utc(form).as_deref(), Ok(want), "{form}");
        }
        assert_eq!(utc("1513616971").unwrap(), "2017-12-18T17:09:31.000Z");
        assert_eq!(utc("2017-12-18 17:09").unwrap(), "2017-12-18T17:09:00.000Z");
        assert_eq!(
            utc("2017-12-18T17:09:31Z").unwrap(),
            "2017-12-18T17:09:31.000Z"
        );
    }

    #[test]
    fn rejects_what_is_not_a_valid_instant() {
        for bad in [
            "",
            "yesterday",
            "2017-13-01T00:00:00Z",
            "2017-02-29T00:00:00Z",
            "2017-12-18T24:00:00Z",
            "2017-12-18T17:09:31.Z",
            "2017-12-18T17:09:31+25:00",
            "2017-12-18T17:09:31Zjunk",
            "2017-12-18",
            "99999999999999999999999",
            "20171218170931",
            "151361697",
            "-1513616971",
            "1513616971.5x",
        ] {
            assert!(utc(bad).is_err(), "{bad} was accepted as {:?}", utc(bad));
        }
        assert_eq!(
            utc("2016-02-29T00:00:00Z").unwrap(),
            "2016-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn values_without_offset_are_read_in_the_configured_zone() {
        let sp: Tz = "America/Sao_Paulo".parse().unwrap();
        let t = parse_timestamp("2023-06-01 09:00:00", sp).unwrap();
        assert_eq!(t.to_iso(), "2023-06-01T12:00:00.000Z");
        // An explicit offset wins over the zone.
        let t = parse_timestamp("2023-06-01T09:00:00Z", sp).unwrap();
        assert_eq!(t.to_iso(), "2023-06-01T09:00:00.000Z");
        let ny: Tz = "America/New_York".parse().unwrap();
        assert_eq!(
            parse_timestamp("2023-03-12 02:30:00", ny),
            Err(TimestampError::NonexistentLocalTime("America/New_York"))
        );
        // Ambiguous (the fall-back hour): the earlier instant, EDT.
        let t = parse_timestamp("2023-11-05 01:30:00", ny).unwrap();
        assert_eq!(t.to_iso(), "2023-11-05T05:30:00.000Z");
    }

    #[test]
    fn text_form_round_trips_and_sorts_in_time_order() {
        let mut prev = String::new();
        for ms in [
            0,
            1,
            999,
            86_399_999,
            951_782_400_000,
            1_513_616_971_473,
            MAX_EXCLUSIVE_MS - 1,
        ] {
            let t = Timestamp::from_millis(ms).unwrap();
            let s = t.to_iso();
            assert_eq!(s.len(), 24);
            assert_eq!(Timestamp::parse_iso(&s), Some(t), "{s}");
            assert_eq!(t.to_chrono().timestamp_millis(), ms);
            assert!(s > prev, "{s} <= {prev}");
            prev = s;
        }
        assert_eq!(Timestamp::from_millis(MAX_EXCLUSIVE_MS), None);
        assert_eq!(Timestamp::from_millis(-1), None);
    }

    #[test]
    fn expiry_saturates_at_the_end_of_the_range() {
        let late = Timestamp::parse_iso("9999-12-31T23:00:00.000Z").unwrap();
        assert_eq!(late.plus_hours(24).to_iso(), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn civil_conversion_agrees_with_chrono_over_centuries() {
        let mut day = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
        let end = NaiveDate::from_ymd_opt(2400, 12, 31).unwrap();
        let mut n = 0;
        while day <= end {
            use chrono::Datelike;
            let (y, m, d) = civil_from_days(n);
            assert_eq!(
                (y, m, d),
                (day.year() as i64, day.month() as i64, day.day() as i64)
            );
            assert_eq!(days_from_civil(y, m, d), n);
            day = day.succ_opt().unwrap();
            n += 1;
        }
    }
}
