//! Sessions and client ids: pure rules, time as a value.
//!
//! **Sessions.** A client logs in with a random token and refreshes it by
//! logging in again (or by any request); a session not refreshed for a lease
//! (two heartbeat periods) has expired. A login for a user whose live session
//! has another token is refused: SPEC's duplicate-login rule. A killed
//! client's session simply runs out; a client that exits cleanly logs out,
//! and the ended session is kept, marked, until its lease runs out, so that a
//! refresh still in flight cannot revive it. Only the session's own token
//! logs it out. A token is at most [`MAX_TOKEN_BYTES`]: a server holds one
//! per user.
//!
//! **Client ids.** A write carries the client's id for it (`post_id`,
//! `request_id`), so that a write retried after a lost answer is recognised
//! and answered as the first one was. Master and slave remember the latest
//! ids per user (a bounded number), recorded when the write is staged and
//! forgotten if it is abandoned.

use crate::error::Error;
use crate::model::UserId;
use crate::proto::tinysns::{WriteOp, write_op};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Longest session token: this project's client sends 16 hex digits; a
/// course client none.
pub const MAX_TOKEN_BYTES: usize = 128;

struct Session {
    token: String,
    expires: Instant,
    /// Logged out: a late refresh with this token must not revive it.
    ended: bool,
}

/// Every user's session on this server.
pub struct Sessions {
    by_user: HashMap<UserId, Session>,
    lease: Duration,
}

impl Sessions {
    pub fn new(lease: Duration) -> Sessions {
        Sessions {
            by_user: HashMap::new(),
            lease,
        }
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Whether `user` may log in with `token` now; changes nothing, so that
    /// a login can be refused before it writes anything.
    pub fn may_login(&self, user: UserId, token: &str, now: Instant) -> Result<(), Error> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Error::Invalid(format!(
                "a session token is at most {MAX_TOKEN_BYTES} bytes"
            )));
        }
        if let Some(s) = self.by_user.get(&user)
            && s.expires > now
        {
            if s.ended && s.token == token {
                return Err(Error::Unauthenticated("this session was logged out".into()));
            }
            if !s.ended && s.token != token {
                return Err(Error::AlreadyExists(format!(
                    "user {user} is already logged in"
                )));
            }
        }
        Ok(())
    }

    /// Logs `user` in with `token` (or refreshes that session).
    pub fn login(&mut self, user: UserId, token: &str, now: Instant) -> Result<(), Error> {
        self.may_login(user, token, now)?;
        self.by_user.insert(
            user,
            Session {
                token: token.to_string(),
                expires: now + self.lease,
                ended: false,
            },
        );
        Ok(())
    }

    /// Checks that a request comes from `user`'s live session, and refreshes
    /// it.
    pub fn check(&mut self, user: UserId, token: &str, now: Instant) -> Result<(), Error> {
        match self.by_user.get_mut(&user) {
            Some(s) if s.expires > now && !s.ended && s.token == token => {
                s.expires = now + self.lease;
                Ok(())
            }
            _ => Err(Error::Unauthenticated(format!(
                "user {user} is not logged in"
            ))),
        }
    }

    /// Ends `user`'s session, if `token` is its token (again, if it ended
    /// already); any other token is refused and changes nothing.
    pub fn logout(&mut self, user: UserId, token: &str, now: Instant) -> Result<(), Error> {
        match self.by_user.get_mut(&user) {
            Some(s) if s.expires > now && s.token == token => {
                s.ended = true;
                Ok(())
            }
            _ => Err(Error::Unauthenticated(format!(
                "user {user} has no session with this token"
            ))),
        }
    }
}

/// How many client ids per user are remembered to recognise a retry.
const RECENT_IDS: usize = 1024;

/// A client's id for one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientId {
    /// A post's `post_id`.
    Post { author: UserId, id: u64 },
    /// A follow or unfollow's `request_id`.
    Request { user: UserId, id: u64 },
}

impl ClientId {
    /// The client id an operation carries, if any (the wire's 0 is none).
    pub fn of(op: &WriteOp) -> Option<ClientId> {
        match &op.op {
            Some(write_op::Op::Post(p)) if p.post_id != 0 => Some(ClientId::Post {
                author: UserId::new(p.author)?,
                id: p.post_id,
            }),
            Some(write_op::Op::Follow(f)) if f.request_id != 0 => Some(ClientId::Request {
                user: UserId::new(f.follower)?,
                id: f.request_id,
            }),
            _ => None,
        }
    }

    /// Whose ids it is among, and the id.
    fn key(self) -> (Owner, u64) {
        match self {
            ClientId::Post { author, id } => (Owner::Posts(author), id),
            ClientId::Request { user, id } => (Owner::Requests(user), id),
        }
    }
}

/// Posts and requests are numbered apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Owner {
    Posts(UserId),
    Requests(UserId),
}

/// The latest client ids per user and kind.
#[derive(Default)]
pub struct ClientIds(HashMap<Owner, VecDeque<u64>>);

impl ClientIds {
    pub fn contains(&self, id: ClientId) -> bool {
        let (owner, id) = id.key();
        self.0.get(&owner).is_some_and(|ids| ids.contains(&id))
    }

    pub fn insert(&mut self, id: ClientId) {
        let (owner, id) = id.key();
        let ids = self.0.entry(owner).or_default();
        if ids.len() == RECENT_IDS {
            ids.pop_front();
        }
        ids.push_back(id);
    }

