//! Post times. A time is an `i64` count of nanoseconds since the Unix epoch
//! (good until 2262). On disk it is UTC RFC 3339 with nanoseconds; on screen it
//! is local time in C `ctime` form without the newline.

use chrono::{DateTime, Local, SecondsFormat, TimeZone, Utc};
use std::sync::atomic::{AtomicI64, Ordering};

/// Nanoseconds since the epoch.
pub type Nanos = i64;

/// The wall clock in nanoseconds.
pub fn now() -> Nanos {
    Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
}

/// A clock that never returns the same value twice and never goes back, so
/// that `(author, time)` identifies a post and file order is time order.
#[derive(Debug, Default)]
pub struct MonotonicClock {
    last: AtomicI64,
}

impl MonotonicClock {
    /// A time strictly after every earlier one from this clock and after
    /// `floor` (e.g. the last time already on disk).
    pub fn next_after(&self, floor: Nanos) -> Nanos {
        let mut t = now().max(floor.saturating_add(1));
        loop {
            let last = self.last.load(Ordering::SeqCst);
            if t <= last {
                t = last + 1;
            }
            match self
                .last
                .compare_exchange(last, t, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return t,
                Err(_) => continue,
            }
        }
    }
}

/// `2026-11-23T18:10:07.123456789Z`
pub fn to_rfc3339(t: Nanos) -> String {
    Utc.timestamp_nanos(t)
        .to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// Parses what [`to_rfc3339`] writes (any RFC 3339 time is accepted).
pub fn from_rfc3339(s: &str) -> Option<Nanos> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .and_then(|d| d.with_timezone(&Utc).timestamp_nanos_opt())
}

/// `Mon Nov 23 18:10:07 2026`, in local time, as C's `ctime` prints it.
pub fn to_ctime(t: Nanos) -> String {
    Local
        .timestamp_nanos(t)
        .format("%a %b %e %H:%M:%S %Y")
        .to_string()
}

pub fn to_timestamp(t: Nanos) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.div_euclid(1_000_000_000),
        nanos: t.rem_euclid(1_000_000_000) as i32,
    }
}

pub fn from_timestamp(ts: &prost_types::Timestamp) -> Nanos {
    ts.seconds
        .saturating_mul(1_000_000_000)
        .saturating_add(i64::from(ts.nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let t = 1_795_457_407_123_456_789;
        let s = to_rfc3339(t);
        assert!(s.ends_with(".123456789Z"), "{s}");
        assert_eq!(from_rfc3339(&s), Some(t));
        assert_eq!(from_timestamp(&to_timestamp(t)), t);
        assert_eq!(to_ctime(t).len(), 24);
    }

    #[test]
    fn monotonic() {
        let c = MonotonicClock::default();
        let a = c.next_after(0);
        let b = c.next_after(0);
        assert!(b > a);
        assert!(c.next_after(i64::MAX / 2) > i64::MAX / 2);
    }
}
