//! Post times. A time is an `i64` count of nanoseconds since the Unix epoch
//! (good until 2262). On disk it is UTC RFC 3339 with nanoseconds; on screen it
//! is local time in C `ctime` form without the newline.
//!
//! # Times from outside
//! A time that another process sent (a mirrored operation, a synchronizer's
//! push) or that a file holds is believed only within bounds of our own clock
//! ([`check_peer_time`]): not before [`MIN_TIME`] and not more than
//! [`MAX_SKEW`] ahead of now. One author's posts are stored in time order and
//! "already stored" means "not after the author's latest", so a single post
//! dated near the end of the range would hide every later post of its author;
//! a follow dated there would outlast every unfollow. [`MonotonicClock`]
//! never follows a floor beyond the bound either, so no file can drag the
//! server's clock forward or make it wrap.

use chrono::{DateTime, Local, SecondsFormat, TimeZone, Utc};
use std::sync::atomic::{AtomicI64, Ordering};

/// Nanoseconds since the epoch.
pub type Nanos = i64;

/// The wall clock in nanoseconds.
pub fn now() -> Nanos {
    Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
}

/// How far ahead of our clock a time from outside may be. The times peers
/// send come from their masters' clocks, which NTP keeps within milliseconds
/// of ours; five minutes tolerates a machine whose clock is badly off while
/// bounding what a bad time can do: a post dated ahead hides its author's
/// later posts only until our clock passes it, so at most five minutes of
/// them (and a push with a time beyond the bound is refused and retried by
/// its sender, so a legitimate but skewed peer is delayed, never lost).
pub const MAX_SKEW: Nanos = 5 * 60 * 1_000_000_000;

/// The earliest time believed from outside: 2000-01-01T00:00:00Z. History
/// may be old, so there is no tight bound in the past, but nothing this
/// system stored predates it; a time before it is a clock that was never
/// set, or an attempt to sit at the start of the range (0, `i64::MIN`).
pub const MIN_TIME: Nanos = 946_684_800 * 1_000_000_000;

/// Whether `t`, a time from outside, lies within bounds of `now` (see the
/// module doc): `Ok`, or why not, for a person.
pub fn check_peer_time(t: Nanos, now: Nanos) -> Result<(), String> {
    if t < MIN_TIME {
        return Err(format!(
            "time {t} ns is before {} (the earliest believed)",
            to_rfc3339(MIN_TIME)
        ));
    }
    if t > now.saturating_add(MAX_SKEW) {
        return Err(format!(
            "time {t} ns is more than {} s ahead of our clock",
            MAX_SKEW / 1_000_000_000
        ));
    }
    Ok(())
}

/// A clock that never returns the same value twice and never goes back, so
/// that `(author, time)` identifies a post and file order is time order.
#[derive(Debug, Default)]
pub struct MonotonicClock {
    last: AtomicI64,
}

impl MonotonicClock {
    /// A time strictly after every earlier one from this clock and after
    /// `floor` (the last time already on disk for what is written), or why
    /// there is none. A floor beyond [`MAX_SKEW`] ahead of now (this clock
    /// set back, or a damaged or forged record) is neither followed (that
    /// would stamp times no peer accepts and move every later time far
    /// ahead, up to a wrap) nor ignored (a time at or before the floor
    /// would make the new record look already stored, or sort before the
    /// one it follows: an acknowledged write lost): the write is refused
    /// until the clock passes the floor.
    pub fn next_after(&self, floor: Nanos) -> Result<Nanos, String> {
        self.next_after_at(floor, now())
    }

    /// [`MonotonicClock::next_after`] with the wall clock given.
    fn next_after_at(&self, floor: Nanos, now: Nanos) -> Result<Nanos, String> {
        // Exactly what a peer may have stored (`check_peer_time`) is
        // followed; anything beyond is not.
        if floor > now.saturating_add(MAX_SKEW) {
            return Err(format!(
                "the latest record is dated {}, more than {} s ahead of this server's clock \
                 (a clock set back or a damaged file); writes wait until the clock passes it",
                to_rfc3339(floor),
                MAX_SKEW / 1_000_000_000
            ));
        }
        let mut t = now.max(floor.saturating_add(1));
        loop {
            let last = self.last.load(Ordering::SeqCst);
            if t <= last {
                // `last` is never beyond a ceiling of ours, so this stays
                // far from the end of the range; saturating all the same.
                t = last.saturating_add(1);
            }
            match self
                .last
                .compare_exchange(last, t, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return Ok(t),
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
        let a = c.next_after(0).unwrap();
        let b = c.next_after(0).unwrap();
        assert!(b > a);
        // A floor a little ahead (within the skew bound) is followed.
        let ahead = now() + MAX_SKEW / 2;
        assert!(c.next_after(ahead).unwrap() > ahead);
        assert!(c.next_after(0).unwrap() > ahead);
    }

    #[test]
    fn a_floor_beyond_the_bound_refuses_the_write_and_nothing_wraps() {
        let now = 1_795_457_407_000_000_000;
        let c = MonotonicClock::default();
        let before = c.next_after_at(0, now).unwrap();
        for floor in [
            i64::MAX,
            i64::MAX - 1,
            now + MAX_SKEW + 1,
            now + 10 * MAX_SKEW,
        ] {
            // Never a time at or before the floor (the record would look
            // stored already, or sort before the one it follows).
            let e = c.next_after_at(floor, now).unwrap_err();
            assert!(e.contains("ahead of this server's clock"), "{e}");
        }
        // The refusals moved nothing.
        let after = c.next_after_at(0, now).unwrap();
        assert!(after > before && after < now + 1_000);
        // At the bound itself it is still followed (a peer may store that).
        let edge = MonotonicClock::default();
        assert_eq!(
            edge.next_after_at(now + MAX_SKEW, now),
            Ok(now + MAX_SKEW + 1)
        );
        // Even a clock that was pushed to the end of the range does not wrap.
        let stuck = MonotonicClock {
            last: AtomicI64::new(i64::MAX),
        };
        assert_eq!(stuck.next_after_at(0, now), Ok(i64::MAX));
        // A wall clock at the end of the range does not overflow either.
        assert_eq!(c.next_after_at(i64::MAX, i64::MAX), Ok(i64::MAX));
    }

    #[test]
    fn peer_times_are_bounded_by_our_clock() {
        let now = 1_795_457_407_000_000_000;
        assert!(check_peer_time(now, now).is_ok());
        assert!(check_peer_time(now + MAX_SKEW, now).is_ok());
        assert!(check_peer_time(now + MAX_SKEW + 1, now).is_err());
        assert!(check_peer_time(MIN_TIME, now).is_ok());
        for bad in [MIN_TIME - 1, 0, -1, i64::MIN, i64::MAX] {
            assert!(check_peer_time(bad, now).is_err(), "{bad}");
        }
        // Old history is fine.
        assert!(check_peer_time(now - 20 * 365 * 86_400 * 1_000_000_000, now).is_ok());
        assert!(check_peer_time(i64::MAX, i64::MAX).is_ok(), "saturating");
    }
}
