//! Workload identity: checking the JWT-SVID an agent presents.
//!
//! Before the engine mints a step token ([`crate::token`]) it must know which
//! agent is asking. Agents prove that with a SPIFFE JWT-SVID: a JWT whose
//! `sub` is the agent's SPIFFE ID ([`crate::spiffe`]), signed by a key of that
//! ID's trust domain. [`verify_svid`] checks one against a [`TrustBundle`]
//! and returns a [`VerifiedIdentity`]; [`DevTrustDomain`] is a local issuer
//! for development and tests, standing in for SPIRE.
//!
//! Algorithms follow the JWT-SVID standard: RS256/384/512, ES256/384 and
//! PS256/384/512 (see [`SVID_ALGORITHMS`]). ES512 is in the standard but the
//! `jsonwebtoken` backend cannot verify it, so it is refused; supporting it
//! would take a P-521 verifier. `EdDSA`, `none` and every HMAC algorithm are
//! refused before any key is looked at.
//!
//! ```
//! use rand_core::OsRng;
//! use stepgate::identity::{verify_svid, DevTrustDomain};
//! use stepgate::spiffe::SpiffeId;
//!
//! let domain = DevTrustDomain::generate("dev.stepgate.local", &mut OsRng)?;
//! let agent = SpiffeId::parse("spiffe://dev.stepgate.local/agent/planner")?;
//! let svid = domain.mint_svid(&agent, "stepgate", 1_000_000, 300)?;
//! let who = verify_svid(&svid, &domain.bundle(), "stepgate", 1_000_010)?;
//! assert_eq!(who.spiffe_id, agent);
//! assert_eq!(who.expires_at, 1_000_300);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Trust bundle file
//!
//! A JSON object with one member, `trust_domains`, mapping each trust domain
//! name to that domain's SPIFFE bundle document (a JWK set):
//!
//! ```json
//! {
//!   "trust_domains": {
//!     "dev.stepgate.local": {
//!       "keys": [
//!         {"kty": "EC", "crv": "P-256", "x": "…", "y": "…", "kid": "…", "use": "jwt-svid"}
//!       ],
//!       "spiffe_sequence": 1
//!     }
//!   }
//! }
//! ```
//!
//! Keys whose `use` is `jwt-svid`, or that have no `use`, are JWT-SVID keys:
//! each needs a `kid` unique in its domain and must be an EC key on P-256 or
//! P-384 or an RSA key of at least 2048 bits. Keys with another `use` (such
//! as `x509-svid`) are kept as written and never used here. Unknown members
//! inside a domain document are ignored, as other tools add some; an unknown
//! member next to `trust_domains` is an error, as people write this file.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey};
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use rand_core::CryptoRngCore;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use crate::spiffe::{check_trust_domain, SpiffeId, SpiffeIdError};

/// Longest JWT-SVID [`verify_svid`] reads, in bytes.
pub const SVID_MAX_BYTES: usize = 8192;

/// Longest trust bundle text accepted, in bytes.
pub const BUNDLE_MAX_BYTES: usize = 1 << 20;

/// The `alg` values a JWT-SVID may carry and this module can verify.
pub const SVID_ALGORITHMS: [&str; 8] = [
    "RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "PS384", "PS512",
];

/// The JWK `use` of keys that sign JWT-SVIDs in a SPIFFE bundle.
pub const JWT_SVID_USE: &str = "jwt-svid";

/// Smallest RSA modulus accepted in a bundle, in bits.
const MIN_RSA_BITS: usize = 2048;

/// Longest `kid` echoed back in an error; longer ones are cut to this.
const MAX_KID_IN_ERROR: usize = 64;

