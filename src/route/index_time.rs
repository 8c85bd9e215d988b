//! The time a time-based index name is made from: a commit timestamp, or the text Postgres
//! sends for a `timestamptz`, `timestamp` or `date` column, turned into UTC calendar fields
//! without a date library (walcast pins `timezone=UTC` and ISO dates, so offsets are the only
//! variation to undo).

use crate::config::DateParts;
use crate::decode::{civil_from_days, UNIX_TO_PG_DAYS};

const DATE_OID: u32 = 1082;
const TIMESTAMP_OID: u32 = 1114;
const TIMESTAMPTZ_OID: u32 = 1184;

/// Whether a column of this type can name an index.
pub(super) fn is_time_type(type_oid: u32) -> bool {
    matches!(type_oid, DATE_OID | TIMESTAMP_OID | TIMESTAMPTZ_OID)
}

/// The UTC date of a commit timestamp (microseconds since 2000-01-01 UTC).
pub(super) fn from_pg_micros(micros: i64) -> DateParts {
    let secs = micros.div_euclid(1_000_000) + UNIX_TO_PG_DAYS * 86_400;
    from_unix_secs(secs)
}

/// The UTC date of a value as Postgres writes it with ISO `datestyle`:
/// `2026-03-07`, `2026-03-07 09:15:00.25`, `2026-03-07 09:15:00+00`, `2026-03-07 11:15:00+02:00`.
pub(super) fn from_text(text: &str) -> Result<DateParts, String> {
    let bad = || format!("{text:?} is not a date or timestamp walcast can name an index with (infinity and BC dates cannot)");
    let b = text.as_bytes();
    let num = |from: usize, len: usize| -> Result<i64, String> {
        let s = b.get(from..from + len).ok_or_else(bad)?;
        if !s.iter().all(u8::is_ascii_digit) {
            return Err(bad());
        }
        Ok(s.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(bad());
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return Err(bad());
    }
    let mut secs = days_from_civil(year, month, day) * 86_400;
    if b.len() == 10 {
        return Ok(from_unix_secs(secs));
    }
    if b.len() < 19 || b[10] != b' ' || b[13] != b':' || b[16] != b':' {
        return Err(bad());
    }
    secs += num(11, 2)? * 3600 + num(14, 2)? * 60 + num(17, 2)?;
    let mut at = 19;
    if b.get(at) == Some(&b'.') {
        at += 1;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
    }
    if at < b.len() {
        // An offset east of UTC means the UTC time is earlier.
        let sign = match b[at] {
            b'+' => 1,
            b'-' => -1,
            _ => return Err(bad()),
        };
        let mut offset = num(at + 1, 2)? * 3600;
        at += 3;
        for unit in [60, 1] {
            if b.get(at) == Some(&b':') {
                offset += num(at + 1, 2)? * unit;
                at += 3;
            }
        }
        if at != b.len() {
            return Err(bad());
        }
        secs -= sign * offset;
    }
    Ok(from_unix_secs(secs))
}

fn from_unix_secs(secs: i64) -> DateParts {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    DateParts { year: year as i32, month: month as u8, day: day as u8, hour: (rem / 3600) as u8 }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(y: i32, m: u8, d: u8, h: u8) -> DateParts {
        DateParts { year: y, month: m, day: d, hour: h }
    }

    #[test]
    fn commit_timestamps() {
        assert_eq!(from_pg_micros(0), parts(2000, 1, 1, 0));
        assert_eq!(from_pg_micros(-1), parts(1999, 12, 31, 23));
        // 2024-02-29 13:00:00 UTC is 762_526_800 s after 2000-01-01.
        assert_eq!(from_pg_micros(762_526_800_000_000), parts(2024, 2, 29, 13));
    }

    #[test]
    fn postgres_text_values() {
        assert_eq!(from_text("2026-03-07"), Ok(parts(2026, 3, 7, 0)));
        assert_eq!(from_text("2026-03-07 09:15:00"), Ok(parts(2026, 3, 7, 9)));
        assert_eq!(from_text("2026-03-07 23:59:59.999999+00"), Ok(parts(2026, 3, 7, 23)));
        assert_eq!(from_text("2026-03-08 01:30:00+02"), Ok(parts(2026, 3, 7, 23)), "east of UTC: the day before");
        assert_eq!(from_text("2026-12-31 22:00:00-05:30"), Ok(parts(2027, 1, 1, 3)));
        assert_eq!(from_text("2024-02-29 00:00:00.5+05:45:10"), Ok(parts(2024, 2, 28, 18)));
        for bad in ["infinity", "-infinity", "2026-03-07 BC", "2026-13-01", "2026-03-07T09:15:00", "2026-03-07 09:15:00Z", "2026-3-7"] {
            assert!(from_text(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn civil_round_trip() {
        for days in [-1_000_000, -1, 0, 59, 365, 10_957, 20_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, i64::from(m), i64::from(d)), days);
        }
    }
}
