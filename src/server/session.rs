//! Sessions: pure rules, time as a value.
//!
//! A session is held either by a token or by a connection
//! ([`Holder`]).
//!
//! *Token sessions* (this project's client). A client logs in with a random
//! token and refreshes it by logging in again (or by any request); a session
//! not refreshed for a lease (two heartbeat periods) has expired. A killed
//! client's session simply runs out; a client that exits cleanly logs out,
//! and the ended session is kept, marked, until its lease runs out, so that a
//! refresh still in flight cannot revive it. Only the session's own token
//! logs it out. A token is at most [`MAX_TOKEN_BYTES`]: a server holds one
//! per user.
//!
//! *Connection sessions* (course clients, SPEC §6). A login without a token
//! that arrived on a known connection is bound to that connection: it needs
//! no refresh, its requests are accepted only on that connection, and it
//! ends when the connection is gone ([`Sessions::closed`]; the edge calls it
//! when the connection's `closed` token fires, see [`super::conn`]). A login
//! without a token on no known connection (not served through
//! [`super::conn::incoming`]) is a token session with the empty token.
//!
//! Either way, a login for a user whose live session has another holder is
//! refused (`ALREADY_EXISTS`): SPEC's duplicate-login rule, the same for
//! both kinds and for a mix of them.

use super::conn::ConnId;
use crate::error::Error;
use crate::model::UserId;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Longest session token: this project's client sends 16 hex digits; a
/// course client none.
pub const MAX_TOKEN_BYTES: usize = 128;

/// What holds a session: a client's token, or the connection a token-less
/// client logged in on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    Token(String),
    Conn(ConnId),
}

impl Holder {
    /// The holder a request with `token`, on connection `conn`, speaks for.
    pub fn of(token: &str, conn: Option<ConnId>) -> Result<Holder, Error> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Error::Invalid(format!(
                "a session token is at most {MAX_TOKEN_BYTES} bytes"
            )));
        }
        Ok(match conn {
            Some(c) if token.is_empty() => Holder::Conn(c),
            _ => Holder::Token(token.to_string()),
        })
    }
}

struct Session {
    holder: Holder,
    /// When a token session runs out; a connection session lives as long as
    /// its connection.
    expires: Option<Instant>,
    /// Logged out: a late refresh with this token must not revive it.
    ended: bool,
}

impl Session {
    fn alive(&self, now: Instant) -> bool {
        self.expires.is_none_or(|t| t > now)
    }
}

/// Every user's session on this server.
pub struct Sessions {
    by_user: HashMap<UserId, Session>,
    /// The users whose sessions each connection holds.
    by_conn: HashMap<ConnId, HashSet<UserId>>,
    /// The connections someone watches for their end ([`Sessions::login`]'s
    /// answer), until [`Sessions::closed`]: one watcher per connection,
    /// however often it logs in and out.
    watched: HashSet<ConnId>,
    lease: Duration,
}