    pub fn remove(&mut self, id: ClientId) {
        let (owner, id) = id.key();
        if let Some(ids) = self.0.get_mut(&owner) {
            ids.retain(|i| *i != id);
        }
    }

    /// Remembers the id an operation carries.
    pub fn record(&mut self, op: &WriteOp) {
        if let Some(id) = ClientId::of(op) {
            self.insert(id);
        }
    }

    /// Forgets it again (the operation was abandoned).
    pub fn forget(&mut self, op: &WriteOp) {
        if let Some(id) = ClientId::of(op) {
            self.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::tinysns::PostOp;

    const LEASE: Duration = Duration::from_millis(800);

    fn u(id: u64) -> UserId {
        UserId::new(id).unwrap()
    }

    #[test]
    fn a_live_session_is_refreshed_by_requests() {
        let t = Instant::now();
        let mut s = Sessions::new(LEASE);
        s.login(u(1), "a", t).unwrap();
        s.check(u(1), "a", t + LEASE / 2).unwrap();
        // Refreshed at LEASE/2: still alive at LEASE.
        s.check(u(1), "a", t + LEASE).unwrap();
        assert!(s.check(u(1), "a", t + 3 * LEASE).is_err(), "expired");
        assert!(matches!(
            s.check(u(1), "b", t),
            Err(Error::Unauthenticated(_))
        ));
        assert!(s.check(u(2), "a", t).is_err());
    }

    #[test]
    fn a_second_client_is_refused_until_the_first_session_runs_out() {
        let t = Instant::now();
        let mut s = Sessions::new(LEASE);
        s.login(u(1), "a", t).unwrap();
        assert!(matches!(
            s.login(u(1), "b", t + LEASE / 2),
            Err(Error::AlreadyExists(_))
        ));
        // The same client logging in again is a refresh.
        s.login(u(1), "a", t + LEASE / 2).unwrap();
        // The first client was killed: its session runs out.
        s.login(u(1), "b", t + 2 * LEASE).unwrap();
        assert!(s.check(u(1), "a", t + 2 * LEASE).is_err());
    }

    #[test]
    fn a_logged_out_session_is_not_revived_by_a_late_refresh() {
        let t = Instant::now();
        let mut s = Sessions::new(LEASE);
        s.login(u(1), "a", t).unwrap();
        assert!(matches!(
            s.logout(u(1), "other", t),
            Err(Error::Unauthenticated(_))
        ));
        assert!(s.logout(u(2), "a", t).is_err(), "no session at all");
        s.check(u(1), "a", t).unwrap();
        s.logout(u(1), "a", t).unwrap();
        s.logout(u(1), "a", t).unwrap();
        assert!(matches!(
            s.login(u(1), "a", t + LEASE / 4),
            Err(Error::Unauthenticated(_))
        ));
        assert!(s.check(u(1), "a", t).is_err());
        // Another client may log in at once.
        s.login(u(1), "b", t + LEASE / 4).unwrap();
    }

    #[test]
    fn a_wrong_logout_changes_nothing_and_tokens_are_bounded() {
        let t = Instant::now();
        let mut s = Sessions::new(LEASE);
        s.login(u(1), "a", t).unwrap();
        assert!(s.logout(u(1), "b", t).is_err());
        // The session is as it was: alive, its token still refreshes it.
        s.check(u(1), "a", t).unwrap();
        s.login(u(1), "a", t).unwrap();
        assert!(s.login(u(1), "b", t).is_err());
        // An expired session cannot be logged out any more.
        assert!(s.logout(u(1), "a", t + 3 * LEASE).is_err());

        let long = "t".repeat(MAX_TOKEN_BYTES + 1);
        assert!(matches!(
            s.may_login(u(2), &long, t),
            Err(Error::Invalid(_))
        ));
        assert!(s.login(u(2), &long, t).is_err());
        assert!(s.check(u(2), &long, t).is_err(), "nothing was stored");
        s.login(u(2), &"t".repeat(MAX_TOKEN_BYTES), t).unwrap();
        s.may_login(u(3), "", t).unwrap();
    }

    #[test]
    fn client_ids_are_remembered_per_user_and_kind_and_bounded() {
        let mut ids = ClientIds::default();
        let post = ClientId::Post {
            author: u(1),
            id: 5,
        };
        ids.insert(post);
        assert!(ids.contains(post));
        assert!(!ids.contains(ClientId::Request { user: u(1), id: 5 }));
        assert!(!ids.contains(ClientId::Post {
            author: u(2),
            id: 5
        }));
        for i in 0..RECENT_IDS as u64 {
            ids.insert(ClientId::Post {
                author: u(1),
                id: 100 + i,
            });
        }
        assert!(!ids.contains(post), "the oldest is forgotten");
        ids.remove(ClientId::Post {
            author: u(1),
            id: 100,
        });
        assert!(!ids.contains(ClientId::Post {
            author: u(1),
            id: 100
        }));
    }

    #[test]
    fn an_operation_without_a_client_id_records_nothing() {
        let op = |post_id| WriteOp {
            op: Some(write_op::Op::Post(PostOp {
                author: 3,
                time_ns: 1,
                text: "x".into(),
                post_id,
            })),
        };
        assert_eq!(ClientId::of(&op(0)), None);
        let mut ids = ClientIds::default();
        ids.record(&op(9));
        assert!(ids.contains(ClientId::Post {
            author: u(3),
            id: 9
        }));
        ids.forget(&op(9));
        assert!(!ids.contains(ClientId::Post {
            author: u(3),
            id: 9
        }));
    }
}
