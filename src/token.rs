//! Step tokens: the short-lived JWTs stepgate hands an agent for one step.
//!
//! The engine decides *whether* a step may run (policy, review); this module
//! only turns that decision into a signed token and checks tokens that come
//! back. A token is a compact JWS signed with Ed25519 (`alg` `EdDSA`), typed
//! [`TOKEN_TYP`], naming its key by `kid`; the claims are [`StepClaims`].
//! Resource servers verify it with the published [`Jwks`], in this crate or
//! in any standard JWT library.
//!
//! Neighbours: [`crate::identity`] proves who the agent is before a token is
//! minted; [`crate::scope`] defines the `scope` claim; the engine builds the
//! claims and records [`digest`] of each token, never the token itself.
//!
//! ```
//! use stepgate::token::{intent_digest, mint, verify, Jwks, KeyPair, StepClaims, VerifyOptions};
//!
//! let key = KeyPair::from_secret_bytes([7u8; 32]);
//! let claims = StepClaims {
//!     iss: "https://stepgate.example".into(),
//!     sub: "spiffe://dev.stepgate.local/agent/planner".into(),
//!     aud: "db://orders".into(),
//!     scope: "db:read".into(),
//!     exp: 1_000_300,
//!     iat: 1_000_000,
//!     nbf: 1_000_000,
//!     jti: "01890a5d-ac96-774b-bcce-b302099a8057".into(),
//!     run: "run-1".into(),
//!     step: "fetch".into(),
//!     wf: "sha256:00".into(),
//!     intent: intent_digest("read the open orders"),
//!     approval: None,
//!     act: None,
//!     cnf: None,
//! };
//! let token = mint(&key, &claims)?;
//! let jwks = Jwks { keys: vec![key.public_jwk()] };
//! let opts = VerifyOptions {
//!     issuer: "https://stepgate.example",
//!     audience: "db://orders",
//!     now: 1_000_100,
//! };
//! assert_eq!(verify(&token, &jwks, &opts)?, claims);
//! # Ok::<(), stepgate::token::TokenError>(())
//! ```
//!
//! The JWS is assembled here with `ed25519-dalek` and `base64` rather than
//! through `jsonwebtoken`: that keeps the header bytes exactly
//! `{"alg","kid","typ"}`, lets [`verify`] refuse a bad header before any key
//! is touched, and keeps every check on the injected `now` with zero leeway.
//! The tests check the result against `jsonwebtoken` as an independent
//! verifier.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::scope::{ScopeError, ScopeSet};

/// The `typ` header of every step token (an explicit type, per RFC 8725).
pub const TOKEN_TYP: &str = "stepgate-step+jwt";

/// The only `alg` header a step token may carry.
pub const TOKEN_ALG: &str = "EdDSA";

/// Longest token [`verify`] reads and [`mint`] produces, in bytes.
pub const MAX_TOKEN_BYTES: usize = 8192;

/// Longest `kid` echoed back in an error; longer ones are cut to this.
const MAX_KID_IN_ERROR: usize = 64;