/// Why an SVID was refused, a bundle was not loaded or a dev SVID not minted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The SVID is longer than [`SVID_MAX_BYTES`].
    #[error("svid is {len} bytes; at most {SVID_MAX_BYTES} are allowed")]
    Oversize {
        /// Length of the SVID, in bytes.
        len: usize,
    },
    /// A part of the SVID could not be decoded; the text names the part.
    #[error("malformed svid: {0}")]
    Malformed(&'static str),
    /// The header named an algorithm outside [`SVID_ALGORITHMS`].
    #[error("unsupported svid algorithm `{0}`")]
    UnsupportedAlg(String),
    /// The header `typ` was present and neither `JWT` nor `JOSE`.
    #[error("svid type is `{0}`; expected `JWT` or `JOSE`")]
    WrongType(String),
    /// The header carried no `kid`.
    #[error("svid header has no `kid`")]
    MissingKid,
    /// A required claim is absent.
    #[error("svid has no `{0}` claim")]
    MissingClaim(&'static str),
    /// `sub` is not a SPIFFE ID.
    #[error("svid subject is not a spiffe id: {0}")]
    NotSpiffeId(SpiffeIdError),
    /// The subject's trust domain is not in the bundle.
    #[error("trust domain `{0}` is not in the trust bundle")]
    UnknownTrustDomain(String),
    /// The subject's trust domain has no JWT-SVID key with this `kid`.
    #[error("trust domain `{trust_domain}` has no jwt-svid key `{kid}`")]
    UnknownKid {
        /// The trust domain searched.
        trust_domain: String,
        /// The `kid` asked for (cut to 64 characters).
        kid: String,
    },
    /// The key found cannot be used with the header's algorithm.
    #[error("key `{kid}` cannot verify `{alg}`")]
    KeyAlgMismatch {
        /// The key's id.
        kid: String,
        /// The header's algorithm.
        alg: String,
    },
    /// The key found is not a valid public key.
    #[error("key `{kid}` is not a valid public key")]
    BadKey {
        /// The key's id.
        kid: String,
    },
    /// The signature did not verify.
    #[error("svid signature does not verify")]
    BadSignature,
    /// `aud` does not hold the expected audience.
    #[error("svid audience does not include `{expected}`")]
    WrongAudience {
        /// The audience the verifier expects.
        expected: String,
    },
    /// `exp` is at or before `now`.
    #[error("svid expired at {exp}; now is {now}")]
    Expired {
        /// The SVID's `exp`.
        exp: i64,
        /// The time of the check.
        now: i64,
    },
    /// `nbf` is after `now`.
    #[error("svid is not valid before {nbf}; now is {now}")]
    NotYetValid {
        /// The SVID's `nbf`.
        nbf: i64,
        /// The time of the check.
        now: i64,
    },
    /// `iat` is after `now`.
    #[error("svid was issued at {iat}, after now ({now})")]
    IssuedInFuture {
        /// The SVID's `iat`.
        iat: i64,
        /// The time of the check.
        now: i64,
    },
    /// A trust bundle could not be read or is invalid.
    #[error("bad trust bundle{}: {reason}", in_file(.file))]
    BadBundle {
        /// The file it came from, when it came from one.
        file: Option<String>,
        /// What is wrong.
        reason: String,
    },
    /// A trust domain name is not valid.
    #[error("bad trust domain name `{name}`: {reason}")]
    BadTrustDomain {
        /// The name given.
        name: String,
        /// Why it is not valid.
        reason: SpiffeIdError,
    },
    /// A dev trust domain was asked to mint an ID of another domain.
    #[error("trust domain `{domain}` cannot issue `{id}`")]
    ForeignId {
        /// The dev trust domain.
        domain: String,
        /// The ID asked for.
        id: String,
    },
    /// A dev SVID lifetime was not positive or overflowed.
    #[error("svid lifetime {0} seconds is not usable")]
    BadTtl(i64),
    /// A dev signing key could not be read, written or used.
    #[error("dev signing key: {0}")]
    DevKey(&'static str),
}

fn in_file(file: &Option<String>) -> String {
    file.as_ref().map(|f| format!(" `{f}`")).unwrap_or_default()
}

/// Who the SVID proved the caller to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedIdentity {
    /// The agent's SPIFFE ID (the SVID's `sub`).
    pub spiffe_id: SpiffeId,
    /// `sha256:<hex>` of the SVID text, for events; never the SVID itself.
    pub svid_digest: String,
    /// The SVID's `exp`, unix seconds.
    pub expires_at: i64,
}

// ---- keys of one trust domain ----

/// The public part of a JWT-SVID key, checked when the bundle is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyMaterial {
    /// EC key; `wide` is P-384, otherwise P-256.
    Ec { wide: bool, x: String, y: String },
    /// RSA key.
    Rsa { n: String, e: String },
}

