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
//!
//! # Shared with the slave
//! Sessions live in memory, so without more a failover would forget them
//! and a second client of a user could log in on the new master while the
//! first still runs. So the master tells its in-service slave
//! (`Replica.Sessions`, sent by a task of its own, never through the write
//! path, [`crate::server::replication::sessions`]):
//!
//! * **What.** Each changed user's session as it stands ([`Shared`]): held
//!   by a token (with what is left of its lease, and whether it was logged
//!   out), held by one of the master's connections, or gone. The core keeps
//!   the set of changed users ([`Sessions::take_shared`]); a new slave, or
//!   one whose last call failed, gets the whole table first.
//! * **When.** Logins, logouts and ended connections at once
//!   ([`Sessions::urgent`]); refreshes batched, at most every half
//!   heartbeat. A call also goes every half heartbeat when nothing changed,
//!   so that the slave knows when it last heard from its master.
//! * **Not awaited.** A login is answered without waiting for the slave: a
//!   master that dies within the few milliseconds between a login and its
//!   call has a session the promoted slave never heard of, and a second
//!   client could get in there. Waiting would put a round trip on every
//!   login for that window.
//! * **The slave** keeps what it hears as its own sessions
//!   ([`Sessions::take_peer`]): a token session expires as the master said
//!   (counted from when it heard), a connection session has the holder
//!   [`Holder::Peer`], which no request of this server can match.
//! * **Promotion** ([`Sessions::promoted`]). The master died (or was fenced)
//!   a failure window or more before the promotion, so every lease the slave
//!   heard of has run out by then, refreshed or not. **Decision:** the
//!   sessions that were alive when the slave last heard from its master, and
//!   not logged out, are alive for one lease from the promotion. The first
//!   client, which reconnects to the new master with its token, keeps its
//!   session; a second client is refused (`ALREADY_EXISTS`) until the first
//!   logs out, or stops refreshing and its lease runs out. A session whose
//!   client was killed shortly before the master keeps its user out for
//!   that one lease after the promotion.
//! * **Connection sessions** (course clients) cannot follow their client to
//!   the new master: the connection was the old master's. **Decision:** the
//!   promoted slave holds them for one lease too, for the connection, which
//!   may be alive from the client's side; then the session has run out and
//!   a course client's token-less request on a new connection takes it back
//!   as before (or it logs in again). Within that lease a course client of
//!   that user is refused, like any other: nothing tells it from a second
//!   client.

use super::conn::ConnId;
use crate::error::Error;
use crate::model::UserId;
use crate::proto::tinysns::SessionEntry;
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
    /// A connection of the other server of the cluster, which told us of
    /// the session (see the module doc): no request here holds it.
    Peer,
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
    /// Users whose session changed since the slave was last told.
    changed: HashSet<UserId>,
    /// A change the slave must hear of at once (a login, a logout).
    urgent: bool,
    /// As a slave: when the master last told us of its sessions.
    heard: Option<Instant>,
}

/// A session as the master tells its slave (`SessionEntry` on the wire).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shared {
    /// Held by `token`, its lease `left`; `ended`: logged out.
    Token {
        token: String,
        ended: bool,
        left: Duration,
    },
    /// Held by one of the master's connections.
    Conn,
    /// No session.
    Gone,
}

impl Shared {
    pub fn to_wire(&self, user: UserId) -> SessionEntry {
        let mut e = SessionEntry {
            user: user.get(),
            ..Default::default()
        };
        match self {
            Shared::Token { token, ended, left } => {
                e.token = token.clone();
                e.ended = *ended;
                e.left_ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
            }
            Shared::Conn => e.connection = true,
            Shared::Gone => e.gone = true,
        }
        e
    }
}