/// Why a token could not be minted or was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token is longer than [`MAX_TOKEN_BYTES`].
    #[error("token is {len} bytes; at most {MAX_TOKEN_BYTES} are allowed")]
    Oversize {
        /// Length of the token, in bytes.
        len: usize,
    },
    /// A part of the token could not be decoded; the text names the part.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The header named an algorithm other than `EdDSA`.
    #[error("unsupported algorithm `{0}`; only `EdDSA` is accepted")]
    UnsupportedAlg(String),
    /// The header `typ` was missing or not [`TOKEN_TYP`].
    #[error("token type is {0:?}; expected `{TOKEN_TYP}`")]
    WrongType(Option<String>),
    /// The header carried no `kid`.
    #[error("token header has no `kid`")]
    MissingKid,
    /// No key in the JWKS has this `kid` (cut to 64 characters).
    #[error("no key with kid `{0}`")]
    UnknownKid(String),
    /// The JWKS entry for this `kid` is not a usable Ed25519 public key.
    #[error("key `{kid}` is not a usable ed25519 public key")]
    BadKey {
        /// The key's id.
        kid: String,
    },
    /// The signature did not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// `exp` is at or before `now`.
    #[error("token expired at {exp}; now is {now}")]
    Expired {
        /// The token's `exp`.
        exp: i64,
        /// The time of the check.
        now: i64,
    },
    /// `nbf` is after `now`.
    #[error("token is not valid before {nbf}; now is {now}")]
    NotYetValid {
        /// The token's `nbf`.
        nbf: i64,
        /// The time of the check.
        now: i64,
    },
    /// `iss` is not the expected issuer.
    #[error("issuer is `{found}`; expected `{expected}`")]
    WrongIssuer {
        /// The issuer the verifier expects.
        expected: String,
        /// The issuer in the token.
        found: String,
    },
    /// `aud` is not the expected audience.
    #[error("audience is `{found}`; expected `{expected}`")]
    WrongAudience {
        /// The audience the verifier expects.
        expected: String,
        /// The audience in the token.
        found: String,
    },
    /// `aud` is not a single string (step tokens have exactly one audience).
    #[error("audience must be one string")]
    AudienceNotString,
    /// A required claim is absent.
    #[error("required claim `{0}` is missing")]
    MissingClaim(&'static str),
    /// The `scope` claim does not parse.
    #[error("bad scope claim: {0}")]
    BadScope(ScopeError),
    /// The claims could not be serialised while minting.
    #[error("cannot encode token: {0}")]
    Encoding(String),
}

/// An Ed25519 signing key and its key id.
///
/// The `kid` is the RFC 7638 thumbprint of the public key, so it is the same
/// wherever the key is loaded and needs no registry. `Debug` shows only the
/// `kid`; the secret never leaves except through [`KeyPair::secret_bytes`].
#[derive(Clone)]
pub struct KeyPair {
    signing: SigningKey,
    kid: String,
}

impl KeyPair {
    /// Draws a fresh key from `rng` (use `OsRng` in production).
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        Self::from_signing_key(SigningKey::generate(rng))
    }

    /// Rebuilds a key from the 32 secret bytes [`KeyPair::secret_bytes`] gave.
    pub fn from_secret_bytes(secret: [u8; 32]) -> Self {
        Self::from_signing_key(SigningKey::from_bytes(&secret))
    }

    fn from_signing_key(signing: SigningKey) -> Self {
        let x = b64(signing.verifying_key().as_bytes());
        let kid = okp_thumbprint(&x);
        Self { signing, kid }
    }

    /// The 32 secret bytes, for persisting the key; keep them secret.
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// The key id: RFC 7638 thumbprint, base64url without padding.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public half as a JWK, ready to publish.
    pub fn public_jwk(&self) -> Jwk {
        Jwk {
            kty: "OKP".to_string(),
            crv: "Ed25519".to_string(),
            x: b64(self.signing.verifying_key().as_bytes()),
            kid: self.kid.clone(),
            alg: Some(TOKEN_ALG.to_string()),
            use_: Some("sig".to_string()),
        }
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("kid", &self.kid)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// RFC 7638 thumbprint of an Ed25519 JWK with public coordinate `x`.
///
/// The canonical form has the required members in lexicographic order and
/// no whitespace; `x` is base64url, so it needs no JSON escaping.
fn okp_thumbprint(x: &str) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    b64(&Sha256::digest(canonical.as_bytes()))
}

/// One Ed25519 public key in JWK form (RFC 8037).
///
/// Extra members written by other tools are ignored on input; `alg` and
/// `use` may be absent on input and are always written by [`KeyPair`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// Key type; `OKP` for Ed25519.
    pub kty: String,
    /// Curve; `Ed25519`.
    pub crv: String,
    /// The public key, base64url without padding.
    pub x: String,
    /// Key id; stepgate writes the RFC 7638 thumbprint.
    pub kid: String,
    /// Algorithm; `EdDSA` when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    /// Intended use; `sig` when present.
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
}