/// One key of a bundle: its JSON as written plus what verification needs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BundleKey {
    raw: Map<String, Value>,
    /// Present for JWT-SVID keys only; other keys are carried, not used.
    svid: Option<SvidKey>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SvidKey {
    kid: String,
    alg: Option<String>,
    material: KeyMaterial,
}

/// One trust domain's SPIFFE bundle document: its keys and sequence number.
///
/// Built from JSON with [`SvidJwks::from_json`], or by [`DevTrustDomain`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SvidJwks {
    keys: Vec<BundleKey>,
    sequence: Option<u64>,
    refresh_hint: Option<i64>,
}

/// The domain document as read; unknown members are ignored.
#[derive(Deserialize)]
struct DomainDoc {
    keys: Vec<Map<String, Value>>,
    spiffe_sequence: Option<u64>,
    spiffe_refresh_hint: Option<i64>,
}

impl SvidJwks {
    /// Parses one SPIFFE bundle document (`{"keys": [...], ...}`).
    pub fn from_json(text: &str) -> Result<Self, IdentityError> {
        let doc: DomainDoc = serde_json::from_str(text).map_err(|e| bundle_error(e.to_string()))?;
        Self::from_doc(doc).map_err(bundle_error)
    }

    fn from_doc(doc: DomainDoc) -> Result<Self, String> {
        let mut keys: Vec<BundleKey> = Vec::with_capacity(doc.keys.len());
        for (i, raw) in doc.keys.into_iter().enumerate() {
            let key = parse_bundle_key(i, raw)?;
            if let Some(kid) = key.svid.as_ref().map(|k| k.kid.as_str()) {
                if keys
                    .iter()
                    .any(|k| k.svid.as_ref().is_some_and(|s| s.kid == kid))
                {
                    return Err(format!("duplicate jwt-svid kid `{kid}`"));
                }
            }
            keys.push(key);
        }
        Ok(Self {
            keys,
            sequence: doc.spiffe_sequence,
            refresh_hint: doc.spiffe_refresh_hint,
        })
    }

    /// The `spiffe_sequence` of the document, if it had one.
    pub fn sequence(&self) -> Option<u64> {
        self.sequence
    }

    /// The `kid`s of the JWT-SVID keys, in file order.
    pub fn kids(&self) -> Vec<&str> {
        self.keys
            .iter()
            .filter_map(|k| k.svid.as_ref())
            .map(|k| k.kid.as_str())
            .collect()
    }

    /// The document as JSON, keys as they were written.
    pub fn to_value(&self) -> Value {
        let mut doc = Map::new();
        let keys = self
            .keys
            .iter()
            .map(|k| Value::Object(k.raw.clone()))
            .collect();
        doc.insert("keys".to_string(), Value::Array(keys));
        if let Some(seq) = self.sequence {
            doc.insert("spiffe_sequence".to_string(), Value::from(seq));
        }
        if let Some(hint) = self.refresh_hint {
            doc.insert("spiffe_refresh_hint".to_string(), Value::from(hint));
        }
        Value::Object(doc)
    }

    fn find(&self, kid: &str) -> Option<&SvidKey> {
        self.keys
            .iter()
            .filter_map(|k| k.svid.as_ref())
            .find(|k| k.kid == kid)
    }
}

