//! TEMPORARY STUB (replaced by the real module).
#![allow(missing_docs, dead_code, unused_variables)]
use crate::spiffe::SpiffeId;
#[derive(Debug, Clone, Default)]
pub struct TrustBundle;
impl TrustBundle {
    pub fn from_json(s: &str) -> Result<Self, IdentityError> { Ok(TrustBundle) }
    pub fn to_json(&self) -> String { String::new() }
    pub fn load(p: &std::path::Path) -> Result<Self, IdentityError> { Ok(TrustBundle) }
}
#[derive(Debug, Clone)]
pub struct VerifiedIdentity { pub spiffe_id: SpiffeId, pub svid_digest: String, pub expires_at: i64 }
#[derive(Debug, thiserror::Error)]
pub enum IdentityError { #[error("x")] BadSignature }
pub fn verify_svid(svid: &str, bundle: &TrustBundle, audience: &str, now: i64) -> Result<VerifiedIdentity, IdentityError> { Err(IdentityError::BadSignature) }
#[derive(Debug)]
pub struct DevTrustDomain;
impl DevTrustDomain {
    pub fn generate(name: &str, rng: &mut impl rand_core::CryptoRngCore) -> Result<Self, IdentityError> { Ok(DevTrustDomain) }
    pub fn from_pkcs8_der(name: &str, der: &[u8]) -> Result<Self, IdentityError> { Ok(DevTrustDomain) }
    pub fn to_pkcs8_der(&self) -> Vec<u8> { vec![] }
    pub fn name(&self) -> &str { "" }
    pub fn bundle(&self) -> TrustBundle { TrustBundle }
    pub fn mint_svid(&self, id: &SpiffeId, audience: &str, now: i64, ttl_secs: i64) -> Result<String, IdentityError> { Ok(String::new()) }
}