impl Jwk {
    /// The verifying key, if this JWK is a well-formed Ed25519 key.
    fn verifying_key(&self) -> Option<VerifyingKey> {
        let alg_ok = self.alg.as_deref().is_none_or(|a| a == TOKEN_ALG);
        if self.kty != "OKP" || self.crv != "Ed25519" || !alg_ok {
            return None;
        }
        let bytes: [u8; 32] = URL_SAFE_NO_PAD.decode(&self.x).ok()?.try_into().ok()?;
        VerifyingKey::from_bytes(&bytes).ok()
    }

    /// True for a well-formed Ed25519 key whose `kid` is its own RFC 7638
    /// thumbprint, as every key stepgate writes is: such a `kid` cannot be
    /// claimed by another key.
    pub fn is_self_named(&self) -> bool {
        self.verifying_key().is_some() && self.kid == okp_thumbprint(&self.x)
    }
}

/// A JWK set (RFC 7517 section 5): the keys a verifier trusts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    /// The keys, current first by convention.
    pub keys: Vec<Jwk>,
}

impl Jwks {
    /// The key with this `kid`, if any.
    pub fn find(&self, kid: &str) -> Option<&Jwk> {
        self.keys.iter().find(|k| k.kid == kid)
    }
}

/// One step in an RFC 8693 delegation chain (`act` claim).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The acting party.
    pub sub: String,
    /// Whoever acted before this party, if anyone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Box<Actor>>,
}

/// Proof-of-possession confirmation (RFC 7800 `cnf`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cnf {
    /// RFC 7638 thumbprint of the key the agent proved.
    pub jkt: String,
}

/// The claims of a step token, with their JWT names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepClaims {
    /// Issuer: the stepgate instance.
    pub iss: String,
    /// Subject: the agent's SPIFFE ID.
    pub sub: String,
    /// Audience: the step's resource; exactly one value.
    pub aud: String,
    /// Granted scopes, space-separated.
    pub scope: String,
    /// Expiry, unix seconds.
    pub exp: i64,
    /// Issue time, unix seconds.
    pub iat: i64,
    /// Not-before time, unix seconds.
    pub nbf: i64,
    /// Token id: UUID v7 text.
    pub jti: String,
    /// Run id.
    pub run: String,
    /// Step id within the workflow.
    pub step: String,
    /// Digest of the workflow definition.
    pub wf: String,
    /// Digest of the intent text, `sha256:<hex>` (see [`intent_digest`]).
    pub intent: String,
    /// Review batch id, when the step was stepped up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
    /// Delegation chain, when an agent acts for another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Actor>,
    /// Key confirmation, when the agent proved a key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Cnf>,
}

/// What [`verify`] checks the claims against. Leeway is always zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyOptions<'a> {
    /// The exact `iss` expected.
    pub issuer: &'a str,
    /// The exact `aud` expected.
    pub audience: &'a str,
    /// The time of the check, unix seconds.
    pub now: i64,
}

/// The header stepgate writes; field order is the serialised order.
#[derive(Serialize)]
struct OutHeader<'a> {
    alg: &'a str,
    kid: &'a str,
    typ: &'a str,
}

/// Signs `claims` with `key` into a compact JWS.
///
/// Ed25519 signatures are deterministic, so the same key and claims always
/// give the same token. Refuses claims whose `scope` does not parse and
/// tokens longer than [`MAX_TOKEN_BYTES`], which [`verify`] would refuse.
pub fn mint(key: &KeyPair, claims: &StepClaims) -> Result<String, TokenError> {
    ScopeSet::from_claim(&claims.scope).map_err(TokenError::BadScope)?;
    let header = OutHeader {
        alg: TOKEN_ALG,
        kid: key.kid(),
        typ: TOKEN_TYP,
    };
    let header = serde_json::to_vec(&header).map_err(|e| TokenError::Encoding(e.to_string()))?;
    let payload = serde_json::to_vec(claims).map_err(|e| TokenError::Encoding(e.to_string()))?;

    let signing_input = format!("{}.{}", b64(&header), b64(&payload));
    let signature = key.signing.sign(signing_input.as_bytes());
    let token = format!("{signing_input}.{}", b64(&signature.to_bytes()));

    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Oversize { len: token.len() });
    }
    Ok(token)
}

