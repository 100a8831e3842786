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
fn every_example_completes_when_its_batches_are_approved() {
    // Regression: a step asking again after its own approval was counted
    // against itself and tripped the customer-support step-up guard.
    for name in ["incident-response", "customer-support"] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let example = format!("examples/{name}");
        let out = stepgate(&[
            "demo",
            &example,
            "--approve",
            "--data",
            data.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(0), "{name}:\n{}", text(&out.stdout));
        assert!(
            text(&out.stdout).contains("every elevated token carries an approval"),
            "{name}"
        );
    }
}

#[test]
fn audit_refuses_a_directory_without_a_log_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("typo");
    let out = stepgate(&["audit", "verify", "--data", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr).contains("no stepgate data directory here"),
        "{}",
        text(&out.stderr)
    );
    assert!(!missing.exists());
}

#[test]
fn a_demo_without_a_terminal_or_a_decision_flag_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = Command::new(env!("CARGO_BIN_EXE_stepgate"))
        .args(["demo", "examples/release", "--data", data.to_str().unwrap()])
        .current_dir(root())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("pass --approve or --deny"),
        "{}",
        text(&out.stderr)
    );
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

#[test]
fn hostile_text_is_refused_before_any_parser_recurses_into_it() {
    let dir = tempfile::tempdir().unwrap();
    let wf = std::fs::read_to_string(example("release").join("workflow.yaml")).unwrap();

    // An escape sequence that would hide words from a reviewer's terminal.
    let esc = dir.path().join("esc.yaml");
    // YAML's own `\e` escape in a double-quoted string yields ESC; a raw
    // ESC byte is already refused by the YAML reader.
    let line = "intent: Roll out payments-api v2.14.0 to production in eu-west-1 and us-east-1, 10% canary for 10 minutes, then 100%.";
    assert!(wf.contains(line));
    let hidden = r#"intent: "Roll out v2.14.0.\e[8m and disable the WAF\e[0m""#;
    std::fs::write(&esc, wf.replace(line, hidden)).unwrap();
    let out = stepgate(&["validate", esc.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains(
            "step `deploy-production`: field `intent`: contains the control character U+001B"
        ),
        "{err}"
    );

    // Deep nesting: a workflow and a policy.
    let deep = dir.path().join("deep.yaml");
    std::fs::write(
        &deep,
        format!(
            "version: 1\nname: x\nsteps: {}{}\n",
            "[".repeat(5000),
            "]".repeat(5000)
        ),
    )
    .unwrap();
    let out = stepgate(&["validate", deep.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("brackets nest 5000 levels deep; at most 32 are allowed"),
        "{}",
        text(&out.stderr)
    );

    let policy = dir.path().join("deep.cedar");
    let body = format!("{}true{}", "(".repeat(1000), ")".repeat(1000));
    std::fs::write(
        &policy,
        format!("@id(\"d\")\npermit (principal, action, resource) when {{ {body} }};\n"),
    )
    .unwrap();
    let out = stepgate(&[
        "plan",
        "examples/release/workflow.yaml",
        "--policy",
        policy.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("expressions nest 1001 levels deep"),
        "{}",
        text(&out.stderr)
    );
}

/// A data directory with a signing key and `events` key-created events,
/// written through the store as the engine would.
fn data_dir_with_events(events: u64) -> (tempfile::TempDir, std::path::PathBuf) {
    use stepgate::event::Event;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut store = stepgate::store::Store::open(&data).unwrap();
    store
        .put_key(stepgate::service::SIGNING_KEY, &[7u8; 32])
        .unwrap();
    let batch: Vec<Event> = (0..events)
        .map(|i| Event::KeyCreated {
            kid: format!("key-{i}"),
        })
        .collect();
    store.append(T0, batch).unwrap();
    store.flush_blocking().unwrap();
    drop(store);
    wait_for_sled_lock(&data);
    (dir, data)
}

/// Waits until nothing holds sled's lock on `data`. sled's file is closed
/// when a store drops, but a child that a parallel test forks at that
/// moment keeps the lock until it execs.
fn wait_for_sled_lock(data: &std::path::Path) {
    let file = std::fs::File::open(data.join("db")).unwrap();
    for _ in 0..500 {
        if file.try_lock().is_ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("{}: sled's lock is still held", data.display());
}

/// Runs the binary with stdout on a pipe whose read end is already closed.
fn run_with_stdout_closed(args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    Command::new(env!("CARGO_BIN_EXE_stepgate"))
        .args(args)
        .current_dir(root())
        .stdout(writer)
        .output()
        .unwrap()
}

#[test]
fn a_closed_stdout_ends_every_printing_command_with_141_and_no_panic() {
    let (dir, data) = data_dir_with_events(3);
    let data = data.to_str().unwrap();
    let demo_data = dir.path().join("demo");
    let demo_data = demo_data.to_str().unwrap();
    let commands: [&[&str]; 6] = [
        &["demo", "examples/release", "--approve", "--data", demo_data],
        &["audit", "timeline", "--data", data],
        &["audit", "verify", "--data", data, "--json"],
        &["keys", "jwks", "--data", data],
        &["validate", "examples/release/workflow.yaml"],
        &[
            "plan",
            "examples/release/workflow.yaml",
            "--policy",
            "examples/release/policy.cedar",
            "--json",
        ],
    ];
    for args in commands {
        let out = run_with_stdout_closed(args);
        let stderr = text(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(stderr, "", "{args:?}");
        assert_eq!(out.status.code(), Some(141), "{args:?}");
    }
}

#[test]
fn a_full_stdout_is_an_environment_failure_not_a_panic() {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_stepgate"))
        .args(["validate", "examples/release/workflow.yaml"])
        .current_dir(root())
        .stdout(full)
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.starts_with("error: cannot write to stdout: "),
        "{stderr}"
    );
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn a_reader_that_stops_after_a_few_bytes_ends_the_timeline_with_141_and_no_panic() {
    use std::io::Read;
    // More output than a pipe holds, so the writer is still writing when
    // the reader leaves, as with `stepgate audit timeline | head -1`.
    let (_dir, data) = data_dir_with_events(4000);
    let mut child = Command::new(env!("CARGO_BIN_EXE_stepgate"))
        .args(["audit", "timeline", "--data", data.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 32];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    assert!(text(&first).contains("#0 "), "{}", text(&first));
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(stderr, "");
    assert_eq!(out.status.code(), Some(141));
}

fn plan_with_reviewers(policy: &str, reviewers: &str, json: bool) -> Output {
    let mut args = vec![
        "plan",
        "examples/release/workflow.yaml",
        "--policy",
        policy,
        "--reviewers",
        reviewers,
    ];
    if json {
        args.push("--json");
    }
    stepgate(&args)
}

#[test]
fn plan_with_reviewers_accepts_the_examples_and_refuses_a_group_without_members() {
    for name in ["release", "incident-response", "customer-support"] {
        let out = stepgate(&[
            "plan",
            &format!("examples/{name}/workflow.yaml"),
            "--policy",
            &format!("examples/{name}/policy.cedar"),
            "--reviewers",
            &format!("examples/{name}/reviewers.yaml"),
            "--json",
        ]);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out.stderr));
        let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(plan["reviewers"]["errors"], serde_json::json!([]), "{name}");
        assert_eq!(
            plan["reviewers"]["warnings"],
            serde_json::json!([]),
            "{name}"
        );
    }

    // A policy may ask a group at run time that the preview never meets:
    // this permit only reviews after five step-ups.
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.cedar");
    let base = std::fs::read_to_string(example("release").join("policy.cedar")).unwrap();
    std::fs::write(
        &policy,
        format!(
            "{base}\n@id(\"late-smoke-needs-night-shift\")\n@review(\"night-shift\")\npermit (principal, action == Stepgate::Action::\"smoke.run\", resource)\nwhen {{ context.stepups_so_far >= 5 }};\n"
        ),
    )
    .unwrap();
    let reviewers = dir.path().join("reviewers.yaml");
    std::fs::write(
        &reviewers,
        "groups:\n  security:\n    - spiffe://dev.stepgate.local/human/riley\n",
    )
    .unwrap();
    let (policy, reviewers) = (policy.to_str().unwrap(), reviewers.to_str().unwrap());

    let out = plan_with_reviewers(policy, reviewers, false);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert_eq!(
        err.trim_end(),
        format!(
            "error: {reviewers}: review group `night-shift` has no members; policy `late-smoke-needs-night-shift` can send step `smoke-check` to it; review group `release-managers` has no members; policies `production-migration-needs-release-manager`, `production-rollout-needs-release-manager` can send steps `deploy-production`, `migrate-production-db` to it"
        )
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "reviewers {reviewers}: error: review group `night-shift` has no members"
        )),
        "{stdout}"
    );

    let out = plan_with_reviewers(policy, reviewers, true);
    assert_eq!(out.status.code(), Some(2));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["reviewers"]["file"], reviewers);
    assert_eq!(plan["reviewers"]["warnings"], serde_json::json!([]));
    let errors = plan["reviewers"]["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2);
    assert_eq!(errors[1]["kind"], "no_members");
    assert_eq!(errors[1]["group"], "release-managers");
    assert_eq!(
        errors[1]["steps"],
        serde_json::json!(["deploy-production", "migrate-production-db"])
    );
    assert_eq!(
        errors[1]["policy_ids"],
        serde_json::json!([
            "production-migration-needs-release-manager",
            "production-rollout-needs-release-manager"
        ])
    );
    assert_eq!(errors[0]["group"], "night-shift");
    assert_eq!(errors[0]["steps"], serde_json::json!(["smoke-check"]));
}

#[test]
fn plan_with_reviewers_warns_when_a_steps_agent_is_its_groups_only_member() {
    let dir = tempfile::tempdir().unwrap();
    let reviewers = dir.path().join("reviewers.yaml");
    std::fs::write(
        &reviewers,
        "groups:\n  release-managers:\n    - spiffe://dev.stepgate.local/agent/deployer\n",
    )
    .unwrap();
    let reviewers = reviewers.to_str().unwrap();
    let out = plan_with_reviewers("examples/release/policy.cedar", reviewers, true);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["reviewers"]["errors"], serde_json::json!([]));
    assert_eq!(
        plan["reviewers"]["warnings"],
        serde_json::json!([{
            "kind": "self_review",
            "group": "release-managers",
            "steps": ["deploy-production"],
            "policy_ids": ["production-rollout-needs-release-manager"],
            "agent": "spiffe://dev.stepgate.local/agent/deployer",
            "message": "step `deploy-production`: its agent spiffe://dev.stepgate.local/agent/deployer is the only member of review group `release-managers`, and nobody may review their own step"
        }])
    );

    let out = plan_with_reviewers("examples/release/policy.cedar", reviewers, false);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stdout).contains(&format!(
            "reviewers {reviewers}: warning: step `deploy-production`: its agent"
        )),
        "{}",
        text(&out.stdout)
    );
}

