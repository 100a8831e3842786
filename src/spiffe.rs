//! SPIFFE IDs: the names of workloads.
//!
//! A SPIFFE ID is a URI `spiffe://<trust-domain>/<path>`. Workflows name
//! each step's agent by SPIFFE ID and the identity module checks that a
//! JWT-SVID's `sub` is one. Parsing follows the SPIFFE ID standard: a
//! lowercase trust domain of letters, digits, `.`, `-` and `_`; a path of
//! non-empty segments of letters, digits, `.`, `-` and `_`, where `.` and
//! `..` alone are not allowed; no port, user info, query or fragment.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest SPIFFE ID accepted, in bytes (the standard's limit).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

/// Why a string is not a SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// Did not start with `spiffe://`.
    #[error("must start with `spiffe://`")]
    Scheme,
    /// Longer than [`MAX_SPIFFE_ID_LEN`].
    #[error("longer than {MAX_SPIFFE_ID_LEN} bytes")]
    TooLong,
    /// The trust domain was empty.
    #[error("trust domain is empty")]
    EmptyTrustDomain,
    /// The trust domain held a character that is not allowed.
    #[error("trust domain contains `{0}`; allowed are a-z 0-9 . - _")]
    TrustDomainChar(char),
    /// A workload ID needs a path after the trust domain.
    #[error("has no path after the trust domain")]
    EmptyPath,
    /// The path had an empty segment (`//` or a trailing `/`).
    #[error("path has an empty segment")]
    EmptySegment,
    /// The path had a `.` or `..` segment.
    #[error("path has a `.` or `..` segment")]
    DotSegment,
    /// The path held a character that is not allowed.
    #[error("path contains `{0}`; allowed are a-z A-Z 0-9 . - _ and /")]
    PathChar(char),
}

/// A validated SPIFFE ID naming one workload.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SpiffeId {
    text: String,
    domain_len: usize,
}

impl SpiffeId {
    /// Parses `s`, which must be a SPIFFE ID with a non-empty path.
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        if s.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = s.strip_prefix("spiffe://").ok_or(SpiffeIdError::Scheme)?;
        let (domain, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        check_trust_domain(domain)?;
        check_path(path)?;
        Ok(Self {
            text: s.to_string(),
            domain_len: domain.len(),
        })
    }

    /// The trust domain, e.g. `example.org`.
    pub fn trust_domain(&self) -> &str {
        &self.text["spiffe://".len().."spiffe://".len() + self.domain_len]
    }

    /// The path, starting with `/`.
    pub fn path(&self) -> &str {
        &self.text["spiffe://".len() + self.domain_len..]
    }

    /// The whole ID as text.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// Checks a bare trust domain name such as `dev.stepgate.local`.
pub fn check_trust_domain(domain: &str) -> Result<(), SpiffeIdError> {
    if domain.is_empty() {
        return Err(SpiffeIdError::EmptyTrustDomain);
    }
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_');
    match domain.chars().find(|c| !ok(*c)) {
        Some(c) => Err(SpiffeIdError::TrustDomainChar(c)),
        None => Ok(()),
    }
}

fn check_path(path: &str) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Err(SpiffeIdError::EmptyPath);
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    for segment in path[1..].split('/') {
        if segment.is_empty() {
            return Err(SpiffeIdError::EmptySegment);
        }
        if segment == "." || segment == ".." {
            return Err(SpiffeIdError::DotSegment);
        }
        if let Some(c) = segment.chars().find(|c| !ok(*c)) {
            return Err(SpiffeIdError::PathChar(c));
        }
    }
    Ok(())
}

impl TryFrom<String> for SpiffeId {
    type Error = SpiffeIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<SpiffeId> for String {
    fn from(id: SpiffeId) -> Self {
        id.text
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_trust_domain_and_path() {
        let id = SpiffeId::parse("spiffe://prod.example.org/ns/ci/sa/runner").unwrap();
        assert_eq!(id.trust_domain(), "prod.example.org");
        assert_eq!(id.path(), "/ns/ci/sa/runner");
        assert_eq!(id.to_string(), "spiffe://prod.example.org/ns/ci/sa/runner");
    }

    #[test]
    fn rejects_what_the_standard_forbids() {
        use SpiffeIdError::*;
        let cases = [
            ("https://example.org/a", Scheme),
            ("spiffe:///a", EmptyTrustDomain),
            ("spiffe://Example.org/a", TrustDomainChar('E')),
            ("spiffe://example.org:443/a", TrustDomainChar(':')),
            ("spiffe://user@example.org/a", TrustDomainChar('@')),
            ("spiffe://example.org", EmptyPath),
            ("spiffe://example.org/", EmptySegment),
            ("spiffe://example.org/a//b", EmptySegment),
            ("spiffe://example.org/a/../b", DotSegment),
            ("spiffe://example.org/a?x=1", PathChar('?')),
            ("spiffe://example.org/a#f", PathChar('#')),
        ];
        for (input, want) in cases {
            assert_eq!(SpiffeId::parse(input), Err(want), "{input}");
        }
        let long = format!("spiffe://example.org/{}", "a".repeat(MAX_SPIFFE_ID_LEN));
        assert_eq!(SpiffeId::parse(&long), Err(TooLong));
    }
}