/// The header as read; unknown members are ignored, duplicates refused.
#[derive(Deserialize)]
struct InHeader {
    alg: Option<String>,
    typ: Option<String>,
    kid: Option<String>,
    crit: Option<serde_json::Value>,
}

/// The claims as read, before presence and value checks.
#[derive(Deserialize)]
struct InClaims {
    iss: Option<String>,
    sub: Option<String>,
    aud: Option<serde_json::Value>,
    scope: Option<String>,
    exp: Option<i64>,
    iat: Option<i64>,
    nbf: Option<i64>,
    jti: Option<String>,
    run: Option<String>,
    step: Option<String>,
    wf: Option<String>,
    intent: Option<String>,
    approval: Option<String>,
    act: Option<Actor>,
    cnf: Option<Cnf>,
}

/// Checks a token and returns its claims.
///
/// Safe on hostile input: the length is checked first, then the shape, then
/// the header (only `EdDSA` of type [`TOKEN_TYP`] with a known `kid`), and
/// only then the signature. Claims are checked after the signature: `iss`
/// and `aud` exactly, `exp > now`, `nbf <= now`, every claim of
/// [`StepClaims`] present, `scope` parsing.
pub fn verify(token: &str, jwks: &Jwks, opts: &VerifyOptions) -> Result<StepClaims, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Oversize { len: token.len() });
    }
    let (header_b64, payload_b64, signature_b64) = split_parts(token)?;

    let header: InHeader = decode_json(header_b64, "header")?;
    let kid = check_header(header)?;
    let key = find_key(jwks, &kid)?;

    let signature = decode_signature(signature_b64)?;
    let signing_input = &token[..header_b64.len() + 1 + payload_b64.len()];
    key.verify_strict(signing_input.as_bytes(), &signature)
        .map_err(|_| TokenError::BadSignature)?;

    let claims: InClaims = decode_json(payload_b64, "payload")?;
    check_claims(claims, opts)
}

/// The `kid` a token's header names, checked as [`verify`] checks the
/// header but without a signature check: for routing a token to the
/// engine that signed it, never for trusting it.
pub fn header_kid(token: &str) -> Result<String, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Oversize { len: token.len() });
    }
    let (header_b64, _, _) = split_parts(token)?;
    check_header(decode_json(header_b64, "header")?)
}

/// Splits a compact JWS into exactly three parts.
///
/// An empty signature part is let through so that an unsigned (`alg`
/// `none`) token is reported as such; it fails later as a bad signature part.
fn split_parts(token: &str) -> Result<(&str, &str, &str), TokenError> {
    let mut parts = token.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(p), Some(s), None) if !h.is_empty() && !p.is_empty() => Ok((h, p, s)),
        _ => Err(TokenError::Malformed(
            "token must have three dot-separated parts",
        )),
    }
}

/// Decodes one base64url part and parses it as JSON of type `T`.
fn decode_json<T: serde::de::DeserializeOwned>(
    part: &str,
    name: &'static str,
) -> Result<T, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed(name))?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed(name))
}

/// Checks `alg`, `crit`, `typ` and `kid`, in that order; returns the `kid`.
fn check_header(header: InHeader) -> Result<String, TokenError> {
    let alg = header.alg.unwrap_or_default();
    if alg != TOKEN_ALG {
        return Err(TokenError::UnsupportedAlg(alg));
    }
    // No extension is understood, so any critical one must be refused (RFC 7515 4.1.11).
    if header.crit.is_some() {
        return Err(TokenError::Malformed("header has a `crit` member"));
    }
    if header.typ.as_deref() != Some(TOKEN_TYP) {
        return Err(TokenError::WrongType(header.typ));
    }
    header.kid.ok_or(TokenError::MissingKid)
}

