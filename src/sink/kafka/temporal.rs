//! Dates, times and intervals in Postgres's text form (the walsender session is pinned to
//! `datestyle=ISO,YMD`, `intervalstyle=iso_8601`, `timezone=UTC`) turned into the numbers
//! Debezium's time encodings carry: days since 1970, microseconds of the day, microseconds since
//! 1970, microseconds of an interval.

/// What a date or timestamp text holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Point<T> {
    /// A value.
    Value(T),
    /// `infinity`.
    Infinity,
    /// `-infinity`.
    NegInfinity,
}

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Days since 1970-01-01 of a proleptic Gregorian date with an astronomical year
/// (Howard Hinnant's public-domain days-from-civil algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn digits(text: &[u8]) -> Option<i64> {
    if text.is_empty() || text.len() > 12 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(text.iter().fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0')))
}

/// `YYYY-MM-DD` (year of four or more digits) at the start; returns (days, rest).
fn parse_date_prefix(text: &[u8], bc: bool) -> Option<(i64, &[u8])> {
    let y = text.iter().take_while(|b| b.is_ascii_digit()).count();
    let md = text.get(y..y + 6)?;
    if y < 4 || md[0] != b'-' || md[3] != b'-' {
        return None;
    }
    let year = digits(&text[..y])?;
    let (m, d) = (digits(&md[1..3])? as u32, digits(&md[4..6])? as u32);
    // 1 BC is year 0.
    let year = if bc { 1 - year } else { year };
    Some((days_from_civil(year, m, d), &text[y + 6..]))
}

fn split_bc(text: &[u8]) -> (&[u8], bool) {
    match text.strip_suffix(b" BC") {
        Some(rest) => (rest, true),
        None => (text, false),
    }
}

/// Days since 1970 of a `date`.
pub(super) fn date_days(text: &[u8]) -> Option<Point<i64>> {
    match text {
        b"infinity" => return Some(Point::Infinity),
        b"-infinity" => return Some(Point::NegInfinity),
        _ => {}
    }
    let (text, bc) = split_bc(text);
    match parse_date_prefix(text, bc)? {
        (days, []) => Some(Point::Value(days)),
        _ => None,
    }
}

/// `HH:MM:SS[.ffffff]` at the start: (microseconds of the day, rest).
fn parse_time_prefix(text: &[u8]) -> Option<(i64, &[u8])> {
    let t = text.get(..8)?;
    if t[2] != b':' || t[5] != b':' {
        return None;
    }
    let secs = digits(&t[..2])? * 3600 + digits(&t[3..5])? * 60 + digits(&t[6..8])?;
    let mut micros = secs * 1_000_000;
    let mut rest = &text[8..];
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|b| b.is_ascii_digit()).count();
        if n == 0 || n > 6 {
            return None;
        }
        micros += digits(&frac[..n])? * 10i64.pow(6 - n as u32);
        rest = &frac[n..];
    }
    Some((micros, rest))
}

/// A UTC offset `+HH[:MM[:SS]]` (the whole text) in seconds east of UTC.
fn parse_offset(text: &[u8]) -> Option<i64> {
    let sign = match text.first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let mut secs = 0;
    for (i, part) in text[1..].split(|&b| b == b':').enumerate() {
        if part.len() != 2 || i > 2 {
            return None;
        }
        secs += digits(part)? * [3600, 60, 1][i];
    }
    Some(sign * secs)
}

/// Microseconds of the day of a `time`.
pub(super) fn time_micros(text: &[u8]) -> Option<i64> {
    match parse_time_prefix(text)? {
        (micros, []) => Some(micros),
        _ => None,
    }
}

/// A `timetz` in UTC, as `HH:MM:SS[.fraction]Z` (the fraction as Postgres printed it).
pub(super) fn timetz_utc(text: &[u8]) -> Option<String> {
    let (micros, offset) = parse_time_prefix(text)?;
    let utc = (micros - parse_offset(offset)? * 1_000_000).rem_euclid(MICROS_PER_DAY);
    let secs = utc / 1_000_000;
    let mut s = format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    let frac = utc % 1_000_000;
    if frac != 0 {
        let f = format!("{frac:06}");
        s.push('.');
        s.push_str(f.trim_end_matches('0'));
    }
    s.push('Z');
    Some(s)
}

/// Microseconds since 1970 of a `timestamp` (its wall-clock time taken as UTC) or of a
/// `timestamptz` (the session prints it in UTC, with the offset `+00`).
pub(super) fn timestamp_micros(text: &[u8]) -> Option<Point<i64>> {
    match text {
        b"infinity" => return Some(Point::Infinity),
        b"-infinity" => return Some(Point::NegInfinity),
        _ => {}
    }
    let (text, bc) = split_bc(text);
    let (days, rest) = parse_date_prefix(text, bc)?;
    let (micros, rest) = parse_time_prefix(rest.strip_prefix(b" ")?)?;
    let offset = if rest.is_empty() { 0 } else { parse_offset(rest)? };
    Some(Point::Value(days * MICROS_PER_DAY + micros - offset * 1_000_000))
}

/// The parts of an ISO 8601 interval as Postgres prints it (`P1Y2M3DT4H5M6.5S`, `P-1DT2H`, `PT0S`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct Interval {
    pub years: i64,
    pub months: i64,
    pub days: i64,
    pub hours: i64,
    pub minutes: i64,
    /// Seconds with their fraction, in microseconds.
    pub micros: i64,
}

