//! Time scales: UTC instants and Modified Julian Dates in TAI.
//!
//! Astronomical times in apflow (observation start, midpoint, DiaSource times) are
//! MJD in the TAI time scale, as in Rubin's APDB and alert schema. Event timestamps
//! that only measure latency (shutter close, end of readout, acknowledgement) are UTC
//! instants ([`chrono::DateTime<Utc>`]).
//!
//! # Leap seconds
//!
//! `TAI − UTC` comes from [`LEAP_SECONDS`], the IERS table from 1972-01-01 (10 s) to
//! 2017-01-01 (37 s), the last leap second announced. Instants after the last entry
//! use its offset: IERS Bulletin C has announced none since, and when one is, one line
//! is appended to the table. Before 1972 (rubber seconds) conversion is refused.
//!
//! UTC instants are held as POSIX time, which has no label for the leap second
//! itself (`23:59:60`). Converting a TAI date that falls *inside* a leap second to
//! UTC therefore yields `23:59:59.x` of that day (the POSIX convention of repeating
//! the second); converting UTC to TAI is exact for every representable instant.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

/// MJD of the Unix epoch, 1970-01-01T00:00:00 UTC.
pub const MJD_UNIX_EPOCH: f64 = 40_587.0;
const SECONDS_PER_DAY: f64 = 86_400.0;

/// `(year, month, TAI − UTC in seconds)` from the first day of that month, UTC.
pub const LEAP_SECONDS: &[(i32, u32, i32)] = &[
    (1972, 1, 10),
    (1972, 7, 11),
    (1973, 1, 12),
    (1974, 1, 13),
    (1975, 1, 14),
    (1976, 1, 15),
    (1977, 1, 16),
    (1978, 1, 17),
    (1979, 1, 18),
    (1980, 1, 19),
    (1981, 7, 20),
    (1982, 7, 21),
    (1983, 7, 22),
    (1985, 7, 23),
    (1988, 1, 24),
    (1990, 1, 25),
    (1991, 1, 26),
    (1992, 7, 27),
    (1993, 7, 28),
    (1994, 7, 29),
    (1996, 1, 30),
    (1997, 7, 31),
    (1999, 1, 32),
    (2006, 1, 33),
    (2009, 1, 34),
    (2012, 7, 35),
    (2015, 7, 36),
    (2017, 1, 37),
];

/// Errors converting times.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum TimeError {
    /// Before 1972-01-01 UTC had no fixed offset from TAI.
    #[error("{0} is before 1972-01-01, where UTC has no fixed offset from TAI")]
    BeforeLeapSecondTable(String),
    /// Not a finite number or out of chrono's range.
    #[error("MJD {0} is not a representable date")]
    OutOfRange(f64),
}

fn unix_seconds_of(year: i32, month: u32) -> i64 {
    NaiveDate::from_ymd_opt(year, month, 1)
        .expect("table dates are valid")
        .and_hms_opt(0, 0, 0)
        .expect("midnight")
        .and_utc()
        .timestamp()
}

/// `TAI − UTC` in seconds at a UTC instant given as Unix seconds.
pub fn tai_minus_utc(unix_seconds: i64) -> Result<i32, TimeError> {
    let mut offset = None;
    for &(y, m, s) in LEAP_SECONDS {
        if unix_seconds >= unix_seconds_of(y, m) {
            offset = Some(s);
        } else {
            break;
        }
    }
    offset.ok_or_else(|| TimeError::BeforeLeapSecondTable(unix_seconds.to_string()))
}

/// A Modified Julian Date in the TAI time scale, in days.
#[derive(Clone, Copy, Debug, Default, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MjdTai(pub f64);

impl MjdTai {
    /// The TAI MJD of a UTC instant (exact up to f64 resolution, ~1 µs today).
    pub fn from_utc(t: DateTime<Utc>) -> Result<Self, TimeError> {
        let secs = t.timestamp();
        let offset =
            tai_minus_utc(secs).map_err(|_| TimeError::BeforeLeapSecondTable(t.to_rfc3339()))?;
        let unix = secs as f64 + f64::from(t.timestamp_subsec_nanos()) * 1e-9;
        Ok(Self(
            MJD_UNIX_EPOCH + (unix + f64::from(offset)) / SECONDS_PER_DAY,
        ))
    }

    /// The UTC instant of this TAI date. See the module docs for dates inside a leap second.
    pub fn to_utc(self) -> Result<DateTime<Utc>, TimeError> {
        if !self.0.is_finite() {
            return Err(TimeError::OutOfRange(self.0));
        }
        let tai_unix = (self.0 - MJD_UNIX_EPOCH) * SECONDS_PER_DAY;
        // The offset is looked up at the UTC instant, which is up to 37 s earlier;
        // one refinement step settles it except inside a leap second.
        let guess = tai_unix.floor() as i64;
        let mut offset = tai_minus_utc(guess - 37).or_else(|_| tai_minus_utc(guess))?;
        let utc_guess = guess - i64::from(offset);
        offset = tai_minus_utc(utc_guess)?;
        // An f64 MJD resolves ~0.6 µs today: round to whole microseconds.
        let micros = ((tai_unix - f64::from(offset)) * 1e6).round() as i64;
        DateTime::from_timestamp_micros(micros).ok_or(TimeError::OutOfRange(self.0))
    }

