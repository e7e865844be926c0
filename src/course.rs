//! The course's reply convention for `SNSService` (SPEC §6): an outcome the
//! user caused (followed already, no such user, ...) is an OK status with a
//! fixed `Reply.msg`, because that is what clients written for the course
//! read. This is the one table of those strings; the server answers with
//! [`Outcome::msg`] and this project's client reads them back with
//! [`Outcome::from_msg`]. Failures that are not the user's outcome (not
//! logged in, not the master, shutting down) stay non-OK statuses.

/// The RPC a reply answers: the same string means different outcomes in
/// different RPCs (`you have already joined`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    Login,
    Follow,
    UnFollow,
}

/// An outcome of Login, Follow or UnFollow that travels as `Reply.msg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    LoggedIn,
    /// The user is logged in from another live client.
    AlreadyJoined,
    Followed,
    /// Following yourself, or someone already followed.
    AlreadyFollowing,
    /// No such user, or not a user id.
    UnknownFollowee,
    UnFollowed,
    /// No such user, not a user id, or yourself.
    UnknownUnfollowee,
    NotAFollower,
}

impl Outcome {
    pub const ALL: [Outcome; 8] = [
        Outcome::LoggedIn,
        Outcome::AlreadyJoined,
        Outcome::Followed,
        Outcome::AlreadyFollowing,
        Outcome::UnknownFollowee,
        Outcome::UnFollowed,
        Outcome::UnknownUnfollowee,
        Outcome::NotAFollower,
    ];

    /// The table: each outcome's RPC and `Reply.msg`, verbatim the course's.
    fn row(self) -> (Rpc, &'static str) {
        match self {
            Outcome::LoggedIn => (Rpc::Login, "Login Successful!"),
            Outcome::AlreadyJoined => (Rpc::Login, "you have already joined"),
            Outcome::Followed => (Rpc::Follow, "Follow Successful"),
            Outcome::AlreadyFollowing => (Rpc::Follow, "you have already joined"),
            Outcome::UnknownFollowee => (Rpc::Follow, "unknown follower username"),
            Outcome::UnFollowed => (Rpc::UnFollow, "UnFollow Successful"),
            Outcome::UnknownUnfollowee => (Rpc::UnFollow, "Unknown follower"),
            Outcome::NotAFollower => (Rpc::UnFollow, "You are not a follower"),
        }
    }

    pub fn rpc(self) -> Rpc {
        self.row().0
    }

    /// The `Reply.msg` the server sends for this outcome.
    pub fn msg(self) -> &'static str {
        self.row().1
    }

    /// The outcome a reply to `rpc` names; `None` for a message not in the
    /// table (compared exactly).
    pub fn from_msg(rpc: Rpc, msg: &str) -> Option<Outcome> {
        Outcome::ALL
            .into_iter()
            .find(|o| o.rpc() == rpc && o.msg() == msg)
    }

    /// Whether the RPC did what was asked.
    pub fn is_success(self) -> bool {
        matches!(
            self,
            Outcome::LoggedIn | Outcome::Followed | Outcome::UnFollowed
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_both_ways() {
        let table = [
            (Outcome::LoggedIn, Rpc::Login, "Login Successful!"),
            (
                Outcome::AlreadyJoined,
                Rpc::Login,
                "you have already joined",
            ),
            (Outcome::Followed, Rpc::Follow, "Follow Successful"),
            (
                Outcome::AlreadyFollowing,
                Rpc::Follow,
                "you have already joined",
            ),
            (
                Outcome::UnknownFollowee,
                Rpc::Follow,
                "unknown follower username",
            ),
            (Outcome::UnFollowed, Rpc::UnFollow, "UnFollow Successful"),
            (
                Outcome::UnknownUnfollowee,
                Rpc::UnFollow,
                "Unknown follower",
            ),
            (
                Outcome::NotAFollower,
                Rpc::UnFollow,
                "You are not a follower",
            ),
        ];
        assert_eq!(table.len(), Outcome::ALL.len());
        for (outcome, rpc, msg) in table {
            assert_eq!((outcome.rpc(), outcome.msg()), (rpc, msg));
            assert_eq!(Outcome::from_msg(rpc, msg), Some(outcome), "{msg}");
        }
    }

    #[test]
    fn a_message_means_something_only_in_its_rpc_and_exactly() {
        let joined = "you have already joined";
        assert_eq!(
            Outcome::from_msg(Rpc::Login, joined),
            Some(Outcome::AlreadyJoined)
        );
        assert_eq!(
            Outcome::from_msg(Rpc::Follow, joined),
            Some(Outcome::AlreadyFollowing)
        );
        assert_eq!(Outcome::from_msg(Rpc::UnFollow, joined), None);
        assert_eq!(Outcome::from_msg(Rpc::Login, "Follow Successful"), None);
        for msg in [
            "",
            "login successful!",
            "Login Successful! ",
            "Login successful",
        ] {
            assert_eq!(Outcome::from_msg(Rpc::Login, msg), None, "{msg:?}");
        }
        let wins: Vec<Outcome> = Outcome::ALL
            .into_iter()
            .filter(|o| o.is_success())
            .collect();
        assert_eq!(
            wins,
            [Outcome::LoggedIn, Outcome::Followed, Outcome::UnFollowed]
        );
    }
}