fn bundle_error(reason: String) -> IdentityError {
    IdentityError::BadBundle { file: None, reason }
}

/// Reads key number `i`; JWT-SVID keys are checked, others only carried.
fn parse_bundle_key(i: usize, raw: Map<String, Value>) -> Result<BundleKey, String> {
    let text = |name: &str| raw.get(name).and_then(Value::as_str);
    let is_svid_key = match raw.get("use") {
        None => true,
        Some(u) => u.as_str() == Some(JWT_SVID_USE),
    };
    if !is_svid_key {
        return Ok(BundleKey { raw, svid: None });
    }

    let kid = text("kid")
        .filter(|k| !k.is_empty())
        .ok_or(format!("key {i} has no `kid`"))?;
    let material = match text("kty") {
        Some("EC") => ec_material(kid, text("crv"), text("x"), text("y"))?,
        Some("RSA") => rsa_material(kid, text("n"), text("e"))?,
        other => {
            return Err(format!(
                "key `{kid}` has unsupported kty `{}`",
                other.unwrap_or("")
            ))
        }
    };
    let alg = text("alg").map(str::to_string);
    if let Some(alg) = &alg {
        if !alg_fits(alg, &material) {
            return Err(format!("key `{kid}` cannot be used with its alg `{alg}`"));
        }
    }
    let svid = SvidKey {
        kid: kid.to_string(),
        alg,
        material,
    };
    Ok(BundleKey {
        raw,
        svid: Some(svid),
    })
}

fn ec_material(
    kid: &str,
    crv: Option<&str>,
    x: Option<&str>,
    y: Option<&str>,
) -> Result<KeyMaterial, String> {
    let (wide, size) = match crv {
        Some("P-256") => (false, 32),
        Some("P-384") => (true, 48),
        other => {
            return Err(format!(
                "key `{kid}` has unsupported crv `{}`",
                other.unwrap_or("")
            ))
        }
    };
    let coordinate = |c: Option<&str>| {
        c.filter(|c| decoded_len(c) == Some(size))
            .map(str::to_string)
            .ok_or(format!("key `{kid}` has a missing or bad coordinate"))
    };
    Ok(KeyMaterial::Ec {
        wide,
        x: coordinate(x)?,
        y: coordinate(y)?,
    })
}

fn rsa_material(kid: &str, n: Option<&str>, e: Option<&str>) -> Result<KeyMaterial, String> {
    let n_bytes = n.and_then(|n| URL_SAFE_NO_PAD.decode(n).ok());
    let e_ok = e
        .and_then(|e| URL_SAFE_NO_PAD.decode(e).ok())
        .is_some_and(|e| !e.is_empty());
    let (Some(n_bytes), Some(n), Some(e), true) = (n_bytes, n, e, e_ok) else {
        return Err(format!("key `{kid}` has a missing or bad `n` or `e`"));
    };
    if bit_length(&n_bytes) < MIN_RSA_BITS {
        return Err(format!(
            "rsa key `{kid}` is shorter than {MIN_RSA_BITS} bits"
        ));
    }
    Ok(KeyMaterial::Rsa {
        n: n.to_string(),
        e: e.to_string(),
    })
}

fn decoded_len(text: &str) -> Option<usize> {
    URL_SAFE_NO_PAD.decode(text).ok().map(|b| b.len())
}

/// Bits in a big-endian unsigned integer, leading zeros ignored.
fn bit_length(bytes: &[u8]) -> usize {
    match bytes.iter().position(|b| *b != 0) {
        None => 0,
        Some(i) => (bytes.len() - i - 1) * 8 + (8 - bytes[i].leading_zeros() as usize),
    }
}

/// True when `alg` can be verified with `material`.
fn alg_fits(alg: &str, material: &KeyMaterial) -> bool {
    match material {
        KeyMaterial::Ec { wide: false, .. } => alg == "ES256",
        KeyMaterial::Ec { wide: true, .. } => alg == "ES384",
        KeyMaterial::Rsa { .. } => matches!(
            alg,
            "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512"
        ),
    }
}

