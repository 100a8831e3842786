//! Tests of step token minting and verification.

#![allow(
    clippy::unwrap_used,
    reason = "a test should stop at the first surprise"
)]

use super::*;

const ISS: &str = "https://stepgate.test";
const AUD: &str = "db://orders";
const NOW: i64 = 1_800_000_000;

fn key() -> KeyPair {
    KeyPair::from_secret_bytes([7u8; 32])
}

fn other_key() -> KeyPair {
    KeyPair::from_secret_bytes([9u8; 32])
}

fn jwks_of(key: &KeyPair) -> Jwks {
    Jwks {
        keys: vec![key.public_jwk()],
    }
}

fn claims() -> StepClaims {
    StepClaims {
        iss: ISS.to_string(),
        sub: "spiffe://dev.stepgate.local/agent/planner".to_string(),
        aud: AUD.to_string(),
        scope: "db:read orders:list".to_string(),
        exp: NOW + 300,
        iat: NOW,
        nbf: NOW,
        jti: "01890a5d-ac96-774b-bcce-b302099a8057".to_string(),
        run: "run-1".to_string(),
        step: "fetch".to_string(),
        wf: "sha256:00ff".to_string(),
        intent: intent_digest("read the open orders"),
        approval: None,
        act: None,
        cnf: None,
    }
}

fn opts(now: i64) -> VerifyOptions<'static> {
    VerifyOptions {
        issuer: ISS,
        audience: AUD,
        now,
    }
}

/// Signs arbitrary header and payload JSON with `key`, for hostile cases.
fn sign_raw(key: &KeyPair, header: &serde_json::Value, payload: &serde_json::Value) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(payload.to_string().as_bytes())
    );
    let sig = key.signing.sign(input.as_bytes());
    format!("{input}.{}", b64(&sig.to_bytes()))
}

fn good_header(key: &KeyPair) -> serde_json::Value {
    serde_json::json!({"alg": "EdDSA", "kid": key.kid(), "typ": TOKEN_TYP})
}

fn claims_json() -> serde_json::Value {
    serde_json::to_value(claims()).unwrap()
}

fn verify_with_key(token: &str) -> Result<StepClaims, TokenError> {
    verify(token, &jwks_of(&key()), &opts(NOW))
}

// ---- keys and JWKS ----

#[test]
fn rfc8037_vector_gives_public_key_and_thumbprint() {
    // RFC 8037 appendix A.1 (key) and A.3 (its RFC 7638 thumbprint).
    let d = URL_SAFE_NO_PAD
        .decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")
        .unwrap();
    let key = KeyPair::from_secret_bytes(d.try_into().unwrap());
    assert_eq!(
        key.public_jwk().x,
        "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
    );
    assert_eq!(key.kid(), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
}

#[test]
fn kid_is_thumbprint_computed_from_x() {
    let jwk = key().public_jwk();
    // Independent canonical form: a sorted map serialised by serde_json.
    let mut members = std::collections::BTreeMap::new();
    members.insert("kty", "OKP");
    members.insert("crv", "Ed25519");
    members.insert("x", jwk.x.as_str());
    let canonical = serde_json::to_string(&members).unwrap();
    let expected = URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()));
    assert_eq!(key().kid(), expected);
    assert_eq!(jwk.kid, expected);
}

#[test]
fn a_key_is_self_named_only_under_its_own_thumbprint() {
    let own = key().public_jwk();
    assert!(own.is_self_named());
    let mut borrowed = KeyPair::from_secret_bytes([9; 32]).public_jwk();
    borrowed.kid = own.kid.clone();
    assert!(!borrowed.is_self_named(), "another key under this kid");
    let mut short = own.clone();
    short.x = "AAAA".into();
    assert!(!short.is_self_named(), "not 32 bytes");
    let mut rsa = own;
    rsa.kty = "RSA".into();
    assert!(!rsa.is_self_named());
}

#[test]
fn kid_matches_jsonwebtoken_thumbprint() {
    let text = serde_json::to_string(&key().public_jwk()).unwrap();
    let theirs: jsonwebtoken::jwk::Jwk = serde_json::from_str(&text).unwrap();
    assert_eq!(
        theirs.thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256),
        key().kid()
    );
}

