//! Tests of JWT-SVID verification, trust bundles and the dev trust domain.

#![allow(
    clippy::unwrap_used,
    reason = "a test should stop at the first surprise"
)]

use super::*;
use crate::spiffe::SpiffeIdError;

const NOW: i64 = 1_800_000_000;
const AUD: &str = "stepgate";
const DOMAIN: &str = "dev.stepgate.local";

/// Fills buffers from a counter: a deterministic stand-in for `OsRng`.
struct CountingRng(u8);

impl rand_core::RngCore for CountingRng {
    fn next_u32(&mut self) -> u32 {
        rand_core::impls::next_u32_via_fill(self)
    }
    fn next_u64(&mut self) -> u64 {
        rand_core::impls::next_u64_via_fill(self)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for b in dest {
            self.0 = self.0.wrapping_add(1);
            *b = self.0;
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl rand_core::CryptoRng for CountingRng {}

fn domain(name: &str, seed: u8) -> DevTrustDomain {
    DevTrustDomain::generate(name, &mut CountingRng(seed)).unwrap()
}

fn dev() -> DevTrustDomain {
    domain(DOMAIN, 0)
}

fn id(text: &str) -> SpiffeId {
    SpiffeId::parse(text).unwrap()
}

fn agent() -> SpiffeId {
    id("spiffe://dev.stepgate.local/agent/planner")
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Signs arbitrary header and claims JSON with a dev domain's key.
fn sign_raw(signer: &DevTrustDomain, header: &Value, claims: &Value) -> String {
    let message = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature: Signature = signer.key.try_sign(message.as_bytes()).unwrap();
    format!("{message}.{}", b64(&signature.to_bytes()))
}

fn es256_header(kid: &str) -> Value {
    serde_json::json!({"alg": "ES256", "kid": kid, "typ": "JWT"})
}

fn claims() -> Value {
    serde_json::json!({"sub": agent().as_str(), "aud": [AUD], "exp": NOW + 300, "iat": NOW})
}

fn check(svid: &str) -> Result<VerifiedIdentity, IdentityError> {
    verify_svid(svid, &dev().bundle(), AUD, NOW)
}

/// A 2048-bit RSA test key (PKCS#1 DER, base64), made for these tests with openssl.
const RSA_PKCS1_DER_B64: &str = concat!(
    "MIIEpQIBAAKCAQEArC+GCplrWFMl6zBCWzj0aU/3LKrcGNQ2O+xZMvWVSCBbM/umWs+kZG+iHnd4P8c7Wz2PlUU1",
    "kifohb98Qurs0lQ0bwwFDWO2uAheZACCZbNbu7lJuvT0DQubTGRwHpXQ/bXTWSmw9oIk2tKHnU1zheL8n+wD8QiA",
    "M/JXD8ifFunLt1KK3IeFl1i7K94EnnxIoOj/u6DbmcUjThDUQ7OXs8OlCA1sdBkcdow4+HvPIQqTSQ6pmwANCFYV",
    "sYeU6egAIBOBCgLYqKkZlv8nj3h0D8BDFyzwf3R/cxjW+7uvXQ/qKEDvHsuIhzJBhcja0Lk/EsLUEu5y/ccWJan0",
    "QaoO1wIDAQABAoIBAASpLKmwyXUUmxworEMn4YXQQlKVNWv+opEwrqFwgF/5cD6R+0jOAhct5meIuFqRnAu2OOLD",
    "gtW3+tVT/5sYHNz8poay/pgEMPf+Uf/G+8ChAESumU5UPx7zR3rj5R0O1R9pApWRSVcC4tiBhmY9qHjhUhFKJDks",
    "D7xYPP8SYSwPkKdsYCIbuI4QOnFeu33AcmXtgRx0viNZOh+GmX4IkTapvD6XrtxBnRKi66bePqmWbXcgwNymgvgQ",
    "KpdQxpufyE0nD7+ufCe23o6nN/Xo/Ta1F0FmXMYtUpwmb4AnUvgQmCfvFtu3uoKZ2eBKdefyNGklu44qXT6ezUWf",
    "DAWLhGECgYEA5q4KOKyhHqtHlgiII211bwFnRMoiaVG7CoG0wkRpGzQLQlQVms82BVtPiCKJoa6k/C0yLyf2pLKC",
    "jwVwkulvV0oPij/rinECjgx+/QLUdbO3AWx3y6PfpLkCTPoW4IgzsMhbHzjZx33fjqKUzrwWC+14Dkvxu2vj089X",
    "K22xXZkCgYEAvxXVOnN04Z0pmqle/bHB2ZGq2h6J57vdcCO0hxU3i+gPtFVQNqrhKrIuy7UPG0nVa5elEOcmUuUa",
    "bjcBFZHgSE3hxw+c9QHSFiTw7Olv4Yq/YHpGlHkmfZS0v+Rf9Lpe7x/vONZGSOz8n4eqD8YeYtxAkddzIjb3xCbx",
    "3KgrNe8CgYEAzoJT6DSy8K/JIEl3BrBBByUse+qxL7PZTCid16RCq/XFdpWr2bFS3SzHYEn7CGE+lfsoCAswxHSC",
    "aOMnyn1sDarhipR6mq9c6CnLrVlRNiWy2XVvMUD9P4vYwWzJ+iw0ijhzStosLGlFL33g1cqPuhHW/oWCXJTTmpTt",
    "ppVGyVECgYEAlors4o/zlYvsKx0k6VoSDwbkQ9OrchZf7ukyYPomOOMq/Df6ahdWLf0TQQn0TNtueMWQFjEF0GkO",
    "2aYcBJJY0J4LMnjqf1xf13JjHUMMEfTtsWSkFnUcDfQKMuQJdRUfleTi4zRtSybqIAURxjuf1OMRO9Uxr9L+gFru",
    "UZlr8aECgYEAjGVRxhON1lphpvhvsSh7J8qdtZgE8YawzP/bbTjxPZ/bl67wZFbToFDIaBBLffkHX0Y6h8gOgzEA",
    "PaTXKhQUp5+CXXaCh63yG+FJ4vpu11YlbrHyNymeiHkMRpRHLNspVWHScHAG+Jxcj1jN3gZH6ZdXPzlsS2G+7UPf",
    "ovFJsQU=",
);

/// The modulus of that key, base64url.
const RSA_N: &str = concat!(
    "rC-GCplrWFMl6zBCWzj0aU_3LKrcGNQ2O-xZMvWVSCBbM_umWs-kZG-iHnd4P8c7Wz2PlUU1kifohb98Qurs0lQ0",
    "bwwFDWO2uAheZACCZbNbu7lJuvT0DQubTGRwHpXQ_bXTWSmw9oIk2tKHnU1zheL8n-wD8QiAM_JXD8ifFunLt1KK",
    "3IeFl1i7K94EnnxIoOj_u6DbmcUjThDUQ7OXs8OlCA1sdBkcdow4-HvPIQqTSQ6pmwANCFYVsYeU6egAIBOBCgLY",
    "qKkZlv8nj3h0D8BDFyzwf3R_cxjW-7uvXQ_qKEDvHsuIhzJBhcja0Lk_EsLUEu5y_ccWJan0QaoO1w",
);

fn rsa_bundle(alg: Option<&str>) -> TrustBundle {
    let mut key = serde_json::json!({"kty": "RSA", "n": RSA_N, "e": "AQAB", "kid": "rsa-1", "use": "jwt-svid"});
    if let Some(alg) = alg {
        key["alg"] = Value::from(alg);
    }
    let text = serde_json::json!({"trust_domains": {DOMAIN: {"keys": [key]}}}).to_string();
    TrustBundle::from_json(&text).unwrap()
}

fn rsa_svid(alg: Algorithm) -> String {
    use base64::engine::general_purpose::STANDARD;
    let der = STANDARD.decode(RSA_PKCS1_DER_B64).unwrap();
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = Some("rsa-1".to_string());
    let key = jsonwebtoken::EncodingKey::from_rsa_der(&der);
    jsonwebtoken::encode(&header, &claims(), &key).unwrap()
}

// ---- round trips ----

#[test]
fn es256_svid_round_trips() {
    let svid = dev().mint_svid(&agent(), AUD, NOW, 300).unwrap();
    let expected = VerifiedIdentity {
        spiffe_id: agent(),
        svid_digest: crate::token::digest(&svid),
        expires_at: NOW + 300,
    };
    assert_eq!(check(&svid), Ok(expected));
}

#[test]
fn dev_svid_has_the_documented_header_and_claims() {
    let svid = dev().mint_svid(&agent(), AUD, NOW, 300).unwrap();
    let parts: Vec<&str> = svid.split('.').collect();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    let body: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(header, es256_header(dev().kid()));
    assert_eq!(body, claims());
}

#[test]
fn dev_minting_is_deterministic() {
    let first = dev().mint_svid(&agent(), AUD, NOW, 300).unwrap();
    assert_eq!(first, dev().mint_svid(&agent(), AUD, NOW, 300).unwrap());
}

#[test]
fn jsonwebtoken_verifies_a_dev_svid_from_the_bundle_json() {
    let svid = dev().mint_svid(&agent(), AUD, NOW, 300).unwrap();
    let bundle: Value = serde_json::from_str(&dev().bundle().to_json()).unwrap();
    let set: jsonwebtoken::jwk::JwkSet =
        serde_json::from_value(bundle["trust_domains"][DOMAIN].clone()).unwrap();
    let jwk = set.find(dev().kid()).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut validation = jsonwebtoken::Validation::new(Algorithm::ES256);
    validation.set_audience(&[AUD]);
    // jsonwebtoken reads the system clock; the test claims use a fixed time.
    validation.validate_exp = false;
    let data = jsonwebtoken::decode::<Value>(&svid, &key, &validation).unwrap();
    assert_eq!(data.claims, claims());
}

#[test]
fn dev_kid_is_the_rfc7638_thumbprint() {
    let doc = dev().jwks().to_value();
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(doc["keys"][0].clone()).unwrap();
    assert_eq!(
        jwk.thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256),
        dev().kid()
    );
}

#[test]
fn rs256_svid_verifies() {
    let svid = rsa_svid(Algorithm::RS256);
    let result = verify_svid(&svid, &rsa_bundle(None), AUD, NOW).map(|v| v.spiffe_id);
    assert_eq!(result, Ok(agent()));
}

#[test]
fn ps256_svid_verifies() {
    let svid = rsa_svid(Algorithm::PS256);
    let result = verify_svid(&svid, &rsa_bundle(Some("PS256")), AUD, NOW).map(|v| v.expires_at);
    assert_eq!(result, Ok(NOW + 300));
}

#[test]
fn rsa_key_pinned_to_another_alg_is_refused() {
    let svid = rsa_svid(Algorithm::RS384);
    assert_eq!(
        verify_svid(&svid, &rsa_bundle(Some("RS256")), AUD, NOW),
        Err(IdentityError::KeyAlgMismatch {
            kid: "rsa-1".to_string(),
            alg: "RS384".to_string()
        })
    );
}

#[test]
fn es256_header_with_an_rsa_key_is_refused() {
    let svid = sign_raw(&dev(), &es256_header("rsa-1"), &claims());
    assert_eq!(
        verify_svid(&svid, &rsa_bundle(None), AUD, NOW),
        Err(IdentityError::KeyAlgMismatch {
            kid: "rsa-1".to_string(),
            alg: "ES256".to_string()
        })
    );
}

#[test]
fn string_audience_is_accepted() {
    let mut body = claims();
    body["aud"] = Value::from(AUD);
    let svid = sign_raw(&dev(), &es256_header(dev().kid()), &body);
    assert_eq!(check(&svid).map(|v| v.spiffe_id), Ok(agent()));
}

// ---- claims ----

#[test]
fn wrong_audience_is_refused() {
    let svid = dev().mint_svid(&agent(), "someone-else", NOW, 300).unwrap();
    assert_eq!(
        check(&svid),
        Err(IdentityError::WrongAudience {
            expected: AUD.to_string()
        })
    );
}

#[test]
fn audience_of_the_wrong_type_is_malformed() {
    let mut body = claims();
    body["aud"] = serde_json::json!([AUD, 7]);
    let svid = sign_raw(&dev(), &es256_header(dev().kid()), &body);
    assert_eq!(check(&svid), Err(IdentityError::Malformed("aud")));
}

#[test]
fn expired_at_exactly_exp() {
    let svid = dev().mint_svid(&agent(), AUD, NOW - 300, 300).unwrap();
    assert_eq!(
        check(&svid),
        Err(IdentityError::Expired { exp: NOW, now: NOW })
    );
}

#[test]
fn nbf_in_the_future_is_refused() {
    let mut body = claims();
    body["nbf"] = Value::from(NOW + 1);
    let svid = sign_raw(&dev(), &es256_header(dev().kid()), &body);
    assert_eq!(
        check(&svid),
        Err(IdentityError::NotYetValid {
            nbf: NOW + 1,
            now: NOW
        })
    );
}

#[test]
fn iat_in_the_future_is_refused() {
    let svid = dev().mint_svid(&agent(), AUD, NOW + 5, 300).unwrap();
    assert_eq!(
        check(&svid),
        Err(IdentityError::IssuedInFuture {
            iat: NOW + 5,
            now: NOW
        })
    );
}

#[test]
fn missing_claims_are_named() {
    for name in ["sub", "aud", "exp"] {
        let mut body = claims();
        body.as_object_mut().unwrap().remove(name);
        let svid = sign_raw(&dev(), &es256_header(dev().kid()), &body);
        assert_eq!(
            check(&svid),
            Err(IdentityError::MissingClaim(name)),
            "{name}"
        );
    }
}

#[test]
fn sub_that_is_not_a_spiffe_id_is_refused() {
    let mut body = claims();
    body["sub"] = Value::from("agent-planner");
    let svid = sign_raw(&dev(), &es256_header(dev().kid()), &body);
    assert_eq!(
        check(&svid),
        Err(IdentityError::NotSpiffeId(SpiffeIdError::Scheme))
    );
}

// ---- trust domains and keys ----

#[test]
fn key_of_domain_b_cannot_vouch_for_domain_a() {
    let a = domain("a.test", 0);
    let b = domain("b.test", 50);
    let mut bundle = a.bundle();
    bundle.merge(b.bundle());
    let mut body = claims();
    body["sub"] = Value::from("spiffe://a.test/agent/planner");

    // B signs under its own kid: that kid is not among A's keys.
    let svid = sign_raw(&b, &es256_header(b.kid()), &body);
    assert_eq!(
        verify_svid(&svid, &bundle, AUD, NOW),
        Err(IdentityError::UnknownKid {
            trust_domain: "a.test".to_string(),
            kid: b.kid().to_string()
        })
    );

    // B signs under A's kid: A's key does not verify B's signature.
    let svid = sign_raw(&b, &es256_header(a.kid()), &body);
    assert_eq!(
        verify_svid(&svid, &bundle, AUD, NOW),
        Err(IdentityError::BadSignature)
    );
}

#[test]
fn unknown_trust_domain_is_refused() {
    let other = domain("other.test", 9);
    let svid = other
        .mint_svid(&id("spiffe://other.test/agent/x"), AUD, NOW, 300)
        .unwrap();
    assert_eq!(
        check(&svid),
        Err(IdentityError::UnknownTrustDomain("other.test".to_string()))
    );
}

#[test]
fn unknown_kid_is_refused() {
    let svid = sign_raw(&dev(), &es256_header("no-such-key"), &claims());
    assert_eq!(
        check(&svid),
        Err(IdentityError::UnknownKid {
            trust_domain: DOMAIN.to_string(),
            kid: "no-such-key".to_string()
        })
    );
}

#[test]
fn x509_svid_keys_never_verify_jwt_svids() {
    let mut doc = dev().jwks().to_value();
    doc["keys"][0]["use"] = Value::from("x509-svid");
    let jwks = SvidJwks::from_json(&doc.to_string()).unwrap();
    let mut bundle = TrustBundle::new();
    bundle.insert(DOMAIN, jwks).unwrap();
    let svid = dev().mint_svid(&agent(), AUD, NOW, 300).unwrap();
    assert_eq!(
        verify_svid(&svid, &bundle, AUD, NOW),
        Err(IdentityError::UnknownKid {
            trust_domain: DOMAIN.to_string(),
            kid: dev().kid().to_string()
        })
    );
}

#[test]
fn key_that_is_not_on_the_curve_is_a_bad_key() {
    let mut doc = dev().jwks().to_value();
    doc["keys"][0]["y"] = Value::from(b64(&[1u8; 32]));
    let mut bundle = TrustBundle::new();
    bundle
        .insert(DOMAIN, SvidJwks::from_json(&doc.to_string()).unwrap())
        .unwrap();
    let svid = dev().mint_svid(&agent(), AUD, NOW, 300).unwrap();
    assert_eq!(
        verify_svid(&svid, &bundle, AUD, NOW),
        Err(IdentityError::BadKey {
            kid: dev().kid().to_string()
        })
    );
}

// ---- header and shape ----

#[test]
fn disallowed_algorithms_are_refused_before_keys() {
    for alg in ["EdDSA", "none", "HS256", "HS512", "ES512", ""] {
        let header = serde_json::json!({"alg": alg, "kid": dev().kid(), "typ": "JWT"});
        let svid = sign_raw(&dev(), &header, &claims());
        assert_eq!(
            check(&svid),
            Err(IdentityError::UnsupportedAlg(alg.to_string())),
            "{alg}"
        );
    }
}

#[test]
fn unsigned_svid_is_refused_as_alg_none() {
    let header = serde_json::json!({"alg": "none", "typ": "JWT"});
    let svid = format!(
        "{}.{}.",
        b64(header.to_string().as_bytes()),
        b64(claims().to_string().as_bytes())
    );
    assert_eq!(
        check(&svid),
        Err(IdentityError::UnsupportedAlg("none".to_string()))
    );
}

#[test]
fn hs256_keyed_with_public_coordinates_is_refused() {
    let doc = dev().jwks().to_value();
    let secret = doc["keys"][0]["x"].as_str().unwrap().as_bytes().to_vec();
    let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
    header.kid = Some(dev().kid().to_string());
    let key = jsonwebtoken::EncodingKey::from_secret(&secret);
    let svid = jsonwebtoken::encode(&header, &claims(), &key).unwrap();
    assert_eq!(
        check(&svid),
        Err(IdentityError::UnsupportedAlg("HS256".to_string()))
    );
}

#[test]
fn missing_kid_is_refused() {
    let svid = sign_raw(&dev(), &serde_json::json!({"alg": "ES256"}), &claims());
    assert_eq!(check(&svid), Err(IdentityError::MissingKid));
}

#[test]
fn odd_typ_is_refused() {
    let mut header = es256_header(dev().kid());
    header["typ"] = Value::from("stepgate-step+jwt");
    let svid = sign_raw(&dev(), &header, &claims());
    assert_eq!(
        check(&svid),
        Err(IdentityError::WrongType("stepgate-step+jwt".to_string()))
    );
}

#[test]
fn tampered_payload_fails_the_signature() {
    let svid = dev().mint_svid(&agent(), AUD, NOW, 300).unwrap();
    let mut body = claims();
    body["sub"] = Value::from("spiffe://dev.stepgate.local/agent/admin");
    let parts: Vec<&str> = svid.split('.').collect();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64(body.to_string().as_bytes()),
        parts[2]
    );
    assert_eq!(check(&forged), Err(IdentityError::BadSignature));
}

#[test]
fn tampered_signature_fails() {
    let svid = dev().mint_svid(&agent(), AUD, NOW, 300).unwrap();
    let (message, sig) = svid.rsplit_once('.').unwrap();
    let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
    sig[10] ^= 0x80;
    assert_eq!(
        check(&format!("{message}.{}", b64(&sig))),
        Err(IdentityError::BadSignature)
    );
}

#[test]
fn oversize_svid_is_refused() {
    let svid = "x".repeat(SVID_MAX_BYTES + 1);
    assert_eq!(
        check(&svid),
        Err(IdentityError::Oversize {
            len: SVID_MAX_BYTES + 1
        })
    );
}

#[test]
fn wrong_number_of_parts_is_malformed() {
    let svid = dev().mint_svid(&agent(), AUD, NOW, 300).unwrap();
    let two = svid.rsplit_once('.').unwrap().0;
    assert!(matches!(check(two), Err(IdentityError::Malformed(_))));
    assert!(matches!(
        check(&format!("{svid}.e30")),
        Err(IdentityError::Malformed(_))
    ));
    assert_eq!(
        check("%%%.e30.AAAA"),
        Err(IdentityError::Malformed("header"))
    );
}

// ---- bundles ----

fn sample_bundle_json() -> String {
    let mut doc = dev().jwks().to_value();
    let x509 =
        serde_json::json!({"kty": "EC", "crv": "P-256", "use": "x509-svid", "x5c": ["MIIB"]});
    doc["keys"].as_array_mut().unwrap().push(x509);
    doc["spiffe_refresh_hint"] = Value::from(60);
    serde_json::json!({"trust_domains": {DOMAIN: doc}}).to_string()
}

#[test]
fn bundle_json_round_trips() {
    let bundle = TrustBundle::from_json(&sample_bundle_json()).unwrap();
    let again = TrustBundle::from_json(&bundle.to_json()).unwrap();
    assert_eq!(again, bundle);
    let text: Value = serde_json::from_str(&bundle.to_json()).unwrap();
    assert_eq!(
        text,
        serde_json::from_str::<Value>(&sample_bundle_json()).unwrap()
    );
    assert_eq!(bundle.trust_domains(), vec![DOMAIN]);
    assert_eq!(bundle.get(DOMAIN).unwrap().kids(), vec![dev().kid()]);
    assert_eq!(bundle.get(DOMAIN).unwrap().sequence(), Some(1));
}

#[test]
fn dev_bundle_round_trips_through_json() {
    let bundle = dev().bundle();
    assert_eq!(TrustBundle::from_json(&bundle.to_json()), Ok(bundle));
}

fn bundle_reason(text: &str) -> Option<String> {
    match TrustBundle::from_json(text) {
        Err(IdentityError::BadBundle { file: None, reason }) => Some(reason),
        _ => None,
    }
}

#[test]
fn bad_bundles_are_refused() {
    let key = dev().jwks().to_value()["keys"][0].clone();
    let with_key =
        |k: Value| serde_json::json!({"trust_domains": {DOMAIN: {"keys": [k]}}}).to_string();
    let mut no_kid = key.clone();
    no_kid.as_object_mut().unwrap().remove("kid");
    let mut okp = key.clone();
    okp["kty"] = Value::from("OKP");
    let mut bad_alg = key.clone();
    bad_alg["alg"] = Value::from("RS256");
    let short_rsa =
        serde_json::json!({"kty": "RSA", "kid": "r", "n": b64(&[0xff; 128]), "e": "AQAB"});
    let twice =
        serde_json::json!({"trust_domains": {DOMAIN: {"keys": [key.clone(), key.clone()]}}});
    let cases = [
        "not json".to_string(),
        r#"{"trust_domains": {}, "extra": 1}"#.to_string(),
        r#"{"trust_domains": {"Bad.Domain": {"keys": []}}}"#.to_string(),
        with_key(no_kid),
        with_key(okp),
        with_key(bad_alg),
        with_key(short_rsa),
        twice.to_string(),
    ];
    for case in cases {
        assert!(bundle_reason(&case).is_some(), "{case}");
    }
}

#[test]
fn rsa_key_of_exactly_2048_bits_is_accepted() {
    let mut n = vec![0u8, 0x80];
    n.extend([1u8; 255]);
    assert_eq!(bit_length(&n), 2048);
    let key = serde_json::json!({"kty": "RSA", "kid": "r", "n": b64(&n), "e": "AQAB"});
    let text = serde_json::json!({"trust_domains": {DOMAIN: {"keys": [key]}}}).to_string();
    assert!(TrustBundle::from_json(&text).is_ok());
    assert_eq!(bit_length(&n[2..]), 2033);
}

#[test]
fn load_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bundle.json");
    std::fs::write(&path, r#"{"trust_domains": 5}"#).unwrap();
    let expected = Some(path.display().to_string());
    assert!(
        matches!(TrustBundle::load(&path), Err(IdentityError::BadBundle { file, .. }) if file == expected)
    );

    let missing = dir.path().join("missing.json");
    let expected = Some(missing.display().to_string());
    assert!(
        matches!(TrustBundle::load(&missing), Err(IdentityError::BadBundle { file, .. }) if file == expected)
    );
}

#[test]
fn load_reads_a_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bundle.json");
    std::fs::write(&path, dev().bundle().to_json()).unwrap();
    assert_eq!(TrustBundle::load(&path), Ok(dev().bundle()));
}

#[test]
fn insert_checks_the_domain_name() {
    let mut bundle = TrustBundle::new();
    assert_eq!(
        bundle.insert("Dev", dev().jwks()),
        Err(IdentityError::BadTrustDomain {
            name: "Dev".to_string(),
            reason: SpiffeIdError::TrustDomainChar('D')
        })
    );
    assert_eq!(bundle.insert(DOMAIN, dev().jwks()), Ok(None));
    assert_eq!(
        bundle.insert(DOMAIN, SvidJwks::default()),
        Ok(Some(dev().jwks()))
    );
}

#[test]
fn merge_lets_the_other_bundle_win() {
    let mut bundle = dev().bundle();
    let newer = domain(DOMAIN, 77);
    bundle.merge(newer.bundle());
    bundle.merge(domain("b.test", 3).bundle());
    assert_eq!(bundle.trust_domains(), vec!["b.test", DOMAIN]);
    assert_eq!(bundle.get(DOMAIN), Some(&newer.jwks()));
}

// ---- dev trust domain ----

#[test]
fn dev_domain_refuses_a_bad_name() {
    assert!(matches!(
        DevTrustDomain::generate("", &mut CountingRng(0)),
        Err(IdentityError::BadTrustDomain {
            reason: SpiffeIdError::EmptyTrustDomain,
            ..
        })
    ));
}

#[test]
fn dev_domain_refuses_a_foreign_id() {
    let result = dev().mint_svid(&id("spiffe://prod.example/agent/x"), AUD, NOW, 300);
    assert_eq!(
        result,
        Err(IdentityError::ForeignId {
            domain: DOMAIN.to_string(),
            id: "spiffe://prod.example/agent/x".to_string()
        })
    );
}

#[test]
fn dev_domain_refuses_unusable_ttls() {
    assert_eq!(
        dev().mint_svid(&agent(), AUD, NOW, 0),
        Err(IdentityError::BadTtl(0))
    );
    assert_eq!(
        dev().mint_svid(&agent(), AUD, NOW, -5),
        Err(IdentityError::BadTtl(-5))
    );
    assert_eq!(
        dev().mint_svid(&agent(), AUD, i64::MAX, 1),
        Err(IdentityError::BadTtl(1))
    );
}

#[test]
fn dev_key_round_trips_through_pkcs8() {
    let der = dev().to_pkcs8_der().unwrap();
    let again = DevTrustDomain::from_pkcs8_der(DOMAIN, &der).unwrap();
    assert_eq!(again.kid(), dev().kid());
    assert_eq!(again.name(), DOMAIN);
    assert_eq!(
        again.mint_svid(&agent(), AUD, NOW, 60).unwrap(),
        dev().mint_svid(&agent(), AUD, NOW, 60).unwrap()
    );
    assert!(matches!(
        DevTrustDomain::from_pkcs8_der(DOMAIN, b"junk"),
        Err(IdentityError::DevKey(_))
    ));
}

#[test]
fn dev_domain_debug_redacts_the_key() {
    let dev = dev();
    let shown = format!("{dev:?}");
    assert_eq!(
        shown,
        format!(
            "DevTrustDomain {{ name: \"{DOMAIN}\", kid: {:?}, key: \"<redacted>\" }}",
            dev.kid()
        )
    );
}

#[test]
fn bad_bundle_message_names_the_file() {
    let err = IdentityError::BadBundle {
        file: Some("b.json".to_string()),
        reason: "oops".to_string(),
    };
    assert_eq!(err.to_string(), "bad trust bundle `b.json`: oops");
    let err = IdentityError::BadBundle {
        file: None,
        reason: "oops".to_string(),
    };
    assert_eq!(err.to_string(), "bad trust bundle: oops");
}