// ---- the bundle of all trust domains ----

/// The JWT-SVID keys of every trusted trust domain, by domain name.
///
/// A key only vouches for IDs of its own domain. See the module docs for
/// the file format.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustBundle {
    domains: BTreeMap<String, SvidJwks>,
}

/// The bundle file as read; people write it, so unknown members are errors.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BundleFile {
    trust_domains: BTreeMap<String, DomainDoc>,
}

impl TrustBundle {
    /// An empty bundle, trusting nobody.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses the bundle file format described in the module docs.
    pub fn from_json(text: &str) -> Result<Self, IdentityError> {
        if text.len() > BUNDLE_MAX_BYTES {
            return Err(bundle_error(format!(
                "longer than {BUNDLE_MAX_BYTES} bytes"
            )));
        }
        let file: BundleFile =
            serde_json::from_str(text).map_err(|e| bundle_error(e.to_string()))?;
        let mut bundle = Self::new();
        for (name, doc) in file.trust_domains {
            check_trust_domain(&name)
                .map_err(|e| bundle_error(format!("trust domain `{name}`: {e}")))?;
            let keys = SvidJwks::from_doc(doc)
                .map_err(|e| bundle_error(format!("trust domain `{name}`: {e}")))?;
            bundle.domains.insert(name, keys);
        }
        Ok(bundle)
    }

    /// Reads and parses a bundle file; errors name the file.
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let file = Some(path.display().to_string());
        let text = std::fs::read_to_string(path).map_err(|e| IdentityError::BadBundle {
            file: file.clone(),
            reason: e.to_string(),
        })?;
        Self::from_json(&text).map_err(|e| match e {
            IdentityError::BadBundle { reason, .. } => IdentityError::BadBundle { file, reason },
            other => other,
        })
    }

    /// The bundle in its file format, pretty-printed.
    pub fn to_json(&self) -> String {
        let domains: Map<String, Value> = self
            .domains
            .iter()
            .map(|(name, keys)| (name.clone(), keys.to_value()))
            .collect();
        let mut top = Map::new();
        top.insert("trust_domains".to_string(), Value::Object(domains));
        format!("{:#}", Value::Object(top))
    }

    /// Sets the keys of `trust_domain`, returning the keys it replaced.
    pub fn insert(
        &mut self,
        trust_domain: &str,
        jwks: SvidJwks,
    ) -> Result<Option<SvidJwks>, IdentityError> {
        check_trust_domain(trust_domain).map_err(|reason| IdentityError::BadTrustDomain {
            name: trust_domain.to_string(),
            reason,
        })?;
        Ok(self.domains.insert(trust_domain.to_string(), jwks))
    }

    /// Adds every domain of `other`; where both hold a domain, `other` wins.
    pub fn merge(&mut self, other: TrustBundle) {
        self.domains.extend(other.domains);
    }

    /// The keys of `trust_domain`, if it is trusted.
    pub fn get(&self, trust_domain: &str) -> Option<&SvidJwks> {
        self.domains.get(trust_domain)
    }

    /// The trusted domain names, sorted.
    pub fn trust_domains(&self) -> Vec<&str> {
        self.domains.keys().map(String::as_str).collect()
    }
}

// ---- verification ----

/// The header as read; unknown members are ignored, duplicates refused.
#[derive(Deserialize)]
struct SvidHeader {
    alg: Option<String>,
    kid: Option<String>,
    typ: Option<String>,
    crit: Option<Value>,
}

/// The claims this module reads; others are ignored.
#[derive(Deserialize)]
struct SvidClaims {
    sub: Option<String>,
    aud: Option<Value>,
    exp: Option<i64>,
    nbf: Option<i64>,
    iat: Option<i64>,
}

