//! Request ids: the idempotency keys clients put on `start_run`.
//!
//! A client that did not hear the answer to a request cannot know whether
//! the engine acted on it. When the request carries a [`RequestId`] of the
//! client's choosing, sending it again is safe: the engine answers the
//! first request's result instead of acting twice (see
//! [`crate::engine::Engine::start_run`]). Keys are scoped to the caller's
//! SPIFFE ID, so two callers never collide. Fresh keys are UUID v7 text
//! ([`RequestId::fresh`]); scripts may pick their own.
//!
//! ```
//! use stepgate::request_id::RequestId;
//!
//! assert!(RequestId::parse("deploy-2026-12-04:try.1").is_ok());
//! assert!(RequestId::parse("two words").is_err());
//! assert!(RequestId::parse("").is_err());
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest request id accepted, in characters.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Why a string is not a request id. Messages name the wire field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestIdError {
    /// The id was empty.
    #[error("`request_id` is empty; use 1 to {MAX_REQUEST_ID_LEN} characters")]
    Empty,
    /// The id was longer than [`MAX_REQUEST_ID_LEN`].
    #[error("`request_id` has {0} characters; at most {MAX_REQUEST_ID_LEN} are allowed")]
    TooLong(usize),
    /// The id held a character outside `[A-Za-z0-9._:-]`.
    #[error("`request_id` contains {0:?} at position {1}; allowed are A-Z a-z 0-9 . _ : -")]
    BadChar(char, usize),
}

/// A client-chosen idempotency key: 1 to 128 characters of
/// `[A-Za-z0-9._:-]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RequestId(String);

impl RequestId {
    /// Checks `s` and wraps it.
    pub fn parse(s: &str) -> Result<Self, RequestIdError> {
        if s.is_empty() {
            return Err(RequestIdError::Empty);
        }
        let len = s.chars().count();
        if len > MAX_REQUEST_ID_LEN {
            return Err(RequestIdError::TooLong(len));
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-');
        if let Some((at, c)) = s.chars().enumerate().find(|(_, c)| !allowed(*c)) {
            return Err(RequestIdError::BadChar(c, at));
        }
        Ok(Self(s.to_string()))
    }

    /// A new, unique id: UUID v7 text from the system clock. The decision
    /// core never calls this; clients do.
    pub fn fresh() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RequestId {
    type Error = RequestIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<RequestId> for String {
    fn from(id: RequestId) -> Self {
        id.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for RequestId {
    type Err = RequestIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_of_allowed_characters_up_to_the_limit_parse() {
        let longest = "a".repeat(MAX_REQUEST_ID_LEN);
        for ok in ["x", "A-z_0.9:1", longest.as_str()] {
            assert_eq!(RequestId::parse(ok).map(|r| r.to_string()), Ok(ok.into()));
        }
        let fresh = RequestId::fresh();
        assert_eq!(RequestId::parse(fresh.as_str()), Ok(fresh));
    }

    #[test]
    fn empty_long_and_odd_ids_are_refused_naming_the_field() {
        assert_eq!(RequestId::parse(""), Err(RequestIdError::Empty));
        let long = "a".repeat(MAX_REQUEST_ID_LEN + 1);
        assert_eq!(
            RequestId::parse(&long),
            Err(RequestIdError::TooLong(MAX_REQUEST_ID_LEN + 1))
        );
        assert_eq!(
            RequestId::parse("run 1"),
            Err(RequestIdError::BadChar(' ', 3))
        );
        assert_eq!(
            RequestId::parse("é").map_err(|e| e.to_string()),
            Err("`request_id` contains 'é' at position 0; allowed are A-Z a-z 0-9 . _ : -".into())
        );
    }

    #[test]
    fn serde_refuses_a_bad_id() {
        let err = serde_json::from_str::<RequestId>("\"a/b\"").unwrap_err();
        assert!(
            err.to_string().contains("`request_id` contains '/'"),
            "{err}"
        );
    }
}
