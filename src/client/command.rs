//! Command mode on paper: what a typed line means, and which line SPEC §2
//! prints for each outcome. Pure: no I/O, no server.

use crate::course::Outcome;
use crate::error::Error;
use crate::proto::csce438::ListReply;

pub const CONNECTION_FAILED: &str = "connection failed: -1";
pub const SUCCESS: &str = "Command completed successfully";
pub const ALREADY_EXISTS: &str = "Input username already exists, command failed";
pub const INVALID_USERNAME: &str = "Command failed with invalid username";
pub const NOT_A_FOLLOWER: &str = "Command failed with not a follower";
pub const UNKNOWN_REASON: &str = "Command failed with unknown reason";
pub const INVALID_COMMAND: &str = "Invalid Command";
pub const NO_ARGUMENTS: &str = "Invalid Input -- No Arguments Given";
pub const INVALID_TWO_WORD_COMMAND: &str = "Command failed with invalid command";
pub const IN_TIMELINE: &str = "Now you are in the timeline";

/// One line of command-mode input, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// An empty line: just prompt again.
    Empty,
    Follow(String),
    UnFollow(String),
    List,
    Timeline,
    /// Not a command; the payload is the line to print.
    Invalid(&'static str),
}

/// Parses a command-mode line as SPEC §2 describes. The argument is not
/// checked here: the server is the authority on what a valid username is.
pub fn parse_command(line: &str) -> Command {
    let line = line.trim_end_matches('\r');
    if line.is_empty() {
        return Command::Empty;
    }
    match line.split_once(' ') {
        None if line.eq_ignore_ascii_case("LIST") => Command::List,
        None if line.eq_ignore_ascii_case("TIMELINE") => Command::Timeline,
        None => Command::Invalid(INVALID_COMMAND),
        Some((word, argument)) => {
            let argument = argument.trim();
            let make: fn(String) -> Command = if word.eq_ignore_ascii_case("FOLLOW") {
                Command::Follow
            } else if word.eq_ignore_ascii_case("UNFOLLOW") {
                Command::UnFollow
            } else {
                return Command::Invalid(INVALID_TWO_WORD_COMMAND);
            };
            if argument.is_empty() {
                Command::Invalid(NO_ARGUMENTS)
            } else {
                make(argument.to_owned())
            }
        }
    }
}

/// The line printed for a FOLLOW/UNFOLLOW outcome (the server's `Reply.msg`
/// read back as an [`Outcome`]), or for a failed command: the one table from
/// outcome to SPEC §2's reply lines. A non-OK status is never the user's
/// outcome (SPEC §6), so it is always the unknown reason. (An unavailable
/// server reaches this only when the command failed again after a failover.)
pub fn reply_line(outcome: Result<Outcome, &Error>) -> &'static str {
    match outcome {
        Ok(Outcome::Followed | Outcome::UnFollowed | Outcome::LoggedIn) => SUCCESS,
        Ok(Outcome::AlreadyFollowing) => ALREADY_EXISTS,
        Ok(Outcome::UnknownFollowee | Outcome::UnknownUnfollowee) => INVALID_USERNAME,
        Ok(Outcome::NotAFollower) => NOT_A_FOLLOWER,
        Ok(Outcome::AlreadyJoined) | Err(_) => UNKNOWN_REASON,
    }
}

/// `label` then the items joined by ", ", with nothing after the colon when
/// there are none (SPEC §2).
fn labelled_list(label: &str, items: &[String]) -> String {
    if items.is_empty() {
        format!("{label}:")
    } else {
        format!("{label}: {}", items.join(", "))
    }
}

/// The three lines LIST prints. The server already sorts both lists.
pub fn list_lines(reply: &ListReply) -> Vec<String> {
    vec![
        SUCCESS.to_owned(),
        labelled_list("All users", &reply.all_users),
        labelled_list("Followers", &reply.followers),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::{Code, Status};

    #[test]
    fn command_parsing() {
        use Command::*;
        assert_eq!(parse_command(""), Empty);
        assert_eq!(parse_command("\r"), Empty);
        assert_eq!(parse_command("LIST"), List);
        assert_eq!(parse_command("list\r"), List);
        assert_eq!(parse_command("TimeLine"), Timeline);
        assert_eq!(parse_command("FOLLOW"), Invalid(INVALID_COMMAND));
        assert_eq!(parse_command("hello"), Invalid(INVALID_COMMAND));
        assert_eq!(parse_command("follow 2"), Follow("2".into()));
        assert_eq!(parse_command("FOLLOW   12  \r"), Follow("12".into()));
        assert_eq!(parse_command("UnFollow abc"), UnFollow("abc".into()));
        assert_eq!(parse_command("FOLLOW "), Invalid(NO_ARGUMENTS));
        assert_eq!(parse_command("UNFOLLOW   "), Invalid(NO_ARGUMENTS));
        assert_eq!(parse_command("LIST x"), Invalid(INVALID_TWO_WORD_COMMAND));
        assert_eq!(parse_command("POST hi"), Invalid(INVALID_TWO_WORD_COMMAND));
        assert_eq!(parse_command(" "), Invalid(INVALID_TWO_WORD_COMMAND));
    }

    /// The line a status from the server ends up as.
    fn line_for(code: Code) -> &'static str {
        reply_line(Err(&Error::from(Status::new(code, "mock"))))
    }

    #[test]
    fn reply_mapping() {
        use Outcome::*;
        let lines = [
            (LoggedIn, SUCCESS),
            (AlreadyJoined, UNKNOWN_REASON),
            (Followed, SUCCESS),
            (AlreadyFollowing, ALREADY_EXISTS),
            (UnknownFollowee, INVALID_USERNAME),
            (UnFollowed, SUCCESS),
            (UnknownUnfollowee, INVALID_USERNAME),
            (NotAFollower, NOT_A_FOLLOWER),
        ];
        assert_eq!(lines.len(), Outcome::ALL.len());
        for (outcome, line) in lines {
            assert_eq!(reply_line(Ok(outcome)), line, "{outcome:?}");
        }
        // A non-OK status is something else that went wrong, whatever its
        // code (the outcomes travel as OK replies).
        for code in [
            Code::AlreadyExists,
            Code::NotFound,
            Code::InvalidArgument,
            Code::FailedPrecondition,
            Code::Internal,
            Code::Unavailable,
            Code::Unauthenticated,
        ] {
            assert_eq!(line_for(code), UNKNOWN_REASON, "{code:?}");
        }
    }

    #[test]
    fn list_formatting() {
        let reply = ListReply {
            all_users: vec!["1".into(), "2".into(), "3".into()],
            followers: vec![],
        };
        assert_eq!(
            list_lines(&reply),
            [SUCCESS, "All users: 1, 2, 3", "Followers:"]
        );
        let reply = ListReply {
            all_users: vec!["1".into()],
            followers: vec!["2".into(), "3".into()],
        };
        assert_eq!(list_lines(&reply)[2], "Followers: 2, 3");
    }
}