/// Checks a JWT-SVID against `bundle` for `audience` at time `now`.
///
/// Order: length, shape, header (`alg` in [`SVID_ALGORITHMS`], `typ`, `kid`),
/// then `sub` as a SPIFFE ID, whose trust domain picks the only keys that may
/// have signed it; then the signature; then `aud` (a string or an array that
/// holds `audience`), `exp > now`, and `nbf`/`iat <= now` when present. No
/// leeway.
pub fn verify_svid(
    svid: &str,
    bundle: &TrustBundle,
    audience: &str,
    now: i64,
) -> Result<VerifiedIdentity, IdentityError> {
    if svid.len() > SVID_MAX_BYTES {
        return Err(IdentityError::Oversize { len: svid.len() });
    }
    let (header_b64, payload_b64, signature_b64) = split_parts(svid)?;
    let header: SvidHeader = decode_json(header_b64, "header")?;
    let (alg, kid) = check_header(header)?;

    // The claims are read before the signature only to learn the trust
    // domain; nothing else is believed until the signature holds.
    let claims: SvidClaims = decode_json(payload_b64, "payload")?;
    let sub = claims
        .sub
        .as_deref()
        .ok_or(IdentityError::MissingClaim("sub"))?;
    let spiffe_id = SpiffeId::parse(sub).map_err(IdentityError::NotSpiffeId)?;
    let key = find_key(bundle, &spiffe_id, &kid)?;

    let message = &svid[..header_b64.len() + 1 + payload_b64.len()];
    check_signature(key, alg, message, signature_b64)?;

    check_audience(claims.aud.as_ref(), audience)?;
    let exp = check_times(&claims, now)?;
    Ok(VerifiedIdentity {
        spiffe_id,
        svid_digest: crate::token::digest(svid),
        expires_at: exp,
    })
}

fn split_parts(svid: &str) -> Result<(&str, &str, &str), IdentityError> {
    let mut parts = svid.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(p), Some(s), None) if !h.is_empty() && !p.is_empty() => Ok((h, p, s)),
        _ => Err(IdentityError::Malformed(
            "svid must have three dot-separated parts",
        )),
    }
}

fn decode_json<T: serde::de::DeserializeOwned>(
    part: &str,
    name: &'static str,
) -> Result<T, IdentityError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| IdentityError::Malformed(name))?;
    serde_json::from_slice(&bytes).map_err(|_| IdentityError::Malformed(name))
}

/// Checks `alg`, `typ`, `crit` and `kid`, in that order.
fn check_header(header: SvidHeader) -> Result<(Algorithm, String), IdentityError> {
    let name = header.alg.unwrap_or_default();
    let alg = svid_algorithm(&name).ok_or(IdentityError::UnsupportedAlg(name))?;
    if let Some(typ) = header.typ {
        if typ != "JWT" && typ != "JOSE" {
            return Err(IdentityError::WrongType(typ));
        }
    }
    // No extension is understood, so any critical one must be refused (RFC 7515 4.1.11).
    if header.crit.is_some() {
        return Err(IdentityError::Malformed("header has a `crit` member"));
    }
    let kid = header.kid.ok_or(IdentityError::MissingKid)?;
    Ok((alg, kid))
}

/// The `jsonwebtoken` algorithm for an allowed `alg` name.
fn svid_algorithm(name: &str) -> Option<Algorithm> {
    let alg = match name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        _ => return None,
    };
    Some(alg)
}

/// The key `kid` of the ID's own trust domain, and no other.
fn find_key<'b>(
    bundle: &'b TrustBundle,
    id: &SpiffeId,
    kid: &str,
) -> Result<&'b SvidKey, IdentityError> {
    let domain = id.trust_domain();
    let keys = bundle
        .get(domain)
        .ok_or_else(|| IdentityError::UnknownTrustDomain(domain.to_string()))?;
    keys.find(kid).ok_or_else(|| IdentityError::UnknownKid {
        trust_domain: domain.to_string(),
        kid: kid.chars().take(MAX_KID_IN_ERROR).collect(),
    })
}