#[test]
fn secret_bytes_round_trip_keeps_the_key() {
    let again = KeyPair::from_secret_bytes(key().secret_bytes());
    assert_eq!(again.secret_bytes(), [7u8; 32]);
    assert_eq!(again.kid(), key().kid());
    assert_eq!(again.public_jwk(), key().public_jwk());
}

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

#[test]
fn generate_draws_the_secret_from_the_rng() {
    let key = KeyPair::generate(&mut CountingRng(0));
    let expected: Vec<u8> = (1..=32).collect();
    assert_eq!(key.secret_bytes().to_vec(), expected);
    assert_ne!(KeyPair::generate(&mut CountingRng(100)).kid(), key.kid());
}

#[test]
fn debug_redacts_the_secret() {
    let key = key();
    let shown = format!("{key:?}");
    assert_eq!(
        shown,
        format!("KeyPair {{ kid: {:?}, secret: \"<redacted>\" }}", key.kid())
    );
    assert!(!shown.contains(&hex::encode(key.secret_bytes())));
}

#[test]
fn public_jwk_has_the_standard_shape() {
    let value = serde_json::to_value(key().public_jwk()).unwrap();
    let expected = serde_json::json!({
        "kty": "OKP",
        "crv": "Ed25519",
        "x": key().public_jwk().x,
        "kid": key().kid(),
        "alg": "EdDSA",
        "use": "sig",
    });
    assert_eq!(value, expected);
}

#[test]
fn jwks_reads_foreign_json_with_extra_members() {
    let text = format!(
        r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","x":"{}","kid":"{}","key_ops":["verify"],"x5t":"abc"}}],"extra":1}}"#,
        key().public_jwk().x,
        key().kid()
    );
    let jwks: Jwks = serde_json::from_str(&text).unwrap();
    let found = jwks.find(key().kid()).unwrap();
    assert_eq!(found.alg, None);
    assert_eq!(found.use_, None);
    assert_eq!(
        verify(&mint(&key(), &claims()).unwrap(), &jwks, &opts(NOW)),
        Ok(claims())
    );
    assert_eq!(jwks.find("nope"), None);
}

#[test]
fn jwks_json_round_trip() {
    let jwks = Jwks {
        keys: vec![key().public_jwk(), other_key().public_jwk()],
    };
    let text = serde_json::to_string(&jwks).unwrap();
    assert_eq!(serde_json::from_str::<Jwks>(&text).unwrap(), jwks);
}

// ---- minting ----

#[test]
fn mint_then_verify_round_trips() {
    let token = mint(&key(), &claims()).unwrap();
    assert_eq!(verify_with_key(&token), Ok(claims()));
}

#[test]
fn optional_claims_round_trip() {
    let mut full = claims();
    full.approval = Some("batch-42".to_string());
    full.act = Some(Actor {
        sub: "spiffe://dev.stepgate.local/agent/orchestrator".to_string(),
        act: Some(Box::new(Actor {
            sub: "user:alice".to_string(),
            act: None,
        })),
    });
    full.cnf = Some(Cnf {
        jkt: "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I".to_string(),
    });
    let token = mint(&key(), &full).unwrap();
    assert_eq!(verify_with_key(&token), Ok(full));
}

#[test]
fn absent_optional_claims_are_not_written() {
    let token = mint(&key(), &claims()).unwrap();
    let payload = token.split('.').nth(1).unwrap();
    let value: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    let names: Vec<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected = vec![
        "iss", "sub", "aud", "scope", "exp", "iat", "nbf", "jti", "run", "step", "wf", "intent",
    ];
    expected.sort_unstable();
    let mut names = names;
    names.sort_unstable();
    assert_eq!(names, expected);
}

#[test]
fn header_is_exactly_alg_kid_typ() {
    let token = mint(&key(), &claims()).unwrap();
    let header = URL_SAFE_NO_PAD
        .decode(token.split('.').next().unwrap())
        .unwrap();
    let expected = format!(
        r#"{{"alg":"EdDSA","kid":"{}","typ":"stepgate-step+jwt"}}"#,
        key().kid()
    );
    assert_eq!(String::from_utf8(header).unwrap(), expected);
}

#[test]
fn minting_is_deterministic() {
    let first = mint(&key(), &claims()).unwrap();
    let second = mint(&KeyPair::from_secret_bytes([7u8; 32]), &claims()).unwrap();
    assert_eq!(first, second);
    assert_ne!(first, mint(&other_key(), &claims()).unwrap());
}

