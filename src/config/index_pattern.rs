//! Index names of flat rules, fixed (`orders`) or time-based (`telemetry-{commit_date:%Y.%m.%d}`,
//! `telemetry-{column:ts:%Y.%m.%d}`): one placeholder naming where the time comes from and how
//! it is written. Parsed and checked once at load; rendering is pure (route/ turns a change into
//! the [`DateParts`] it needs).

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

use super::IndexName;

/// Where a time-based index name takes its time from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TimeSource {
    /// `{commit_date:FMT}`: the commit timestamp of the row's transaction (UTC). An update or
    /// delete commits later than the insert, so only append-only rules may use it.
    CommitDate,
    /// `{column:NAME:FMT}`: a `timestamptz`, `timestamp` or `date` column of the row (UTC for
    /// `timestamptz`, as written for the others).
    Column(String),
}

/// The calendar fields a time-based index name may use, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DateParts {
    /// Year (1 to 9999).
    pub year: i32,
    /// Month, 1 to 12.
    pub month: u8,
    /// Day of the month, 1 to 31.
    pub day: u8,
    /// Hour, 0 to 23.
    pub hour: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Piece {
    Year,
    Month,
    Day,
    Hour,
    Char(char),
}

/// A flat rule's index: a fixed name, or a name with one time placeholder. Compared and
/// ordered by its text.
#[derive(Clone, Deserialize)]
#[serde(try_from = "String")]
pub struct IndexPattern {
    text: String,
    /// Text before the placeholder (all of it when there is none), the placeholder, the text after.
    prefix: String,
    time: Option<(TimeSource, Vec<Piece>)>,
    suffix: String,
}

const FORMAT_HELP: &str = "use %Y (year), %m (month), %d (day), %H (hour) and the characters . - _ between them";

impl IndexPattern {
    /// Check `text`; the error says what to write instead.
    pub fn parse(text: &str) -> Result<Self, String> {
        let Some(open) = text.find('{') else {
            if text.contains('}') {
                return Err(format!("{text:?}: a `}}` without `{{`"));
            }
            IndexName::parse(text)?;
            return Ok(Self { text: text.to_string(), prefix: text.to_string(), time: None, suffix: String::new() });
        };
        let close = text[open..].find('}').map(|i| open + i).ok_or_else(|| format!("{text:?}: `{{` without `}}`"))?;
        let (prefix, inner, suffix) = (&text[..open], &text[open + 1..close], &text[close + 1..]);
        if suffix.contains(['{', '}']) {
            return Err(format!("{text:?}: an index name takes one {{...}} placeholder"));
        }
        let (source, format) = if let Some(format) = inner.strip_prefix("commit_date:") {
            (TimeSource::CommitDate, format)
        } else if let Some(rest) = inner.strip_prefix("column:") {
            let (column, format) =
                rest.split_once(':').ok_or_else(|| format!("{text:?}: write {{column:NAME:FORMAT}}, e.g. {{column:ts:%Y.%m.%d}}"))?;
            if column.is_empty() {
                return Err(format!("{text:?}: the column name is empty"));
            }
            (TimeSource::Column(column.to_string()), format)
        } else {
            return Err(format!("{text:?}: unknown placeholder {{{inner}}}; write {{commit_date:%Y.%m.%d}} or {{column:NAME:%Y.%m.%d}}"));
        };
        let mut pieces = Vec::new();
        let mut chars = format.chars();
        while let Some(c) = chars.next() {
            pieces.push(match c {
                '%' => match chars.next() {
                    Some('Y') => Piece::Year,
                    Some('m') => Piece::Month,
                    Some('d') => Piece::Day,
                    Some('H') => Piece::Hour,
                    other => {
                        let spec = other.map(|c| format!("%{c}")).unwrap_or_else(|| "%".into());
                        return Err(format!("{text:?}: {spec} is not supported; {FORMAT_HELP}"));
                    }
                },
                '.' | '-' | '_' => Piece::Char(c),
                c => return Err(format!("{text:?}: {c:?} in the date format; {FORMAT_HELP}")),
            });
        }
        if !pieces.iter().any(|p| !matches!(p, Piece::Char(_))) {
            return Err(format!("{text:?}: the date format is empty; {FORMAT_HELP}"));
        }
        let pattern = Self { text: text.to_string(), prefix: prefix.to_string(), time: Some((source, pieces)), suffix: suffix.to_string() };
        // The literal parts must make valid names whatever the date.
        let sample = pattern.render(DateParts { year: 2024, month: 1, day: 2, hour: 3 });
        IndexName::parse(&sample).map_err(|e| format!("{text:?} makes names like {sample:?}, and {e}"))?;
        Ok(pattern)
    }

    /// The text as configured.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The name, when it has no placeholder.
    pub fn fixed(&self) -> Option<&str> {
        self.time.is_none().then_some(self.text.as_str())
    }

    /// Where the time comes from, when the name has a placeholder.
    pub fn time_source(&self) -> Option<&TimeSource> {
        self.time.as_ref().map(|(s, _)| s)
    }