fn check_signature(
    key: &SvidKey,
    alg: Algorithm,
    message: &str,
    signature_b64: &str,
) -> Result<(), IdentityError> {
    let alg_name = format!("{alg:?}");
    let key_allows = key.alg.as_deref().is_none_or(|a| a == alg_name);
    if !key_allows || !alg_fits(&alg_name, &key.material) {
        return Err(IdentityError::KeyAlgMismatch {
            kid: key.kid.clone(),
            alg: alg_name,
        });
    }
    if signature_b64.is_empty() || URL_SAFE_NO_PAD.decode(signature_b64).is_err() {
        return Err(IdentityError::Malformed("signature"));
    }

    let bad_key = || IdentityError::BadKey {
        kid: key.kid.clone(),
    };
    let decoding = match &key.material {
        KeyMaterial::Ec { x, y, .. } => DecodingKey::from_ec_components(x, y),
        KeyMaterial::Rsa { n, e } => DecodingKey::from_rsa_components(n, e),
    }
    .map_err(|_| bad_key())?;
    // An error here means the key could not be built into a verifier; a
    // signature that merely fails to match comes back as `Ok(false)`.
    match jsonwebtoken::crypto::verify(signature_b64, message.as_bytes(), &decoding, alg) {
        Ok(true) => Ok(()),
        Ok(false) => Err(IdentityError::BadSignature),
        Err(_) => Err(bad_key()),
    }
}

fn check_audience(aud: Option<&Value>, audience: &str) -> Result<(), IdentityError> {
    let held = match aud {
        None => return Err(IdentityError::MissingClaim("aud")),
        Some(Value::String(one)) => one == audience,
        Some(Value::Array(many)) => {
            if many.iter().any(|v| !v.is_string()) {
                return Err(IdentityError::Malformed("aud"));
            }
            many.iter().any(|v| v.as_str() == Some(audience))
        }
        Some(_) => return Err(IdentityError::Malformed("aud")),
    };
    if held {
        Ok(())
    } else {
        Err(IdentityError::WrongAudience {
            expected: audience.to_string(),
        })
    }
}

/// Checks `exp`, `nbf` and `iat`; returns `exp`.
fn check_times(claims: &SvidClaims, now: i64) -> Result<i64, IdentityError> {
    let exp = claims.exp.ok_or(IdentityError::MissingClaim("exp"))?;
    if exp <= now {
        return Err(IdentityError::Expired { exp, now });
    }
    if let Some(nbf) = claims.nbf.filter(|nbf| *nbf > now) {
        return Err(IdentityError::NotYetValid { nbf, now });
    }
    if let Some(iat) = claims.iat.filter(|iat| *iat > now) {
        return Err(IdentityError::IssuedInFuture { iat, now });
    }
    Ok(exp)
}

// ---- development trust domain ----

/// A local trust domain with one ES256 key, standing in for SPIRE.
///
/// For the demo and tests only: the key lives in this process (persist it
/// with [`DevTrustDomain::to_pkcs8_der`]). `Debug` shows the name and `kid`,
/// never the key.
#[derive(Clone)]
pub struct DevTrustDomain {
    name: String,
    key: SigningKey,
    kid: String,
    x: String,
    y: String,
}

impl DevTrustDomain {
    /// Creates trust domain `name` with a fresh P-256 key drawn from `rng`.
    pub fn generate(name: &str, rng: &mut impl CryptoRngCore) -> Result<Self, IdentityError> {
        Self::with_key(name, SigningKey::random(rng))
    }

    /// Rebuilds a trust domain from a PKCS#8 DER key [`Self::to_pkcs8_der`] gave.
    pub fn from_pkcs8_der(name: &str, der: &[u8]) -> Result<Self, IdentityError> {
        let key = SigningKey::from_pkcs8_der(der)
            .map_err(|_| IdentityError::DevKey("not a pkcs#8 p-256 private key"))?;
        Self::with_key(name, key)
    }