#[test]
fn mint_refuses_a_bad_scope() {
    let mut bad = claims();
    bad.scope = "db:read db;drop".to_string();
    assert_eq!(
        mint(&key(), &bad),
        Err(TokenError::BadScope(ScopeError::BadChar {
            scope: "db;drop".to_string(),
            bad: ';'
        }))
    );
}

#[test]
fn mint_refuses_oversize_claims() {
    let mut big = claims();
    big.run = "r".repeat(MAX_TOKEN_BYTES);
    assert!(
        matches!(mint(&key(), &big), Err(TokenError::Oversize { len }) if len > MAX_TOKEN_BYTES)
    );
}

#[test]
fn jsonwebtoken_verifies_a_minted_token() {
    let token = mint(&key(), &claims()).unwrap();
    let published = serde_json::to_string(&jwks_of(&key())).unwrap();

    // Everything below uses only the JSON text and jsonwebtoken.
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&published).unwrap();
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
    assert_eq!(header.typ.as_deref(), Some(TOKEN_TYP));
    let jwk = set.find(header.kid.as_deref().unwrap()).unwrap();
    let decoding = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();

    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_issuer(&[ISS]);
    validation.set_audience(&[AUD]);
    // jsonwebtoken reads the system clock; the test claims use a fixed time.
    validation.validate_exp = false;
    let data = jsonwebtoken::decode::<StepClaims>(&token, &decoding, &validation).unwrap();
    assert_eq!(data.claims, claims());
}

// ---- verification: shape ----

#[test]
fn oversize_token_is_refused_before_parsing() {
    let token = "a".repeat(MAX_TOKEN_BYTES + 1);
    assert_eq!(
        verify_with_key(&token),
        Err(TokenError::Oversize {
            len: MAX_TOKEN_BYTES + 1
        })
    );
}

#[test]
fn two_part_token_is_malformed() {
    let token = mint(&key(), &claims()).unwrap();
    let two = token.rsplit_once('.').unwrap().0;
    assert!(matches!(
        verify_with_key(two),
        Err(TokenError::Malformed(_))
    ));
}

#[test]
fn four_part_token_is_malformed() {
    let token = format!("{}.AAAA", mint(&key(), &claims()).unwrap());
    assert!(matches!(
        verify_with_key(&token),
        Err(TokenError::Malformed(_))
    ));
}

#[test]
fn non_base64_garbage_is_malformed() {
    assert_eq!(
        verify_with_key("!!!.@@@.###"),
        Err(TokenError::Malformed("header"))
    );
    assert_eq!(
        verify_with_key(""),
        Err(TokenError::Malformed(
            "token must have three dot-separated parts"
        ))
    );
}

#[test]
fn header_that_is_not_json_is_malformed() {
    let token = format!("{}.e30.AAAA", b64(b"not json"));
    assert_eq!(
        verify_with_key(&token),
        Err(TokenError::Malformed("header"))
    );
}

#[test]
fn crit_header_is_refused() {
    let mut header = good_header(&key());
    header["crit"] = serde_json::json!(["exp"]);
    let token = sign_raw(&key(), &header, &claims_json());
    assert!(matches!(
        verify_with_key(&token),
        Err(TokenError::Malformed(_))
    ));
}

#[test]
fn short_signature_is_malformed() {
    let token = mint(&key(), &claims()).unwrap();
    let (input, _) = token.rsplit_once('.').unwrap();
    let token = format!("{input}.{}", b64(&[0u8; 63]));
    assert_eq!(
        verify_with_key(&token),
        Err(TokenError::Malformed("signature"))
    );
}

// ---- verification: header ----

#[test]
fn alg_none_is_refused() {
    let header = serde_json::json!({"alg": "none", "kid": key().kid(), "typ": TOKEN_TYP});
    let token = format!(
        "{}.{}.",
        b64(header.to_string().as_bytes()),
        b64(claims_json().to_string().as_bytes())
    );
    assert_eq!(
        verify_with_key(&token),
        Err(TokenError::UnsupportedAlg("none".to_string()))
    );
}

#[test]
fn missing_alg_is_refused() {
    let header = serde_json::json!({"kid": key().kid(), "typ": TOKEN_TYP});
    let token = sign_raw(&key(), &header, &claims_json());
    assert_eq!(
        verify_with_key(&token),
        Err(TokenError::UnsupportedAlg(String::new()))
    );
}