impl Sessions {
    pub fn new(lease: Duration) -> Sessions {
        Sessions {
            by_user: HashMap::new(),
            by_conn: HashMap::new(),
            watched: HashSet::new(),
            lease,
        }
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Whether `user` may log in as `holder` now; changes nothing, so that
    /// a login can be refused before it writes anything.
    pub fn may_login(&self, user: UserId, holder: &Holder, now: Instant) -> Result<(), Error> {
        if let Some(s) = self.by_user.get(&user)
            && s.alive(now)
        {
            if s.ended && s.holder == *holder {
                return Err(Error::Unauthenticated("this session was logged out".into()));
            }
            if !s.ended && s.holder != *holder {
                return Err(Error::AlreadyExists(format!(
                    "user {user} is already logged in"
                )));
            }
        }
        Ok(())
    }

    /// Logs `user` in as `holder` (or refreshes that session). Returns
    /// whether the holder is a connection that held no session before: the
    /// edge must then watch it and call [`Sessions::closed`] when it goes.
    pub fn login(&mut self, user: UserId, holder: Holder, now: Instant) -> Result<bool, Error> {
        self.may_login(user, &holder, now)?;
        let expires = match holder {
            Holder::Token(_) => Some(now + self.lease),
            Holder::Conn(_) => None,
        };
        let mut watch = false;
        if let Holder::Conn(c) = holder {
            self.by_conn.entry(c).or_default().insert(user);
            watch = self.watched.insert(c);
        }
        let old = self.by_user.insert(
            user,
            Session {
                holder: holder.clone(),
                expires,
                ended: false,
            },
        );
        if let Some(Session {
            holder: Holder::Conn(c),
            ..
        }) = old
            && Holder::Conn(c) != holder
        {
            self.unindex(c, user);
        }
        Ok(watch)
    }

    fn unindex(&mut self, c: ConnId, user: UserId) {
        if let Some(users) = self.by_conn.get_mut(&c) {
            users.remove(&user);
            if users.is_empty() {
                self.by_conn.remove(&c);
            }
        }
    }

    /// Checks that a request comes from `user`'s live session, and refreshes
    /// it.
    pub fn check(&mut self, user: UserId, holder: &Holder, now: Instant) -> Result<(), Error> {
        let lease = self.lease;
        match self.by_user.get_mut(&user) {
            Some(s) if s.alive(now) && !s.ended && s.holder == *holder => {
                if let Some(t) = &mut s.expires {
                    *t = now + lease;
                }
                Ok(())
            }
            _ => Err(Error::Unauthenticated(format!(
                "user {user} is not logged in"
            ))),
        }
    }

    /// Ends `user`'s session, if `holder` holds it (again, if it ended
    /// already); any other holder is refused and changes nothing. A
    /// connection session is simply gone: only its own connection could
    /// revive it.
    pub fn logout(&mut self, user: UserId, holder: &Holder, now: Instant) -> Result<(), Error> {
        match self.by_user.get_mut(&user) {
            Some(s) if s.alive(now) && s.holder == *holder => {
                if let Holder::Conn(c) = s.holder {
                    self.by_user.remove(&user);
                    self.unindex(c, user);
                } else {
                    s.ended = true;
                }
                Ok(())
            }
            _ => Err(Error::Unauthenticated(format!(
                "user {user} has no session with this token"
            ))),
        }
    }

    /// Connection `c` is gone: the sessions it held end, and their users may
    /// log in again at once.
    pub fn closed(&mut self, c: ConnId) {
        self.watched.remove(&c);
        for user in self.by_conn.remove(&c).unwrap_or_default() {
            if self
                .by_user
                .get(&user)
                .is_some_and(|s| s.holder == Holder::Conn(c))
            {
                self.by_user.remove(&user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_millis(800);

    fn u(id: u64) -> UserId {
        UserId::new(id).unwrap()
    }

    fn tok(t: &str) -> Holder {
        Holder::Token(t.to_string())
    }

    #[test]
    fn a_live_session_is_refreshed_by_requests() {
        let t = Instant::now();
        let mut s = Sessions::new(LEASE);
        s.login(u(1), tok("a"), t).unwrap();
        s.check(u(1), &tok("a"), t + LEASE / 2).unwrap();
        // Refreshed at LEASE/2: still alive at LEASE.
        s.check(u(1), &tok("a"), t + LEASE).unwrap();
        assert!(s.check(u(1), &tok("a"), t + 3 * LEASE).is_err(), "expired");
        assert!(matches!(
            s.check(u(1), &tok("b"), t),
            Err(Error::Unauthenticated(_))
        ));
        assert!(s.check(u(2), &tok("a"), t).is_err());
    }

    #[test]
    fn a_second_client_is_refused_until_the_first_session_runs_out() {
        let t = Instant::now();
        let mut s = Sessions::new(LEASE);
        s.login(u(1), tok("a"), t).unwrap();
        assert!(matches!(
            s.login(u(1), tok("b"), t + LEASE / 2),
            Err(Error::AlreadyExists(_))
        ));
        // The same client logging in again is a refresh.
        s.login(u(1), tok("a"), t + LEASE / 2).unwrap();
        // The first client was killed: its session runs out.
        s.login(u(1), tok("b"), t + 2 * LEASE).unwrap();
        assert!(s.check(u(1), &tok("a"), t + 2 * LEASE).is_err());
    }

    #[test]
    fn a_logged_out_session_is_not_revived_by_a_late_refresh() {
        let t = Instant::now();
        let mut s = Sessions::new(LEASE);
        s.login(u(1), tok("a"), t).unwrap();
        assert!(matches!(
            s.logout(u(1), &tok("other"), t),
            Err(Error::Unauthenticated(_))
        ));
        assert!(s.logout(u(2), &tok("a"), t).is_err(), "no session at all");
        s.check(u(1), &tok("a"), t).unwrap();
        s.logout(u(1), &tok("a"), t).unwrap();
        s.logout(u(1), &tok("a"), t).unwrap();
        assert!(matches!(
            s.login(u(1), tok("a"), t + LEASE / 4),
            Err(Error::Unauthenticated(_))
        ));
        assert!(s.check(u(1), &tok("a"), t).is_err());
        // Another client may log in at once.
        s.login(u(1), tok("b"), t + LEASE / 4).unwrap();
    }

    #[test]
    fn a_wrong_logout_changes_nothing_and_tokens_are_bounded() {
        let t = Instant::now();
        let mut s = Sessions::new(LEASE);
        s.login(u(1), tok("a"), t).unwrap();
        assert!(s.logout(u(1), &tok("b"), t).is_err());
        // The session is as it was: alive, its token still refreshes it.
        s.check(u(1), &tok("a"), t).unwrap();
        s.login(u(1), tok("a"), t).unwrap();
        assert!(s.login(u(1), tok("b"), t).is_err());
        // An expired session cannot be logged out any more.
        assert!(s.logout(u(1), &tok("a"), t + 3 * LEASE).is_err());

        let long = "t".repeat(MAX_TOKEN_BYTES + 1);
        assert!(matches!(Holder::of(&long, None), Err(Error::Invalid(_))));
        assert!(
            matches!(Holder::of(&long, Some(ConnId(1))), Err(Error::Invalid(_))),
            "a connection does not excuse a long token"
        );
        let longest = Holder::of(&"t".repeat(MAX_TOKEN_BYTES), None).unwrap();
        s.login(u(2), longest, t).unwrap();
        s.may_login(u(3), &Holder::of("", None).unwrap(), t)
            .unwrap();
    }

    #[test]
    fn an_empty_token_on_a_known_connection_is_held_by_the_connection() {
        assert_eq!(
            Holder::of("", Some(ConnId(7))).unwrap(),
            Holder::Conn(ConnId(7))
        );
        assert_eq!(Holder::of("", None).unwrap(), tok(""));
        assert_eq!(Holder::of("a", Some(ConnId(7))).unwrap(), tok("a"));
    }

    #[test]
    fn a_connection_session_needs_no_refresh_and_ends_with_its_connection() {
        let t = Instant::now();
        let (c1, c2) = (Holder::Conn(ConnId(1)), Holder::Conn(ConnId(2)));
        let mut s = Sessions::new(LEASE);
        assert!(
            s.login(u(1), c1.clone(), t).unwrap(),
            "a new connection to watch"
        );
        // Long idle: still logged in, no refresh asked for.
        s.check(u(1), &c1, t + 100 * LEASE).unwrap();
        // Only on its own connection.
        assert!(matches!(
            s.check(u(1), &c2, t),
            Err(Error::Unauthenticated(_))
        ));
        assert!(s.check(u(1), &tok(""), t).is_err());
        // A second client is refused while the connection lives, with or
        // without a token, however long after.
        for other in [c2.clone(), tok(""), tok("x")] {
            assert!(matches!(
                s.login(u(1), other.clone(), t + 100 * LEASE),
                Err(Error::AlreadyExists(_))
            ));
        }
        // Logging in again on the same connection is harmless, and the
        // connection is watched once.
        assert!(!s.login(u(1), c1.clone(), t + LEASE).unwrap());
        assert!(!s.login(u(2), c1.clone(), t).unwrap(), "watched already");
        // The connection goes: both its sessions end, the user gets in again.
        s.closed(ConnId(1));
        assert!(s.check(u(1), &c1, t).is_err());
        assert!(s.check(u(2), &c1, t).is_err());
        assert!(s.login(u(1), c2.clone(), t + LEASE).unwrap());
        s.check(u(1), &c2, t + LEASE).unwrap();
        // A closed connection that held nothing, or closed twice, is nothing.
        s.closed(ConnId(1));
        s.closed(ConnId(9));
        s.check(u(1), &c2, t + LEASE).unwrap();
        // Logging out and in again on one connection: still one watcher.
        s.logout(u(1), &c2, t + LEASE).unwrap();
        assert!(
            !s.login(u(1), c2.clone(), t + LEASE).unwrap(),
            "watched already"
        );
    }

    #[test]
    fn a_connection_session_and_a_token_session_exclude_each_other() {
        let t = Instant::now();
        let c1 = Holder::Conn(ConnId(1));
        let mut s = Sessions::new(LEASE);
        s.login(u(1), tok("a"), t).unwrap();
        assert!(matches!(
            s.login(u(1), c1.clone(), t),
            Err(Error::AlreadyExists(_))
        ));
        assert!(
            !s.by_conn.contains_key(&ConnId(1)),
            "a refusal indexes nothing"
        );
        // The token session ran out: the connection gets it.
        assert!(s.login(u(1), c1.clone(), t + 2 * LEASE).unwrap());
        assert!(s.check(u(1), &tok("a"), t + 2 * LEASE).is_err());
        // Its connection logs it out: gone at once, another may log in.
        assert!(s.logout(u(1), &tok("a"), t).is_err());
        s.logout(u(1), &c1, t + 2 * LEASE).unwrap();
        assert!(s.by_conn.is_empty());
        s.login(u(1), tok("b"), t + 2 * LEASE).unwrap();
        // The closing of the old connection does not touch the new session.
        s.closed(ConnId(1));
        s.check(u(1), &tok("b"), t + 2 * LEASE).unwrap();
    }
}