    fn with_key(name: &str, key: SigningKey) -> Result<Self, IdentityError> {
        check_trust_domain(name).map_err(|reason| IdentityError::BadTrustDomain {
            name: name.to_string(),
            reason,
        })?;
        let point = key.verifying_key().to_encoded_point(false);
        let (Some(x), Some(y)) = (point.x(), point.y()) else {
            return Err(IdentityError::DevKey(
                "public key has no affine coordinates",
            ));
        };
        let (x, y) = (URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y));
        let kid = ec_thumbprint(&x, &y);
        Ok(Self {
            name: name.to_string(),
            key,
            kid,
            x,
            y,
        })
    }

    /// The private key as PKCS#8 DER, for persisting; keep it secret.
    pub fn to_pkcs8_der(&self) -> Result<Vec<u8>, IdentityError> {
        let doc = self
            .key
            .to_pkcs8_der()
            .map_err(|_| IdentityError::DevKey("cannot encode the key as pkcs#8"))?;
        Ok(doc.as_bytes().to_vec())
    }

    /// The trust domain name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key id: RFC 7638 thumbprint of the EC public JWK.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// This domain's bundle document: its one public key.
    pub fn jwks(&self) -> SvidJwks {
        let mut raw = Map::new();
        for (name, value) in [
            ("kty", "EC"),
            ("crv", "P-256"),
            ("x", self.x.as_str()),
            ("y", self.y.as_str()),
            ("kid", self.kid.as_str()),
            ("use", JWT_SVID_USE),
            ("alg", "ES256"),
        ] {
            raw.insert(name.to_string(), Value::from(value));
        }
        let material = KeyMaterial::Ec {
            wide: false,
            x: self.x.clone(),
            y: self.y.clone(),
        };
        let svid = SvidKey {
            kid: self.kid.clone(),
            alg: Some("ES256".to_string()),
            material,
        };
        SvidJwks {
            keys: vec![BundleKey {
                raw,
                svid: Some(svid),
            }],
            sequence: Some(1),
            refresh_hint: None,
        }
    }

    /// A bundle trusting this domain only.
    pub fn bundle(&self) -> TrustBundle {
        let mut domains = BTreeMap::new();
        domains.insert(self.name.clone(), self.jwks());
        TrustBundle { domains }
    }

    /// Issues a JWT-SVID for `id`, valid from `now` for `ttl_secs` seconds.
    ///
    /// Refuses an ID outside this trust domain and a lifetime that is not
    /// positive. The header is `{"alg":"ES256","kid":…,"typ":"JWT"}`; the
    /// claims are `sub`, `aud` (an array of one), `exp` and `iat`.
    pub fn mint_svid(
        &self,
        id: &SpiffeId,
        audience: &str,
        now: i64,
        ttl_secs: i64,
    ) -> Result<String, IdentityError> {
        if id.trust_domain() != self.name {
            return Err(IdentityError::ForeignId {
                domain: self.name.clone(),
                id: id.as_str().to_string(),
            });
        }
        let exp = now.checked_add(ttl_secs).filter(|_| ttl_secs > 0);
        let exp = exp.ok_or(IdentityError::BadTtl(ttl_secs))?;

        let header = serde_json::json!({"alg": "ES256", "kid": self.kid, "typ": "JWT"});
        let claims =
            serde_json::json!({"sub": id.as_str(), "aud": [audience], "exp": exp, "iat": now});
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature: Signature = self
            .key
            .try_sign(message.as_bytes())
            .map_err(|_| IdentityError::DevKey("signing failed"))?;
        Ok(format!(
            "{message}.{}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        ))
    }
}

impl fmt::Debug for DevTrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevTrustDomain")
            .field("name", &self.name)
            .field("kid", &self.kid)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// RFC 7638 thumbprint of a P-256 JWK: required members, sorted, no spaces.
fn ec_thumbprint(x: &str, y: &str) -> String {
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

#[cfg(test)]
mod tests;
