//! The `stepgate` binary as scripts use it: exit codes, JSON output, and
//! the demo end to end on the embedded default.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers stop at the first surprise"
)]

mod common;

use std::process::{Command, Output};

use common::*;

fn stepgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stepgate"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("binary runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn validate_accepts_every_example_and_exits_2_naming_file_step_and_field() {
    for name in ["release", "incident-response", "customer-support"] {
        let file = format!("examples/{name}/workflow.yaml");
        let out = stepgate(&["validate", &file]);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out.stderr));
    }
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    let wf = std::fs::read_to_string(example("release").join("workflow.yaml")).unwrap();
    std::fs::write(&bad, wf.replace("scopes: [deploy:staging]", "scopes: []")).unwrap();
    let out = stepgate(&["validate", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("bad.yaml"), "{err}");
    assert!(err.contains("deploy-staging"), "{err}");
    assert!(err.contains("scopes"), "{err}");

    let out = stepgate(&["validate", bad.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], false);
}

#[test]
fn plan_prints_decisions_and_the_one_production_batch_as_json() {
    let out = stepgate(&[
        "plan",
        "examples/release/workflow.yaml",
        "--policy",
        "examples/release/policy.cedar",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let steps: Vec<(String, String)> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["step"].as_str().unwrap().to_string(),
                s["decision"]["outcome"]["kind"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    let want = [
        ("unit-tests", "allow"),
        ("build-image", "allow"),
        ("sign-image", "allow"),
        ("deploy-staging", "allow"),
        ("deploy-production", "step_up"),
        ("migrate-production-db", "step_up"),
        ("smoke-check", "allow"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(steps, want);
    assert_eq!(
        plan["batches"],
        serde_json::json!([{"group": "release-managers", "steps": ["deploy-production", "migrate-production-db"]}])
    );
    assert_eq!(
        plan["steps"][4]["decision"]["policy_ids"],
        serde_json::json!(["production-rollout-needs-release-manager"])
    );

    let human = stepgate(&[
        "plan",
        "examples/customer-support/workflow.yaml",
        "--policy",
        "examples/customer-support/policy.cedar",
    ]);
    assert_eq!(human.status.code(), Some(0));
    let out = text(&human.stdout);
    assert!(
        out.contains(
            "review batch 1: group `privacy-officers` reviews lookup-order-history together"
        ),
        "{out}"
    );
    assert!(
        out.contains(
            "review batch 2: group `support-leads` reviews refund-duplicate-charge together"
        ),
        "{out}"
    );
}

#[test]
fn the_demo_runs_the_release_pipeline_and_verifies_its_audit_trail() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = stepgate(&[
        "demo",
        "examples/release",
        "--approve",
        "--data",
        data.to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("1 review batch(es) opened"), "{stdout}");
    assert!(
        stdout.contains("review  batch APPROVED by spiffe://dev.stepgate.local/human/riley"),
        "{stdout}"
    );
    assert_eq!(
        stdout.matches("tool    accepted the token").count(),
        7,
        "{stdout}"
    );
    assert_eq!(
        stdout
            .matches("replay  the same token after the step: refused")
            .count(),
        7,
        "{stdout}"
    );
    assert!(
        stdout.contains("every elevated token carries an approval of its own step"),
        "{stdout}"
    );
    assert!(stdout.contains("completed"), "{stdout}");

    // Offline audit on the same directory.
    let verify = stepgate(&[
        "audit",
        "verify",
        "--data",
        data.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify.stderr));
    let report: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["report"]["runs"], 1);
    assert_eq!(report["report"]["tokens"], 7);
    assert_eq!(report["report"]["batches"], 1);

    let timeline = stepgate(&["audit", "timeline", "--data", data.to_str().unwrap()]);
    let t = text(&timeline.stdout);
    assert_eq!(timeline.status.code(), Some(0));
    assert_eq!(t.matches(": token ").count(), 7 + 7, "{t}");
    assert!(
        t.contains("approved by spiffe://dev.stepgate.local/human/riley"),
        "{t}"
    );
    assert_eq!(t.matches("revoked (step_completed)").count(), 7, "{t}");

    let tokens = stepgate(&[
        "audit",
        "tokens",
        "--data",
        data.to_str().unwrap(),
        "--scope",
        "db:migrate",
        "--json",
    ]);
    let lines: Vec<serde_json::Value> = text(&tokens.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["step"], "migrate-production-db");
    assert!(lines[0]["approval"].is_string());

    // The JWKS is a standard one.
    let jwks = stepgate(&["keys", "jwks", "--data", data.to_str().unwrap()]);
    assert_eq!(jwks.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&jwks.stdout).unwrap();
    assert_eq!(v["keys"][0]["kty"], "OKP");
    assert_eq!(v["keys"][0]["crv"], "Ed25519");
    assert_eq!(v["keys"][0]["alg"], "EdDSA");
}

#[test]
fn a_denied_batch_stops_the_demo_with_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = stepgate(&[
        "demo",
        "examples/release",
        "--deny",
        "--data",
        data.to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("review  batch DENIED"), "{stdout}");
    assert!(stdout.contains("failed"), "{stdout}");
    assert_eq!(
        stdout.matches("tool    accepted the token").count(),
        4,
        "{stdout}"
    );
}

#[test]
fn audit_verify_names_the_first_tampered_sequence_number() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = stepgate(&[
        "demo",
        "examples/incident-response",
        "--approve",
        "--data",
        data.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    {
        let raw = stepgate::store::RawLog::open(&data).unwrap();
        let (seq, mut bytes) = raw.records().nth(9).unwrap().unwrap();
        let at = bytes.len() - 5;
        bytes[at] ^= 0x01;
        raw.overwrite(seq, &bytes).unwrap();
    }
    let verify = stepgate(&["audit", "verify", "--data", data.to_str().unwrap()]);
    assert_eq!(verify.status.code(), Some(1));
    let err = text(&verify.stderr);
    assert!(err.contains("chain broken at seq 9"), "{err}");
}

#[test]
fn token_verify_checks_audience_and_reads_the_token_from_stdin() {
    use std::io::Write;
    use stepgate::token::{mint, Jwks, KeyPair, StepClaims};
    let key = KeyPair::from_secret_bytes([9u8; 32]);
    let dir = tempfile::tempdir().unwrap();
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(
        &jwks_path,
        serde_json::to_string(&Jwks {
            keys: vec![key.public_jwk()],
        })
        .unwrap(),
    )
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = StepClaims {
        iss: "stepgate".into(),
        sub: "spiffe://dev.stepgate.local/agent/ci-runner".into(),
        aud: "https://ci.acme.internal".into(),
        scope: "ci:tests:run".into(),
        exp: now + 120,
        iat: now,
        nbf: now,
        jti: "01900000-0000-7000-8000-000000000001".into(),
        run: "r".into(),
        step: "unit-tests".into(),
        wf: "sha256:00".into(),
        intent: "sha256:11".into(),
        approval: None,
        act: None,
        cnf: None,
    };
    let token = mint(&key, &claims).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_stepgate"))
        .args([
            "token",
            "verify",
            "-",
            "--jwks",
            jwks_path.to_str().unwrap(),
            "--aud",
            "https://ci.acme.internal",
            "--json",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(token.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["claims"]["scope"], "ci:tests:run");

    let wrong = stepgate(&[
        "token",
        "verify",
        &token,
        "--jwks",
        jwks_path.to_str().unwrap(),
        "--aud",
        "https://deploy.prod.acme.internal",
    ]);
    assert_eq!(wrong.status.code(), Some(1));
    assert!(
        text(&wrong.stderr).contains("audience"),
        "{}",
        text(&wrong.stderr)
    );
}