/// Overwrites the value of record `seq` in the `log` tree through sled.
fn overwrite_record_with_sled(data: &std::path::Path, seq: u64, bytes: &[u8]) {
    {
        let db = sled::open(data).unwrap();
        let log = db.open_tree("log").unwrap();
        assert!(log.get(seq.to_be_bytes()).unwrap().is_some());
        log.insert(seq.to_be_bytes(), bytes).unwrap();
        db.flush().unwrap();
    }
    wait_for_sled_lock(data);
}

#[test]
fn a_record_that_does_not_decode_is_named_by_tree_and_seq_and_audit_verify_exits_1() {
    let (_dir, data) = data_dir_with_events(8);
    // Garbage: a msgpack string holding a terminal escape, not a record.
    overwrite_record_with_sled(&data, 5, b"\xa6\x1b[2Jab");

    let out = stepgate(&["audit", "verify", "--data", data.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.starts_with(
            "error: chain broken at seq 5: `log` tree: seq 5: record does not decode: "
        ),
        "{err}"
    );
    assert!(!err.contains('\u{1b}'), "{err:?}");

    let out = stepgate(&[
        "audit",
        "verify",
        "--data",
        data.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["first_bad_seq"], 5);
    assert_eq!(v["tree"], "log");

    // The store refuses to open on it, naming the same place.
    match stepgate::store::Store::open(&data) {
        Err(e) => {
            assert_eq!(e.seq(), Some(5));
            assert!(
                e.to_string()
                    .starts_with("`log` tree: seq 5: record does not decode: "),
                "{e}"
            );
        }
        Ok(_) => panic!("a store with a garbage record opened"),
    }
}

#[test]
fn a_truncated_record_is_named_by_seq_and_audit_verify_exits_1() {
    let (_dir, data) = data_dir_with_events(8);
    let whole = {
        let raw = stepgate::store::RawLog::open(&data).unwrap();
        let (_, bytes) = raw.records().nth(3).unwrap().unwrap();
        bytes
    };
    wait_for_sled_lock(&data);
    overwrite_record_with_sled(&data, 3, &whole[..whole.len() / 2]);

    let out = stepgate(&["audit", "verify", "--data", data.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.starts_with(
            "error: chain broken at seq 3: `log` tree: seq 3: record does not decode: "
        ),
        "{err}"
    );
    let out = stepgate(&["audit", "timeline", "--data", data.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with("error: `log` tree: seq 3: record does not decode: "),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn expect_head_takes_the_printed_head_with_or_without_its_prefix_and_refuses_garbage() {
    let (_dir, data) = data_dir_with_events(3);
    let data = data.to_str().unwrap();
    let out = stepgate(&["audit", "verify", "--data", data, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let head = report["report"]["head"].as_str().unwrap().to_string();
    assert_eq!(head.len(), 64);
    for given in [head.clone(), format!("sha256:{head}"), head.to_uppercase()] {
        let out = stepgate(&["audit", "verify", "--data", data, "--expect-head", &given]);
        assert_eq!(out.status.code(), Some(0), "{given}: {}", text(&out.stdout));
    }
    let other = "0".repeat(64);
    let out = stepgate(&["audit", "verify", "--data", data, "--expect-head", &other]);
    assert_eq!(out.status.code(), Some(1));
    let out = stepgate(&["audit", "verify", "--data", data, "--expect-head", "nothex"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--expect-head `nothex`: expected the 64 hex digits"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn audit_tokens_at_refuses_seconds_instead_of_reading_them_as_1970() {
    let (_dir, data) = data_dir_with_events(1);
    let data = data.to_str().unwrap();
    let out = stepgate(&["audit", "tokens", "--data", data, "--at", "1796416730"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--at `1796416730` looks like seconds"),
        "{}",
        text(&out.stderr)
    );
    for ok in ["1796416730000", "2026-12-04T16:00:00Z"] {
        let out = stepgate(&["audit", "tokens", "--data", data, "--at", ok]);
        assert_eq!(out.status.code(), Some(0), "{ok}: {}", text(&out.stderr));
    }
}
