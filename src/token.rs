//! TEMPORARY STUB (replaced by the real module).
#![allow(missing_docs, dead_code, unused_variables)]
use serde::{Deserialize, Serialize};
pub const TOKEN_TYP: &str = "stepgate-step+jwt";
pub const MAX_TOKEN_BYTES: usize = 8192;
#[derive(Debug)]
pub struct KeyPair;
impl KeyPair {
    pub fn generate(rng: &mut impl rand_core::CryptoRngCore) -> Self { KeyPair }
    pub fn from_secret_bytes(b: [u8; 32]) -> Self { KeyPair }
    pub fn secret_bytes(&self) -> [u8; 32] { [0; 32] }
    pub fn kid(&self) -> &str { "" }
    pub fn public_jwk(&self) -> Jwk { Jwk::default() }
}
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk { pub kty: String, pub crv: String, pub x: String, pub kid: String, pub alg: String, #[serde(rename = "use")] pub use_: String }
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks { pub keys: Vec<Jwk> }
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor { pub sub: String, pub act: Option<Box<Actor>> }
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cnf { pub jkt: String }
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepClaims { pub iss: String, pub sub: String, pub aud: String, pub scope: String, pub exp: i64, pub iat: i64, pub nbf: i64, pub jti: String, pub run: String, pub step: String, pub wf: String, pub intent: String, pub approval: Option<String>, pub act: Option<Actor>, pub cnf: Option<Cnf> }
#[derive(Debug, thiserror::Error)]
pub enum TokenError { #[error("x")] BadSignature }
pub struct VerifyOptions<'a> { pub issuer: &'a str, pub audience: &'a str, pub now: i64 }
pub fn mint(key: &KeyPair, claims: &StepClaims) -> Result<String, TokenError> { Err(TokenError::BadSignature) }
pub fn verify(token: &str, jwks: &Jwks, opts: &VerifyOptions) -> Result<StepClaims, TokenError> { Err(TokenError::BadSignature) }
pub fn digest(token: &str) -> String { String::new() }