#[test]
fn hs256_keyed_with_the_public_key_is_refused() {
    let public_x = URL_SAFE_NO_PAD.decode(key().public_jwk().x).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(key().kid().to_string());
    header.typ = Some(TOKEN_TYP.to_string());
    let secret = jsonwebtoken::EncodingKey::from_secret(&public_x);
    let token = jsonwebtoken::encode(&header, &claims(), &secret).unwrap();
    assert_eq!(
        verify_with_key(&token),
        Err(TokenError::UnsupportedAlg("HS256".to_string()))
    );
}

#[test]
fn rs256_header_is_refused() {
    let header = serde_json::json!({"alg": "RS256", "kid": key().kid(), "typ": TOKEN_TYP});
    let token = sign_raw(&key(), &header, &claims_json());
    assert_eq!(
        verify_with_key(&token),
        Err(TokenError::UnsupportedAlg("RS256".to_string()))
    );
}

#[test]
fn wrong_typ_is_refused() {
    let mut header = good_header(&key());
    header["typ"] = serde_json::json!("JWT");
    let token = sign_raw(&key(), &header, &claims_json());
    assert_eq!(
        verify_with_key(&token),
        Err(TokenError::WrongType(Some("JWT".to_string())))
    );
}

#[test]
fn missing_typ_is_refused() {
    let header = serde_json::json!({"alg": "EdDSA", "kid": key().kid()});
    let token = sign_raw(&key(), &header, &claims_json());
    assert_eq!(verify_with_key(&token), Err(TokenError::WrongType(None)));
}

#[test]
fn missing_kid_is_refused() {
    let header = serde_json::json!({"alg": "EdDSA", "typ": TOKEN_TYP});
    let token = sign_raw(&key(), &header, &claims_json());
    assert_eq!(verify_with_key(&token), Err(TokenError::MissingKid));
}

#[test]
fn unknown_kid_is_refused() {
    let token = mint(&other_key(), &claims()).unwrap();
    assert_eq!(
        verify_with_key(&token),
        Err(TokenError::UnknownKid(other_key().kid().to_string()))
    );
}

#[test]
fn long_unknown_kid_is_cut_in_the_error() {
    let mut header = good_header(&key());
    header["kid"] = serde_json::json!("k".repeat(500));
    let token = sign_raw(&key(), &header, &claims_json());
    assert_eq!(
        verify_with_key(&token),
        Err(TokenError::UnknownKid("k".repeat(64)))
    );
}

#[test]
fn jwks_entry_that_is_not_ed25519_is_a_bad_key() {
    let mut jwk = key().public_jwk();
    jwk.crv = "X25519".to_string();
    let token = mint(&key(), &claims()).unwrap();
    let result = verify(&token, &Jwks { keys: vec![jwk] }, &opts(NOW));
    assert_eq!(
        result,
        Err(TokenError::BadKey {
            kid: key().kid().to_string()
        })
    );
}

#[test]
fn jwks_entry_with_other_alg_is_a_bad_key() {
    let mut jwk = key().public_jwk();
    jwk.alg = Some("ES256".to_string());
    let token = mint(&key(), &claims()).unwrap();
    let result = verify(&token, &Jwks { keys: vec![jwk] }, &opts(NOW));
    assert_eq!(
        result,
        Err(TokenError::BadKey {
            kid: key().kid().to_string()
        })
    );
}

// ---- verification: signature ----

#[test]
fn tampered_payload_fails_the_signature() {
    let token = mint(&key(), &claims()).unwrap();
    let mut wider = claims();
    wider.scope = "db:read db:write orders:list".to_string();
    let forged_payload = b64(&serde_json::to_vec(&wider).unwrap());
    let parts: Vec<&str> = token.split('.').collect();
    let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
    assert_eq!(verify_with_key(&forged), Err(TokenError::BadSignature));
}

#[test]
fn tampered_signature_fails() {
    let token = mint(&key(), &claims()).unwrap();
    let (input, sig) = token.rsplit_once('.').unwrap();
    let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
    sig[0] ^= 0x01;
    let forged = format!("{input}.{}", b64(&sig));
    assert_eq!(verify_with_key(&forged), Err(TokenError::BadSignature));
}

