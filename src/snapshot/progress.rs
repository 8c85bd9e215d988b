//! Snapshot progress a person can read: per table and overall, percent, rows/s and time left.
//! On a terminal (text logs, standard error a TTY) one line rewritten in place at most every
//! second; otherwise a `snapshot progress` log line with fields every few seconds.

use std::io::Write as _;
use std::time::{Duration, Instant};

/// How progress is shown (`snapshot progress` log records when not on a terminal).
pub(super) use crate::telemetry::ProgressMode as Mode;

/// Log records every this often (a terminal line every second).
const LOG_EVERY: Duration = Duration::from_secs(2);

/// Rows done out of an estimated total, and the rate of this run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Rate {
    /// Rows done, including those loaded before a resume.
    pub done: u64,
    /// Estimated total; raised to `done` when the estimate was low.
    pub total: u64,
    /// Rows read by this run (the rate ignores rows resumed from an earlier run).
    pub run_rows: u64,
    /// Time this run has spent.
    pub elapsed: Duration,
}

impl Rate {
    /// Percent done, 0..=100 (100 for an empty table).
    pub(super) fn percent(&self) -> f64 {
        let total = self.total.max(self.done);
        if total == 0 {
            return 100.0;
        }
        (self.done as f64 * 100.0 / total as f64).min(100.0)
    }

    /// Rows per second of this run; `None` before anything was read.
    pub(super) fn rows_per_s(&self) -> Option<f64> {
        let secs = self.elapsed.as_secs_f64();
        (self.run_rows > 0 && secs > 0.0).then(|| self.run_rows as f64 / secs)
    }

    /// Time left at this run's rate; zero when done, `None` while the rate is unknown.
    pub(super) fn eta(&self) -> Option<Duration> {
        let left = self.total.saturating_sub(self.done);
        if left == 0 {
            return Some(Duration::ZERO);
        }
        let rate = self.rows_per_s()?;
        Some(Duration::from_secs_f64((left as f64 / rate).min(1e9)))
    }
}

