//! Guard: what a resource server does with a step token before acting.
//!
//! A resource server that accepts stepgate tokens checks, in this order:
//! the signature against the published JWKS, the issuer, that it is the
//! audience, the expiry, that the token carries the scope the action
//! needs, and — because a step's token dies when the step ends — that
//! stepgate still reports it active (RFC 7662 introspection). The demo's
//! tools use this guard; resource servers in other languages do the same
//! with their own JWT library.

use crate::service::Introspection;
use crate::token::{verify, Jwks, StepClaims, TokenError, VerifyOptions};

/// Why a resource server refused a token.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// Signature, issuer, audience or expiry check failed.
    #[error("token rejected: {0}")]
    Token(#[from] TokenError),
    /// The token lacks the scope the action needs.
    #[error("token lacks scope `{0}`")]
    MissingScope(String),
    /// stepgate no longer reports the token active (revoked or expired).
    #[error("token is no longer active (its step ended or it was revoked)")]
    Inactive,
}

/// A resource server's acceptance rules.
#[derive(Debug, Clone)]
pub struct Guard {
    /// Expected `iss`.
    pub issuer: String,
    /// This server's audience.
    pub audience: String,
    /// Keys to verify with.
    pub jwks: Jwks,
}

impl Guard {
    /// Checks `token` for an action that needs `scope`, at `now` (seconds),
    /// given stepgate's introspection answer for it.
    pub fn check(
        &self,
        token: &str,
        scope: &str,
        now: i64,
        status: &Introspection,
    ) -> Result<StepClaims, GuardError> {
        let opts = VerifyOptions {
            issuer: &self.issuer,
            audience: &self.audience,
            now,
        };
        let claims = verify(token, &self.jwks, &opts)?;
        if !claims.scope.split(' ').any(|s| s == scope) {
            return Err(GuardError::MissingScope(scope.to_string()));
        }
        if !status.active || status.jti.as_deref() != Some(claims.jti.as_str()) {
            return Err(GuardError::Inactive);
        }
        Ok(claims)
    }
}
