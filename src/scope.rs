//! Scopes: the unit of privilege a step token carries.
//!
//! A scope is an opaque, case-sensitive string such as `deploy:production`
//! or `db:migrate`. Workflows declare the scopes a step may use; an agent
//! asks for some of them; the token carries exactly what was asked. This
//! module holds the syntax rule and the one comparison the engine needs:
//! "is every asked scope declared for the step?". It has no wildcards on
//! purpose: a scope grants what it names and nothing more.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest scope accepted, in bytes.
pub const MAX_SCOPE_LEN: usize = 128;

/// Most scopes one step (or one request) may name.
pub const MAX_SCOPES: usize = 32;

/// Why a scope string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// The scope was empty.
    #[error("scope is empty")]
    Empty,
    /// The scope was longer than [`MAX_SCOPE_LEN`].
    #[error("scope `{0}` is longer than {MAX_SCOPE_LEN} bytes")]
    TooLong(String),
    /// The scope used a character outside the allowed set.
    #[error("scope `{scope}` contains `{bad}`; allowed are a-z A-Z 0-9 and : . _ / -")]
    BadChar {
        /// The offending scope.
        scope: String,
        /// The first character that is not allowed.
        bad: char,
    },
    /// More than [`MAX_SCOPES`] scopes were given.
    #[error("{0} scopes given; at most {MAX_SCOPES} are allowed")]
    TooMany(usize),
}

/// One validated scope.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Scope(String);

impl Scope {
    /// Parses and validates one scope.
    pub fn parse(s: &str) -> Result<Self, ScopeError> {
        if s.is_empty() {
            return Err(ScopeError::Empty);
        }
        if s.len() > MAX_SCOPE_LEN {
            return Err(ScopeError::TooLong(s.chars().take(32).collect()));
        }
        let allowed =
            |c: char| c.is_ascii_alphanumeric() || matches!(c, ':' | '.' | '_' | '/' | '-');
        if let Some(bad) = s.chars().find(|c| !allowed(*c)) {
            return Err(ScopeError::BadChar {
                scope: s.to_string(),
                bad,
            });
        }
        Ok(Self(s.to_string()))
    }

    /// The scope as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Scope {
    type Error = ScopeError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Scope> for String {
    fn from(s: Scope) -> Self {
        s.0
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An ordered set of scopes; order never matters, duplicates collapse.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "Vec<Scope>", into = "Vec<Scope>")]
pub struct ScopeSet(BTreeSet<Scope>);

impl ScopeSet {
    /// Parses a list of scope strings, enforcing [`MAX_SCOPES`].
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<Self, ScopeError> {
        let scopes = items
            .iter()
            .map(|s| Scope::parse(s.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Self::try_from(scopes)
    }

    /// Parses the space-separated form used in the JWT `scope` claim.
    pub fn from_claim(claim: &str) -> Result<Self, ScopeError> {
        let items: Vec<&str> = claim.split(' ').filter(|s| !s.is_empty()).collect();
        Self::parse(&items)
    }

    /// The space-separated form used in the JWT `scope` claim (RFC 8693).
    pub fn to_claim(&self) -> String {
        self.iter().map(Scope::as_str).collect::<Vec<_>>().join(" ")
    }

    /// True when no scope is in the set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of scopes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Scopes in sorted order.
    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.0.iter()
    }

    /// True when `scope` is in the set.
    pub fn contains(&self, scope: &Scope) -> bool {
        self.0.contains(scope)
    }

    /// The scopes of `self` that `allowed` does not hold, sorted.
    ///
    /// Empty means `self` is within `allowed`. The engine rejects a token
    /// request whose excess is not empty; it never narrows the request.
    pub fn excess_over(&self, allowed: &ScopeSet) -> Vec<Scope> {
        self.0.difference(&allowed.0).cloned().collect()
    }

    /// The scopes as strings, sorted.
    pub fn to_strings(&self) -> Vec<String> {
        self.iter().map(|s| s.0.clone()).collect()
    }
}

impl TryFrom<Vec<Scope>> for ScopeSet {
    type Error = ScopeError;
    fn try_from(v: Vec<Scope>) -> Result<Self, Self::Error> {
        if v.len() > MAX_SCOPES {
            return Err(ScopeError::TooMany(v.len()));
        }
        Ok(Self(v.into_iter().collect()))
    }
}

impl From<ScopeSet> for Vec<Scope> {
    fn from(s: ScopeSet) -> Self {
        s.0.into_iter().collect()
    }
}

impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_claim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_the_documented_alphabet() {
        let s = Scope::parse("deploy:prod/eu-west_1.a").unwrap();
        assert_eq!(s.as_str(), "deploy:prod/eu-west_1.a");
    }

    #[test]
    fn parse_rejects_wildcards_spaces_and_empties() {
        assert_eq!(Scope::parse(""), Err(ScopeError::Empty));
        assert_eq!(
            Scope::parse("deploy:*"),
            Err(ScopeError::BadChar {
                scope: "deploy:*".into(),
                bad: '*'
            })
        );
        assert_eq!(
            Scope::parse("a b"),
            Err(ScopeError::BadChar {
                scope: "a b".into(),
                bad: ' '
            })
        );
        let long = "a".repeat(MAX_SCOPE_LEN + 1);
        assert_eq!(
            Scope::parse(&long),
            Err(ScopeError::TooLong("a".repeat(32)))
        );
    }

    #[test]
    fn excess_lists_exactly_the_undeclared_scopes() {
        let declared = ScopeSet::parse(&["logs:read", "metrics:read"]).unwrap();
        let asked = ScopeSet::parse(&["logs:read", "service:restart", "db:write"]).unwrap();
        let excess: Vec<String> = asked
            .excess_over(&declared)
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(
            excess,
            vec!["db:write".to_string(), "service:restart".to_string()]
        );
        assert!(ScopeSet::parse(&["logs:read"])
            .unwrap()
            .excess_over(&declared)
            .is_empty());
    }

    #[test]
    fn claim_form_round_trips_sorted() {
        let set = ScopeSet::from_claim("b:x  a:y").unwrap();
        assert_eq!(set.to_claim(), "a:y b:x");
        assert_eq!(ScopeSet::from_claim(&set.to_claim()).unwrap(), set);
    }

    #[test]
    fn too_many_scopes_is_an_error() {
        let many: Vec<String> = (0..=MAX_SCOPES).map(|i| format!("s{i}")).collect();
        assert_eq!(
            ScopeSet::parse(&many),
            Err(ScopeError::TooMany(MAX_SCOPES + 1))
        );
    }
}