/// Checks the sessions a master sent before anything is taken: users of
/// this cluster (`ours`), each once, tokens within bounds, leases no longer
/// than ours, no field that the entry's kind does not have. One bad entry
/// refuses the whole call.
pub fn from_wire(
    entries: &[SessionEntry],
    lease: Duration,
    ours: impl Fn(UserId) -> bool,
) -> Result<Vec<(UserId, Shared)>, Error> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let bad = |why: &str| Err(Error::Invalid(format!("session of user {}: {why}", e.user)));
        let Some(user) = UserId::new(e.user).filter(|u| ours(*u)) else {
            return bad("not a user of this cluster");
        };
        if !seen.insert(user) {
            return bad("named twice");
        }
        if e.token.len() > MAX_TOKEN_BYTES {
            return bad("token too long");
        }
        let shared = if e.gone {
            if e.connection || e.ended || e.left_ms != 0 || !e.token.is_empty() {
                return bad("a session that is gone has nothing more");
            }
            Shared::Gone
        } else if e.connection {
            if e.ended || e.left_ms != 0 || !e.token.is_empty() {
                return bad("a connection's session has no token or lease");
            }
            Shared::Conn
        } else {
            let left = Duration::from_millis(e.left_ms);
            if left > lease {
                return bad("lease longer than ours");
            }
            Shared::Token {
                token: e.token.clone(),
                ended: e.ended,
                left,
            }
        };
        out.push((user, shared));
    }
    Ok(out)
}