/// Looks `kid` up in `jwks` and turns it into a verifying key.
fn find_key(jwks: &Jwks, kid: &str) -> Result<VerifyingKey, TokenError> {
    let jwk = jwks
        .find(kid)
        .ok_or_else(|| TokenError::UnknownKid(cut(kid)))?;
    jwk.verifying_key()
        .ok_or_else(|| TokenError::BadKey { kid: cut(kid) })
}

fn decode_signature(part: &str) -> Result<Signature, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed("signature"))?;
    let bytes: [u8; 64] = bytes
        .try_into()
        .map_err(|_| TokenError::Malformed("signature"))?;
    Ok(Signature::from_bytes(&bytes))
}

/// Presence first, then issuer, audience, time and scope.
fn check_claims(c: InClaims, opts: &VerifyOptions) -> Result<StepClaims, TokenError> {
    let claims = StepClaims {
        iss: c.iss.ok_or(TokenError::MissingClaim("iss"))?,
        sub: c.sub.ok_or(TokenError::MissingClaim("sub"))?,
        aud: audience_string(c.aud)?,
        scope: c.scope.ok_or(TokenError::MissingClaim("scope"))?,
        exp: c.exp.ok_or(TokenError::MissingClaim("exp"))?,
        iat: c.iat.ok_or(TokenError::MissingClaim("iat"))?,
        nbf: c.nbf.ok_or(TokenError::MissingClaim("nbf"))?,
        jti: c.jti.ok_or(TokenError::MissingClaim("jti"))?,
        run: c.run.ok_or(TokenError::MissingClaim("run"))?,
        step: c.step.ok_or(TokenError::MissingClaim("step"))?,
        wf: c.wf.ok_or(TokenError::MissingClaim("wf"))?,
        intent: c.intent.ok_or(TokenError::MissingClaim("intent"))?,
        approval: c.approval,
        act: c.act,
        cnf: c.cnf,
    };

    if claims.iss != opts.issuer {
        return Err(TokenError::WrongIssuer {
            expected: opts.issuer.to_string(),
            found: claims.iss,
        });
    }
    if claims.aud != opts.audience {
        return Err(TokenError::WrongAudience {
            expected: opts.audience.to_string(),
            found: claims.aud,
        });
    }
    if claims.exp <= opts.now {
        return Err(TokenError::Expired {
            exp: claims.exp,
            now: opts.now,
        });
    }
    if claims.nbf > opts.now {
        return Err(TokenError::NotYetValid {
            nbf: claims.nbf,
            now: opts.now,
        });
    }
    ScopeSet::from_claim(&claims.scope).map_err(TokenError::BadScope)?;
    Ok(claims)
}

/// The `aud` claim as one string; arrays (even of one value) are refused.
fn audience_string(aud: Option<serde_json::Value>) -> Result<String, TokenError> {
    match aud {
        None => Err(TokenError::MissingClaim("aud")),
        Some(serde_json::Value::String(s)) => Ok(s),
        Some(_) => Err(TokenError::AudienceNotString),
    }
}

/// `sha256:<lowercase hex>` of the token bytes: what logs and events record.
pub fn digest(token: &str) -> String {
    sha256_text(token)
}

/// `sha256:<lowercase hex>` of the intent text, for the `intent` claim.
pub fn intent_digest(text: &str) -> String {
    sha256_text(text)
}

fn sha256_text(text: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(text.as_bytes())))
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A copy of `kid` short enough to put in an error.
fn cut(kid: &str) -> String {
    kid.chars().take(MAX_KID_IN_ERROR).collect()
}

#[cfg(test)]
mod tests;
