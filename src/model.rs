//! Rules about user input that the client and the server both enforce.

/// Longest post, in bytes of UTF-8.
pub const MAX_POST_BYTES: usize = 255;

/// Checks a post's text: one line of at most 255 bytes of UTF-8 without
/// control characters, and not empty. The error says why, for a person.
pub fn validate_post(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err("a post cannot be empty".into());
    }
    if text.len() > MAX_POST_BYTES {
        return Err(format!(
            "a post is at most {MAX_POST_BYTES} bytes; this one has {}",
            text.len()
        ));
    }
    if text.chars().any(char::is_control) {
        return Err("a post is one line without control characters".into());
    }
    Ok(())
}

/// Checks an operation that came from another process (a mirrored batch, a
/// synchronizer's push): users are positive, a post's text is valid.
pub fn validate_op(op: &crate::proto::tinysns::WriteOp) -> Result<(), String> {
    use crate::proto::tinysns::write_op::Op;
    match &op.op {
        Some(Op::AddUser(a)) if a.user == 0 => Err("user 0 does not exist".into()),
        Some(Op::Follow(f)) if f.follower == 0 || f.followee == 0 => {
            Err("user 0 does not exist".into())
        }
        Some(Op::Post(p)) if p.author == 0 => Err("user 0 does not exist".into()),
        Some(Op::Post(p)) => validate_post(&p.text),
        Some(_) => Ok(()),
        None => Err("empty operation".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posts() {
        assert!(validate_post("hello world").is_ok());
        assert!(validate_post(&"é".repeat(127)).is_ok());
        assert!(validate_post(&"a".repeat(255)).is_ok());
        assert!(validate_post(&"a".repeat(256)).is_err());
        assert!(validate_post("").is_err());
        assert!(validate_post("two\nlines").is_err());
        assert!(validate_post("tab\there").is_err());
        assert!(validate_post("nul\0").is_err());
    }
}