impl Sessions {
    pub fn new(lease: Duration) -> Sessions {
        Sessions {
            by_user: HashMap::new(),
            by_conn: HashMap::new(),
            watched: HashSet::new(),
            lease,
            changed: HashSet::new(),
            urgent: false,
            heard: None,
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
        let refresh = self
            .by_user
            .get(&user)
            .is_some_and(|s| s.alive(now) && !s.ended && s.holder == holder);
        self.changed.insert(user);
        self.urgent |= !refresh;
        let expires = match holder {
            Holder::Token(_) => Some(now + self.lease),
            Holder::Conn(_) | Holder::Peer => None,
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
                    self.changed.insert(user);
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
                    self.shrink();
                } else {
                    s.ended = true;
                }
                self.changed.insert(user);
                self.urgent = true;
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
                self.changed.insert(user);
                self.urgent = true;
            }
        }
        self.shrink();
    }

    /// Gives back the room of sessions that are gone. A map keeps its
    /// largest size: after a wave of logins (`bench scale`: 33,000 per
    /// master) ends, that was 4 MB of empty slots for good. Halving at a
    /// quarter full keeps the cost of a reallocation below that of the
    /// removals that led to it.
    fn shrink(&mut self) {
        /// The room to shrink to, if a table of `cap` slots holding `len`
        /// is worth shrinking.
        fn room(len: usize, cap: usize) -> Option<usize> {
            (cap > 64 && len < cap / 4).then_some(len * 2)
        }
        if let Some(n) = room(self.by_user.len(), self.by_user.capacity()) {
            self.by_user.shrink_to(n);
        }
        if let Some(n) = room(self.by_conn.len(), self.by_conn.capacity()) {
            self.by_conn.shrink_to(n);
        }
        if let Some(n) = room(self.watched.len(), self.watched.capacity()) {
            self.watched.shrink_to(n);
        }
    }

    /// Whether a change waits that the slave must hear of at once.
    pub fn urgent(&self) -> bool {
        self.urgent
    }

    /// As master: what to tell the slave, taken (so told once): every
    /// session when `all` (a new slave, or one whose last call failed),
    /// otherwise those that changed since the last call.
    pub fn take_shared(&mut self, now: Instant, all: bool) -> Vec<(UserId, Shared)> {
        self.urgent = false;
        let changed = std::mem::take(&mut self.changed);
        if all {
            return self
                .by_user
                .iter()
                .filter(|(_, s)| s.alive(now))
                .map(|(u, s)| (*u, self.shared(s, now)))
                .collect();
        }
        changed
            .into_iter()
            .map(|u| match self.by_user.get(&u) {
                Some(s) if s.alive(now) => (u, self.shared(s, now)),
                _ => (u, Shared::Gone),
            })
            .collect()
    }

    fn shared(&self, s: &Session, now: Instant) -> Shared {
        match (&s.holder, s.expires) {
            (Holder::Token(t), expires) => Shared::Token {
                token: t.clone(),
                ended: s.ended,
                left: expires.map_or(self.lease, |e| e.saturating_duration_since(now)),
            },
            // One we hold for the old master's connection is told on as a
            // connection's: held until we say it is gone.
            (Holder::Conn(_) | Holder::Peer, _) => Shared::Conn,
        }
    }

    /// As slave: the master told us of `sessions` at `now`; with `all`, they
    /// are every session it holds (the first part of them), and what we knew
    /// before is forgotten. Checked already ([`from_wire`]).
    pub fn take_peer(&mut self, sessions: Vec<(UserId, Shared)>, all: bool, now: Instant) {
        if all {
            self.by_user.clear();
            self.by_conn.clear();
        }
        for (user, shared) in sessions {
            if let Some(Session {
                holder: Holder::Conn(c),
                ..
            }) = self.by_user.remove(&user)
            {
                self.unindex(c, user);
            }
            let session = match shared {
                Shared::Token { token, ended, left } => Session {
                    holder: Holder::Token(token),
                    expires: Some(now + left),
                    ended,
                },
                Shared::Conn => Session {
                    holder: Holder::Peer,
                    expires: None,
                    ended: false,
                },
                Shared::Gone => continue,
            };
            self.by_user.insert(user, session);
        }
        self.heard = Some(now);
    }

    /// This server was promoted at `now`: the sessions alive when it last
    /// heard from its master, and not logged out, live one lease from now
    /// (see the module doc); a session held by the old master's connection
    /// lives one lease and then runs out like a token's.
    pub fn promoted(&mut self, now: Instant) {
        let Some(heard) = self.heard.take() else {
            return;
        };
        let until = now + self.lease;
        for s in self.by_user.values_mut() {
            match (&s.holder, s.expires) {
                (Holder::Peer, None) => s.expires = Some(until),
                (Holder::Token(_), Some(t)) if !s.ended && t > heard => {
                    s.expires = Some(t.max(until));
                }
                _ => {}
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

    #[test]
    fn the_room_of_a_wave_of_sessions_is_given_back_when_they_end() {
        let t = Instant::now();
        let mut s = Sessions::new(LEASE);
        for n in 1..=10_000u64 {
            s.login(u(n), Holder::Conn(ConnId(n % 8)), t).unwrap();
        }
        let full = s.by_user.capacity();
        for c in 0..8 {
            s.closed(ConnId(c));
        }
        assert!(s.by_user.is_empty() && s.by_conn.is_empty());
        assert!(
            s.by_user.capacity() < full / 8,
            "{} slots kept of {full}",
            s.by_user.capacity()
        );
        // What is left works as before.
        s.login(u(1), tok("a"), t).unwrap();
        s.check(u(1), &tok("a"), t).unwrap();
    }

    /// What a master tells, taken by a slave at `now`.
    fn tell(master: &mut Sessions, slave: &mut Sessions, now: Instant, all: bool) {
        let told = master.take_shared(now, all);
        let wire: Vec<SessionEntry> = told.iter().map(|(u, s)| s.to_wire(*u)).collect();
        let back = from_wire(&wire, LEASE, |_| true).unwrap();
        assert_eq!(back, told, "the wire keeps what is told");
        slave.take_peer(back, all, now);
    }

    #[test]
    fn logins_and_logouts_are_urgent_refreshes_are_batched() {
        let t = Instant::now();
        let mut s = Sessions::new(LEASE);
        s.login(u(1), tok("a"), t).unwrap();
        assert!(s.urgent(), "a login is told at once");
        assert_eq!(s.take_shared(t, false).len(), 1);
        assert!(!s.urgent());
        // Refreshes, by a login again or by a request: told, not urgent.
        s.login(u(1), tok("a"), t + LEASE / 4).unwrap();
        s.check(u(1), &tok("a"), t + LEASE / 2).unwrap();
        assert!(!s.urgent());
        assert_eq!(
            s.take_shared(t + LEASE / 2, false),
            vec![(
                u(1),
                Shared::Token {
                    token: "a".into(),
                    ended: false,
                    left: LEASE
                }
            )]
        );
        assert!(s.take_shared(t + LEASE / 2, false).is_empty(), "told once");
        // A refused login changes nothing to tell.
        assert!(s.login(u(1), tok("b"), t + LEASE / 2).is_err());
        assert!(!s.urgent() && s.take_shared(t, false).is_empty());
        s.logout(u(1), &tok("a"), t + LEASE / 2).unwrap();
        assert!(s.urgent(), "a logout is told at once");
        assert_eq!(
            s.take_shared(t + LEASE * 3 / 4, false),
            vec![(
                u(1),
                Shared::Token {
                    token: "a".into(),
                    ended: true,
                    left: LEASE * 3 / 4
                }
            )]
        );
        // A connection that goes: its user's session is gone.
        s.login(u(2), Holder::Conn(ConnId(3)), t).unwrap();
        s.take_shared(t, false);
        s.closed(ConnId(3));
        assert!(s.urgent());
        assert_eq!(s.take_shared(t, false), vec![(u(2), Shared::Gone)]);
    }

    #[test]
    fn a_promoted_slave_keeps_the_first_client_and_refuses_a_second() {
        let t = Instant::now();
        let mut master = Sessions::new(LEASE);
        let mut slave = Sessions::new(LEASE);
        master.login(u(1), tok("first"), t).unwrap();
        tell(&mut master, &mut slave, t, true);
        // The slave is no master: a second client there is refused too.
        assert!(matches!(
            slave.may_login(u(1), &tok("second"), t),
            Err(Error::AlreadyExists(_))
        ));
        // Refreshes reach it; then the master dies (the slave hears nothing
        // more), and the promotion comes two leases later, when every lease
        // it heard of has run out.
        master.check(u(1), &tok("first"), t + LEASE / 2).unwrap();
        tell(&mut master, &mut slave, t + LEASE / 2, false);
        let promoted = t + 3 * LEASE;
        slave.promoted(promoted);
        assert!(matches!(
            slave.login(u(1), tok("second"), promoted),
            Err(Error::AlreadyExists(_))
        ));
        // The first client reconnects with its token and goes on.
        slave
            .login(u(1), tok("first"), promoted + LEASE / 2)
            .unwrap();
        slave
            .check(u(1), &tok("first"), promoted + LEASE + LEASE / 4)
            .unwrap();
        assert!(
            slave
                .login(u(1), tok("second"), promoted + LEASE + LEASE / 4)
                .is_err()
        );
        // It logs out: the second gets in at once.
        slave
            .logout(u(1), &tok("first"), promoted + LEASE + LEASE / 4)
            .unwrap();
        slave
            .login(u(1), tok("second"), promoted + LEASE + LEASE / 4)
            .unwrap();
    }

    #[test]
    fn after_a_promotion_an_unrefreshed_session_runs_out_within_a_lease() {
        let t = Instant::now();
        let (mut master, mut slave) = (Sessions::new(LEASE), Sessions::new(LEASE));
        master.login(u(1), tok("killed"), t).unwrap();
        master.login(u(4), tok("gone-before"), t).unwrap();
        master.login(u(7), tok("out"), t).unwrap();
        master.logout(u(7), &tok("out"), t).unwrap();
        tell(&mut master, &mut slave, t, true);
        // User 4's client was killed long before: its lease ran out before
        // the master last spoke, which it does every half heartbeat.
        master
            .check(u(1), &tok("killed"), t + LEASE * 3 / 4)
            .unwrap();
        tell(&mut master, &mut slave, t + LEASE * 3 / 4, false);
        tell(&mut master, &mut slave, t + LEASE + LEASE / 4, false);
        let promoted = t + 4 * LEASE;
        slave.promoted(promoted);
        for (user, holder) in [(1, "other"), (7, "other")] {
            let r = slave.may_login(u(user), &tok(holder), promoted);
            assert_eq!(r.is_ok(), user != 1, "user {user}: {r:?}");
        }
        slave.may_login(u(4), &tok("other"), promoted).unwrap();
        // User 1's client was killed too: nobody refreshes, and a lease
        // after the promotion its user is free.
        slave.login(u(1), tok("other"), promoted + LEASE).unwrap();
        // A promotion without news from a master changes nothing.
        let mut fresh = Sessions::new(LEASE);
        fresh.promoted(promoted);
        fresh.login(u(1), tok("a"), promoted).unwrap();
    }

    #[test]
    fn a_course_clients_session_is_held_for_a_lease_after_a_promotion() {
        let t = Instant::now();
        let (mut master, mut slave) = (Sessions::new(LEASE), Sessions::new(LEASE));
        master.login(u(1), Holder::Conn(ConnId(5)), t).unwrap();
        tell(&mut master, &mut slave, t, true);
        // Held however long the slave hears nothing: the connection is the
        // master's to end.
        let promoted = t + 100 * LEASE;
        assert!(slave.may_login(u(1), &tok("x"), promoted).is_err());
        slave.promoted(promoted);
        // No connection here holds it: not the same number, not another.
        for h in [Holder::Conn(ConnId(5)), Holder::Conn(ConnId(6)), tok("")] {
            assert!(slave.check(u(1), &h, promoted).is_err());
            assert!(matches!(
                slave.may_login(u(1), &h, promoted + LEASE / 2),
                Err(Error::AlreadyExists(_))
            ));
        }
        // A lease later it has run out: the course client's new connection
        // takes it back (as `caller` does: a login on its connection).
        slave
            .login(u(1), Holder::Conn(ConnId(6)), promoted + LEASE)
            .unwrap();
        slave
            .check(u(1), &Holder::Conn(ConnId(6)), promoted + LEASE)
            .unwrap();
        // A connection that ends on the master is gone on the slave too.
        let mut slave2 = Sessions::new(LEASE);
        tell(&mut master, &mut slave2, t, true);
        master.closed(ConnId(5));
        tell(&mut master, &mut slave2, t, false);
        slave2.may_login(u(1), &tok("x"), t).unwrap();
    }

    #[test]
    fn a_whole_table_replaces_what_a_slave_knew() {
        let t = Instant::now();
        let (mut master, mut slave) = (Sessions::new(LEASE), Sessions::new(LEASE));
        slave.take_peer(vec![(u(4), Shared::Conn)], false, t);
        master.login(u(1), tok("a"), t).unwrap();
        tell(&mut master, &mut slave, t, true);
        slave.may_login(u(4), &tok("b"), t).unwrap();
        assert!(slave.may_login(u(1), &tok("b"), t).is_err());
        // Expired sessions are not told in a whole table.
        assert!(master.take_shared(t + 2 * LEASE, true).is_empty());
    }

    #[test]
    fn sessions_from_a_peer_are_checked_whole() {
        let ok = |user: u64| SessionEntry {
            user,
            token: "t".into(),
            left_ms: 10,
            ..Default::default()
        };
        let ours = |u: UserId| u.get() % 3 == 1;
        assert_eq!(from_wire(&[ok(1), ok(4)], LEASE, ours).unwrap().len(), 2);
        let bad = [
            vec![ok(1), ok(2)],
            vec![ok(0)],
            vec![ok(1), ok(1)],
            vec![SessionEntry {
                token: "t".repeat(MAX_TOKEN_BYTES + 1),
                ..ok(1)
            }],
            vec![SessionEntry {
                left_ms: LEASE.as_millis() as u64 + 1,
                ..ok(1)
            }],
            vec![SessionEntry {
                connection: true,
                ..ok(1)
            }],
            vec![SessionEntry {
                gone: true,
                ..ok(1)
            }],
        ];
        for entries in bad {
            assert!(
                matches!(from_wire(&entries, LEASE, ours), Err(Error::Invalid(_))),
                "{entries:?}"
            );
        }
        let conn = SessionEntry {
            user: 1,
            connection: true,
            ..Default::default()
        };
        assert_eq!(
            from_wire(&[conn], LEASE, ours).unwrap(),
            vec![(u(1), Shared::Conn)]
        );
    }
}