#[test]
fn signature_by_another_key_under_our_kid_fails() {
    let token = sign_raw(&other_key(), &good_header(&key()), &claims_json());
    assert_eq!(verify_with_key(&token), Err(TokenError::BadSignature));
}

// ---- verification: claims ----

#[test]
fn expired_at_exactly_exp() {
    let token = mint(&key(), &claims()).unwrap();
    let exp = NOW + 300;
    assert_eq!(
        verify(&token, &jwks_of(&key()), &opts(exp)),
        Err(TokenError::Expired { exp, now: exp })
    );
    assert_eq!(
        verify(&token, &jwks_of(&key()), &opts(exp - 1)),
        Ok(claims())
    );
}

#[test]
fn nbf_in_the_future_is_refused() {
    let mut early = claims();
    early.nbf = NOW + 10;
    let token = mint(&key(), &early).unwrap();
    assert_eq!(
        verify_with_key(&token),
        Err(TokenError::NotYetValid {
            nbf: NOW + 10,
            now: NOW
        })
    );
    assert_eq!(verify(&token, &jwks_of(&key()), &opts(NOW + 10)), Ok(early));
}

#[test]
fn wrong_audience_is_refused() {
    let token = mint(&key(), &claims()).unwrap();
    let other = VerifyOptions {
        audience: "db://payments",
        ..opts(NOW)
    };
    assert_eq!(
        verify(&token, &jwks_of(&key()), &other),
        Err(TokenError::WrongAudience {
            expected: "db://payments".to_string(),
            found: AUD.to_string()
        })
    );
}

#[test]
fn audience_array_is_refused() {
    let mut payload = claims_json();
    payload["aud"] = serde_json::json!([AUD]);
    let token = sign_raw(&key(), &good_header(&key()), &payload);
    assert_eq!(verify_with_key(&token), Err(TokenError::AudienceNotString));
}

#[test]
fn wrong_issuer_is_refused() {
    let token = mint(&key(), &claims()).unwrap();
    let other = VerifyOptions {
        issuer: "https://evil.test",
        ..opts(NOW)
    };
    assert_eq!(
        verify(&token, &jwks_of(&key()), &other),
        Err(TokenError::WrongIssuer {
            expected: "https://evil.test".to_string(),
            found: ISS.to_string()
        })
    );
}

#[test]
fn missing_claim_is_named() {
    for name in [
        "iss", "sub", "aud", "scope", "exp", "iat", "nbf", "jti", "run", "step", "wf", "intent",
    ] {
        let mut payload = claims_json();
        payload.as_object_mut().unwrap().remove(name);
        let token = sign_raw(&key(), &good_header(&key()), &payload);
        assert_eq!(
            verify_with_key(&token),
            Err(TokenError::MissingClaim(name)),
            "{name}"
        );
    }
}

#[test]
fn claim_of_the_wrong_type_is_malformed() {
    let mut payload = claims_json();
    payload["exp"] = serde_json::json!("tomorrow");
    let token = sign_raw(&key(), &good_header(&key()), &payload);
    assert_eq!(
        verify_with_key(&token),
        Err(TokenError::Malformed("payload"))
    );
}

#[test]
fn duplicate_claim_is_malformed() {
    let header = b64(good_header(&key()).to_string().as_bytes());
    let body = claims_json().to_string();
    let body = body.replacen('{', r#"{"aud":"db://payments","#, 1);
    let input = format!("{header}.{}", b64(body.as_bytes()));
    let sig = key().signing.sign(input.as_bytes());
    let token = format!("{input}.{}", b64(&sig.to_bytes()));
    assert_eq!(
        verify_with_key(&token),
        Err(TokenError::Malformed("payload"))
    );
}

#[test]
fn unparsable_scope_is_refused() {
    let mut payload = claims_json();
    payload["scope"] = serde_json::json!("db:read db;drop");
    let token = sign_raw(&key(), &good_header(&key()), &payload);
    assert_eq!(
        verify_with_key(&token),
        Err(TokenError::BadScope(ScopeError::BadChar {
            scope: "db;drop".to_string(),
            bad: ';'
        }))
    );
}

// ---- digests ----

#[test]
fn digest_is_sha256_hex_of_the_bytes() {
    assert_eq!(
        digest("abc"),
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(
        intent_digest(""),
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}