/// `1h02m`, `3m05s`, `12s`; `?` when unknown.
pub(super) fn fmt_duration(d: Option<Duration>) -> String {
    let Some(d) = d else { return "?".into() };
    let s = d.as_secs_f64().ceil() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// `950`, `12.3k`, `2.0M`, `1.5G`.
pub(super) fn fmt_count(n: f64) -> String {
    match n {
        n if n < 1e3 => format!("{n:.0}"),
        n if n < 1e6 => format!("{:.1}k", n / 1e3),
        n if n < 1e9 => format!("{:.1}M", n / 1e6),
        n => format!("{:.1}G", n / 1e9),
    }
}

/// The terminal line: the table, then the whole snapshot.
pub(super) fn terminal_line(table: &str, t: &Rate, all: &Rate) -> String {
    format!(
        "snapshot {table} {:.1}% ({}/{} rows, {} rows/s, {} left) | all tables {:.1}% ({} left)",
        t.percent(),
        fmt_count(t.done as f64),
        fmt_count(t.total.max(t.done) as f64),
        fmt_count(t.rows_per_s().unwrap_or(0.0)),
        fmt_duration(t.eta()),
        all.percent(),
        fmt_duration(all.eta()),
    )
}

/// Counts of one table or of the whole load.
#[derive(Debug, Clone, Copy)]
struct Count {
    done: u64,
    total: u64,
    resumed: u64,
    started: Instant,
}

impl Count {
    fn new(total: u64, resumed: u64, now: Instant) -> Self {
        Self { done: resumed, total, resumed, started: now }
    }

    fn rate(&self, now: Instant) -> Rate {
        Rate {
            done: self.done,
            total: self.total.max(self.done),
            run_rows: self.done - self.resumed,
            elapsed: now.saturating_duration_since(self.started),
        }
    }
}

/// Progress of one load.
pub(super) struct Progress {
    mode: Mode,
    all: Count,
    table: Option<(String, Count)>,
    last_shown: Instant,
    /// A terminal line is on screen (end it with a newline before leaving).
    drawn: bool,
}

impl Progress {
    /// A load of `total` estimated rows, `resumed` of them loaded by an earlier run.
    pub(super) fn new(mode: Mode, total: u64, resumed: u64) -> Self {
        let now = Instant::now();
        Self { mode, all: Count::new(total, resumed, now), table: None, last_shown: now, drawn: false }
    }

    /// A table starts: `total` estimated rows, `resumed` already loaded.
    pub(super) fn start_table(&mut self, name: &str, total: u64, resumed: u64) {
        self.table = Some((name.to_string(), Count::new(total, resumed, Instant::now())));
    }

    /// `rows` more were read; shown when due, and always at the table's end.
    pub(super) fn advance(&mut self, rows: u64, table_done: bool) {
        self.all.done += rows;
        let Some((name, count)) = self.table.as_mut() else { return };
        count.done += rows;
        if table_done {
            // The estimate is replaced by the truth, for the total as well.
            self.all.total = self.all.total.saturating_sub(count.total) + count.done;
            count.total = count.done;
        }
        let now = Instant::now();
        if !table_done && now.duration_since(self.last_shown) < self.mode.every(LOG_EVERY) {
            return;
        }
        self.last_shown = now;
        let (t, all) = (count.rate(now), self.all.rate(now));
        match self.mode {
            Mode::Terminal => {
                // Erase, draw, return to column 0: a log line written next overwrites it, and
                // the next draw erases what is left. A table's last line stays.
                let end = if table_done { "\n" } else { "\r" };
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\x1b[2K{}{end}", terminal_line(name, &t, &all));
                let _ = err.flush();
                self.drawn = !table_done;
            }
            Mode::Log => {
                let eta_s = |r: &Rate| r.eta().map_or(-1, |d| d.as_secs_f64().ceil() as i64);
                tracing::info!(
                    table = %name,
                    rows = t.done,
                    estimated_rows = t.total,
                    percent = (t.percent() * 10.0).round() / 10.0,
                    rows_per_s = t.rows_per_s().unwrap_or(0.0).round() as u64,
                    eta_s = eta_s(&t),
                    all_rows = all.done,
                    all_estimated_rows = all.total,
                    all_percent = (all.percent() * 10.0).round() / 10.0,
                    all_eta_s = eta_s(&all),
                    "snapshot progress"
                );
            }
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if self.drawn {
            let _ = writeln!(std::io::stderr());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(done: u64, total: u64, run_rows: u64, secs: u64) -> Rate {
        Rate { done, total, run_rows, elapsed: Duration::from_secs(secs) }
    }

    #[test]
    fn percent_and_time_left_from_this_runs_rate() {
        let r = rate(500_000, 2_000_000, 500_000, 5);
        assert_eq!(r.percent(), 25.0);
        assert_eq!(r.rows_per_s(), Some(100_000.0));
        assert_eq!(r.eta(), Some(Duration::from_secs(15)));
        // Resumed at 400k: only the 100k of this run count for the rate.
        let r = rate(500_000, 2_000_000, 100_000, 5);
        assert_eq!(r.eta(), Some(Duration::from_secs(75)));
    }

    #[test]
    fn unknown_rate_empty_table_and_low_estimate() {
        assert_eq!(rate(0, 10, 0, 0).eta(), None);
        assert_eq!(rate(0, 0, 0, 0).percent(), 100.0);
        assert_eq!(rate(0, 0, 0, 0).eta(), Some(Duration::ZERO));
        let low = rate(1_200, 1_000, 1_200, 1);
        assert_eq!(low.percent(), 100.0);
        assert_eq!(low.eta(), Some(Duration::ZERO));
    }

    #[test]
    fn durations_and_counts_read_short() {
        assert_eq!(fmt_duration(None), "?");
        assert_eq!(fmt_duration(Some(Duration::from_millis(11_200))), "12s");
        assert_eq!(fmt_duration(Some(Duration::from_secs(185))), "3m05s");
        assert_eq!(fmt_duration(Some(Duration::from_secs(3_720))), "1h02m");
        assert_eq!(fmt_count(950.0), "950");
        assert_eq!(fmt_count(12_345.0), "12.3k");
        assert_eq!(fmt_count(2_000_000.0), "2.0M");
        let line = terminal_line("public.big", &rate(500_000, 2_000_000, 500_000, 5), &rate(500_000, 4_000_000, 500_000, 5));
        assert_eq!(line, "snapshot public.big 25.0% (500.0k/2.0M rows, 100.0k rows/s, 15s left) | all tables 12.5% (35s left)");
    }

    #[test]
    fn a_finished_table_replaces_its_estimate_in_the_total() {
        let mut p = Progress::new(Mode::Log, 3_000, 0);
        p.start_table("public.a", 1_000, 0);
        p.advance(1_200, true);
        assert_eq!((p.all.done, p.all.total), (1_200, 3_200));
    }
}