    /// The index name for `date` (the fixed name when there is no placeholder).
    pub fn render(&self, date: DateParts) -> String {
        let mut out = String::with_capacity(self.text.len() + 8);
        out.push_str(&self.prefix);
        for piece in self.time.iter().flat_map(|(_, p)| p) {
            match piece {
                Piece::Year => out.push_str(&format!("{:04}", date.year)),
                Piece::Month => out.push_str(&format!("{:02}", date.month)),
                Piece::Day => out.push_str(&format!("{:02}", date.day)),
                Piece::Hour => out.push_str(&format!("{:02}", date.hour)),
                Piece::Char(c) => out.push(*c),
            }
        }
        out.push_str(&self.suffix);
        out
    }

    /// Every index the pattern makes, as an Elasticsearch wildcard expression (`telemetry-*`);
    /// the fixed name when there is no placeholder.
    pub fn wildcard(&self) -> String {
        match self.time {
            Some(_) => format!("{}*{}", self.prefix, self.suffix),
            None => self.text.clone(),
        }
    }

    /// Whether `name` is a name this pattern makes.
    pub fn matches(&self, name: &str) -> bool {
        let Some((_, pieces)) = &self.time else { return name == self.text };
        let Some(mut rest) = name.strip_prefix(self.prefix.as_str()).and_then(|r| r.strip_suffix(self.suffix.as_str())) else {
            return false;
        };
        for piece in pieces {
            let digits = match piece {
                Piece::Year => 4,
                Piece::Month | Piece::Day | Piece::Hour => 2,
                Piece::Char(c) => match rest.strip_prefix(*c) {
                    Some(r) => {
                        rest = r;
                        continue;
                    }
                    None => return false,
                },
            };
            if rest.len() < digits || !rest.as_bytes()[..digits].iter().all(u8::is_ascii_digit) {
                return false;
            }
            rest = &rest[digits..];
        }
        rest.is_empty()
    }
}

impl From<IndexName> for IndexPattern {
    fn from(name: IndexName) -> Self {
        let text = name.as_str().to_string();
        Self { prefix: text.clone(), text, time: None, suffix: String::new() }
    }
}

impl TryFrom<String> for IndexPattern {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s)
    }
}

impl FromStr for IndexPattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s)
    }
}

impl PartialEq for IndexPattern {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for IndexPattern {}

impl PartialOrd for IndexPattern {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for IndexPattern {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}

impl std::hash::Hash for IndexPattern {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.text.hash(state);
    }
}

impl fmt::Display for IndexPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for IndexPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: DateParts = DateParts { year: 2026, month: 3, day: 7, hour: 9 };

    #[test]
    fn fixed_names_stay_names() {
        let p = IndexPattern::parse("orders").expect("fixed");
        assert_eq!((p.fixed(), p.render(DAY), p.wildcard()), (Some("orders"), "orders".to_string(), "orders".to_string()));
        assert!(p.matches("orders") && !p.matches("orders-1"));
        assert!(IndexPattern::parse("Orders").is_err());
    }

    #[test]
    fn time_placeholders_render_match_and_wildcard() {
        let p = IndexPattern::parse("telemetry-{commit_date:%Y.%m.%d}").expect("commit date");
        assert_eq!(p.time_source(), Some(&TimeSource::CommitDate));
        assert_eq!(p.render(DAY), "telemetry-2026.03.07");
        assert_eq!(p.wildcard(), "telemetry-*");
        assert!(p.matches("telemetry-2026.03.07"));
        assert!(!p.matches("telemetry-2026.3.07") && !p.matches("telemetry-x") && !p.matches("other-2026.03.07"));
        let p = IndexPattern::parse("t-{column:read_at:%Y%m%d-%H}-v1").expect("column");
        assert_eq!(p.time_source(), Some(&TimeSource::Column("read_at".into())));
        assert_eq!(p.render(DAY), "t-20260307-09-v1");
        assert!(p.matches("t-20260307-09-v1") && !p.matches("t-20260307-09"));
        assert_eq!(p.fixed(), None);
    }

    #[test]
    fn bad_patterns_say_what_to_write() {
        for (bad, says) in [
            ("t-{commit_date:%Y.%b}", "%b is not supported"),
            ("t-{commit_date:}", "date format is empty"),
            ("t-{commit_date:%Y/%m}", "'/' in the date format"),
            ("t-{now:%Y}", "unknown placeholder"),
            ("t-{column:%Y}", "{column:NAME:FORMAT}"),
            ("t-{column::%Y}", "column name is empty"),
            ("t-{commit_date:%Y", "without `}`"),
            ("t-{commit_date:%Y}-{commit_date:%m}", "one {...} placeholder"),
            ("T-{commit_date:%Y}", "not a valid index name"),
            ("_t{commit_date:%Y}", "not a valid index name"),
            ("t}", "without `{`"),
        ] {
            let e = IndexPattern::parse(bad).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