impl Interval {
    /// Parse Postgres's `iso_8601` interval output.
    pub(super) fn parse(text: &[u8]) -> Option<Interval> {
        let mut rest = text.strip_prefix(b"P")?;
        let mut iv = Interval::default();
        let mut in_time = false;
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix(b"T") {
                in_time = true;
                rest = r;
                continue;
            }
            let neg = rest.first() == Some(&b'-');
            let body = if neg { &rest[1..] } else { rest };
            let n = body.iter().take_while(|b| b.is_ascii_digit() || **b == b'.').count();
            let (num, unit) = (&body[..n], *body.get(n)?);
            rest = &body[n + 1..];
            let sign = if neg { -1 } else { 1 };
            let whole = |num: &[u8]| digits(num).map(|v| v * sign);
            match (in_time, unit) {
                (false, b'Y') => iv.years = whole(num)?,
                (false, b'M') => iv.months = whole(num)?,
                (false, b'D') => iv.days = whole(num)?,
                (true, b'H') => iv.hours = whole(num)?,
                (true, b'M') => iv.minutes = whole(num)?,
                (true, b'S') => {
                    let (int, frac) = match num.iter().position(|&b| b == b'.') {
                        Some(dot) => (&num[..dot], &num[dot + 1..]),
                        None => (num, &b""[..]),
                    };
                    if frac.len() > 6 {
                        return None;
                    }
                    let f = if frac.is_empty() { 0 } else { digits(frac)? * 10i64.pow(6 - frac.len() as u32) };
                    iv.micros = sign * (digits(int)? * 1_000_000 + f);
                }
                _ => return None,
            }
        }
        Some(iv)
    }

    /// Debezium's `MicroDuration`: microseconds, a month taken as 365.25 / 12 days.
    pub(super) fn approx_micros(&self) -> i64 {
        const DAYS_PER_MONTH_AVG: f64 = 365.25 / 12.0;
        let days = (self.years * 12 + self.months) as f64 * DAYS_PER_MONTH_AVG + self.days as f64;
        let seconds = ((days * 24.0 + self.hours as f64) * 60.0 + self.minutes as f64) * 60.0;
        (seconds * 1e6) as i64 + self.micros
    }

    /// Debezium's `io.debezium.time.Interval` string: every part written,
    /// `P<y>Y<m>M<d>DT<h>H<min>M<s>S`.
    pub(super) fn debezium_string(&self) -> String {
        let secs = self.micros / 1_000_000;
        let frac = (self.micros % 1_000_000).abs();
        let mut s = if frac == 0 {
            secs.to_string()
        } else {
            let sign = if self.micros < 0 && secs == 0 { "-" } else { "" };
            format!("{sign}{secs}.{}", format!("{frac:06}").trim_end_matches('0'))
        };
        s.push('S');
        format!("P{}Y{}M{}DT{}H{}M{s}", self.years, self.months, self.days, self.hours, self.minutes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_days_since_1970() {
        assert_eq!(date_days(b"1970-01-01"), Some(Point::Value(0)));
        assert_eq!(date_days(b"2024-02-29"), Some(Point::Value(19_782)));
        assert_eq!(date_days(b"1969-12-31"), Some(Point::Value(-1)));
        // 1 BC is year 0: 0001-01-01 BC is 366 days (a leap year) before 0001-01-01.
        assert_eq!(date_days(b"0001-01-01 BC"), Some(Point::Value(-719_162 - 366)));
        assert_eq!(date_days(b"infinity"), Some(Point::Infinity));
        assert_eq!(date_days(b"2024-02-29x"), None);
    }

    #[test]
    fn times_and_timestamps_are_micros() {
        assert_eq!(time_micros(b"13:14:15.123456"), Some(47_655_123_456));
        assert_eq!(time_micros(b"24:00:00"), Some(MICROS_PER_DAY));
        assert_eq!(time_micros(b"00:00:00.5"), Some(500_000));
        assert_eq!(timestamp_micros(b"2024-02-29 13:14:15.123456"), Some(Point::Value(1_709_212_455_123_456)));
        assert_eq!(timestamp_micros(b"2024-02-29 11:14:15.5+00"), Some(Point::Value(1_709_205_255_500_000)));
        assert_eq!(timestamp_micros(b"1970-01-01 01:00:00+01"), Some(Point::Value(0)));
        assert_eq!(timestamp_micros(b"-infinity"), Some(Point::NegInfinity));
    }

    #[test]
    fn timetz_goes_to_utc() {
        assert_eq!(timetz_utc(b"12:34:56+05:30").as_deref(), Some("07:04:56Z"));
        assert_eq!(timetz_utc(b"12:00:00-08").as_deref(), Some("20:00:00Z"));
        assert_eq!(timetz_utc(b"01:02:03.25+05").as_deref(), Some("20:02:03.25Z"));
        assert_eq!(timetz_utc(b"01:02:03+00").as_deref(), Some("01:02:03Z"));
    }

    #[test]
    fn intervals() {
        let iv = Interval::parse(b"P1Y2M3DT4H5M6S").expect("parses");
        assert_eq!(iv, Interval { years: 1, months: 2, days: 3, hours: 4, minutes: 5, micros: 6_000_000 });
        assert_eq!(iv.approx_micros(), 37_091_106_000_000);
        assert_eq!(iv.debezium_string(), "P1Y2M3DT4H5M6S");
        let iv = Interval::parse(b"P-1DT2H0.5S").expect("parses");
        assert_eq!(iv.approx_micros(), -MICROS_PER_DAY + 7_200_500_000);
        assert_eq!(iv.debezium_string(), "P0Y0M-1DT2H0M0.5S");
        assert_eq!(Interval::parse(b"PT0S").map(|i| i.approx_micros()), Some(0));
        assert_eq!(Interval::parse(b"PT-0.25S").map(|i| (i.micros, i.debezium_string())), Some((-250_000, "P0Y0M0DT0H0M-0.25S".into())));
        assert_eq!(Interval::parse(b"1 day"), None);
    }
}