    /// Days between two dates.
    pub fn days_since(self, earlier: MjdTai) -> f64 {
        self.0 - earlier.0
    }

    /// This date plus `seconds` of TAI.
    pub fn plus_seconds(self, seconds: f64) -> Self {
        Self(self.0 + seconds / SECONDS_PER_DAY)
    }
}

/// Rubin's `day_obs` (observing night, `YYYYMMDD`) of a UTC instant: the date in the
/// UTC−12h time zone, so one night never straddles two values.
pub fn day_obs(t: DateTime<Utc>) -> u32 {
    use chrono::Datelike;
    let shifted = t - chrono::Duration::hours(12);
    shifted.year() as u32 * 10_000 + shifted.month() * 100 + shifted.day()
}

/// Seconds this thread has run on a CPU, from the scheduler's own account
/// (`/proc/thread-self/schedstat`, first field, nanoseconds; Linux). `None` where the
/// file is missing. On a shared machine this is the figure to quote for "one core":
/// wall time also counts the time other processes held the core.
pub fn thread_cpu_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = s.split_whitespace().next()?.parse().ok()?;
    Some(ns as f64 * 1e-9)
}

/// Seconds this process has run on a CPU, user and system, every thread counted
/// (those that have exited too, such as a dropped Kafka client's): `utime + stime`
/// of `/proc/self/stat`, in the kernel's `USER_HZ` ticks (100 per second on Linux). Each of
/// the two is truncated to whole ticks, so the sum may trail the true figure by up to
/// 20 ms. `None` off Linux.
pub fn process_cpu_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from
    // the last ')'. Fields 14 and 15 are then the 12th and 13th after it.
    let mut rest = s.get(s.rfind(')')? + 1..)?.split_whitespace().skip(11);
    let utime: u64 = rest.next()?.parse().ok()?;
    let stime: u64 = rest.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_clocks_count_work_and_the_process_at_least_this_thread() {
        let (Some(t0), Some(p0)) = (thread_cpu_seconds(), process_cpu_seconds()) else {
            return; // not Linux
        };
        // Spin until this thread has run 50 ms on a CPU (at most 5 s of wall time on a
        // very busy machine). The thread's clock never moves backwards.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        let mut t1 = t0;
        while t1 - t0 < 0.05 && start.elapsed() < std::time::Duration::from_secs(5) {
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            t1 = thread_cpu_seconds().unwrap();
        }
        let p1 = process_cpu_seconds().unwrap();
        assert!(t1 - t0 >= 0.05, "{t0} → {t1} in {:?}", start.elapsed());
        assert!(t1 - t0 <= start.elapsed().as_secs_f64() + 0.01);
        // The process figure is user + system time, each truncated to whole 10 ms
        // ticks: it may trail the thread's nanosecond clock by up to two ticks.
        assert!(p1 + 0.02 + 1e-9 >= t1, "process {p0} → {p1}, thread {t1}");
        assert!(p1 - p0 >= 0.05 - 0.02 - 1e-9, "process {p0} → {p1}");
    }
    use chrono::TimeZone;

    #[test]
    fn known_offsets() {
        assert_eq!(tai_minus_utc(unix_seconds_of(2017, 1)).unwrap(), 37);
        assert_eq!(tai_minus_utc(unix_seconds_of(2017, 1) - 1).unwrap(), 36);
        assert_eq!(tai_minus_utc(unix_seconds_of(1972, 1)).unwrap(), 10);
        assert!(tai_minus_utc(unix_seconds_of(1971, 12)).is_err());
    }

    #[test]
    fn mjd_of_a_known_date() {
        // 2020-01-01T00:00:00 UTC is MJD 58849 UTC, 37 s later in TAI.
        let t = Utc.with_ymd_and_hms(2020, 1, 1, 0, 0, 0).unwrap();
        let mjd = MjdTai::from_utc(t).unwrap();
        assert!(
            (mjd.0 - (58_849.0 + 37.0 / 86_400.0)).abs() < 1e-9,
            "{mjd:?}"
        );
        assert_eq!(mjd.to_utc().unwrap(), t);
    }

    #[test]
    fn round_trip_across_the_2016_leap_second() {
        for s in [-3i64, -1, 0, 1, 2, 100] {
            let t = Utc
                .timestamp_opt(unix_seconds_of(2017, 1) + s, 250_000_000)
                .unwrap();
            let back = MjdTai::from_utc(t).unwrap().to_utc().unwrap();
            assert!(
                (back - t).num_microseconds().unwrap().abs() < 5,
                "{t} -> {back}"
            );
        }
    }

    #[test]
    fn tai_inside_a_leap_second_maps_to_the_repeated_second() {
        // 2016-12-31T23:59:60.5 UTC = TAI 2017-01-01T00:00:36.5 (offset 36 before).
        let leap = unix_seconds_of(2017, 1);
        let tai = MjdTai(MJD_UNIX_EPOCH + (leap as f64 + 36.5) / 86_400.0);
        let utc = tai.to_utc().unwrap();
        assert_eq!(utc.timestamp(), leap - 1);
    }

    #[test]
    fn day_obs_is_utc_minus_12h() {
        let evening = Utc.with_ymd_and_hms(2026, 11, 23, 5, 0, 0).unwrap();
        assert_eq!(day_obs(evening), 20261122);
        let noon = Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap();
        assert_eq!(day_obs(noon), 20261123);
    }
}
