//! Tests of the file format through the public API.

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "a test fails by panicking; the crate-wide lints guard library code"
)]

use std::io::Write;

use super::*;
use crate::scope::ScopeError;
use crate::spiffe::SpiffeIdError;

/// The example from the format's documentation, with every field written.
const RELEASE: &str = "\
version: 1
name: release-pipeline
description: Ship a release candidate to production.
deadline: 45m
stepup_budget: 4
steps:
  - id: unit-tests
    agent: spiffe://dev.stepgate.local/agent/ci-runner
    action: tests.run
    resource: https://ci.acme.internal
    scopes: [ci:tests:run]
    intent: Run the unit test suite on the release candidate.
    risk: low
    ttl: 2m
    depends_on: []
  - id: deploy-prod
    agent: spiffe://dev.stepgate.local/agent/deployer
    action: deploy.rollout
    resource: https://deploy.prod.acme.internal
    scopes: [deploy:production, deploy:canary]
    intent: \"  Roll the release out to production.  \"
    risk: high
    ttl: 30m
    depends_on: [unit-tests]
";

/// The same workflow as [`RELEASE`], written as JSON with other spellings.
const RELEASE_JSON: &str = r#"
  {"steps": [
     {"id": "unit-tests", "agent": "spiffe://dev.stepgate.local/agent/ci-runner",
      "action": "tests.run", "resource": "https://ci.acme.internal",
      "scopes": ["ci:tests:run"], "risk": "low", "ttl": 120,
      "intent": "Run the unit test suite on the release candidate."},
     {"id": "deploy-prod", "agent": "spiffe://dev.stepgate.local/agent/deployer",
      "action": "deploy.rollout", "resource": "https://deploy.prod.acme.internal",
      "scopes": ["deploy:canary", "deploy:production"], "risk": "high", "ttl": "1800s",
      "intent": "Roll the release out to production.", "depends_on": ["unit-tests"]}],
   "version": 1, "name": "release-pipeline", "stepup_budget": 4, "deadline": 2700,
   "description": "Ship a release candidate to production."}
"#;

/// A workflow of one valid step; tests swap single lines to break it.
const ONE: &str = "\
version: 1
name: one
steps:
  - id: only
    agent: spiffe://dev.stepgate.local/agent/ci-runner
    action: tests.run
    resource: https://ci.acme.internal
    scopes: [ci:tests:run]
    intent: Run the tests.
    risk: low
    ttl: 2m
";

/// A valid step with `id` and `depends_on`, as a YAML list entry.
fn step(id: &str, depends_on: &[&str]) -> String {
    format!(
        "  - id: {id}
    agent: spiffe://dev.stepgate.local/agent/a
    action: do.it
    resource: https://r.example
    scopes: [s:x]
    intent: Step {id}.
    risk: low
    ttl: 60
    depends_on: [{}]
",
        depends_on.join(", ")
    )
}

/// A workflow of the given steps.
fn graph(steps: &[(&str, &[&str])]) -> String {
    let body: String = steps.iter().map(|(id, deps)| step(id, deps)).collect();
    format!("version: 1\nname: g\nsteps:\n{body}")
}

/// [`ONE`] with the line `from` replaced by `to`.
fn one_with(from: &str, to: &str) -> String {
    assert!(ONE.contains(from), "{from}");
    ONE.replace(from, to)
}

fn ok(text: &str) -> Workflow {
    match Workflow::parse("wf.yaml", text) {
        Ok(wf) => wf,
        Err(e) => panic!("expected a workflow, got: {e}"),
    }
}

fn err(text: &str) -> WorkflowError {
    match Workflow::parse("wf.yaml", text) {
        Ok(wf) => panic!("expected an error, got {wf:?}"),
        Err(e) => e,
    }
}

/// The `(step, field, message)` of a [`WorkflowError::Field`] in `wf.yaml`.
fn field_err(text: &str) -> (Option<String>, &'static str, String) {
    match err(text) {
        WorkflowError::Field {
            file,
            step,
            field,
            message,
        } => {
            assert_eq!(file, "wf.yaml");
            (step, field, message)
        }
        other => panic!("expected a field error, got {other:?}"),
    }
}

/// `(path, message)` of a [`WorkflowError::Syntax`] in `wf.yaml`.
fn syntax_err(text: &str) -> (String, String) {
    match err(text) {
        WorkflowError::Syntax {
            file,
            path,
            message,
        } => {
            assert_eq!(file, "wf.yaml");
            (path, message)
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

fn only(field: &'static str, message: &str) -> (Option<String>, &'static str, String) {
    (Some("only".to_string()), field, message.to_string())
}

fn top(field: &'static str, message: &str) -> (Option<String>, &'static str, String) {
    (None, field, message.to_string())
}

fn ids<'a>(steps: impl Iterator<Item = &'a Step>) -> Vec<&'a str> {
    steps.map(|s| s.id.as_str()).collect()
}

// --- accepted files ---

#[test]
fn release_example_loads_with_every_field() {
    let wf = ok(RELEASE);
    assert_eq!(wf.name, "release-pipeline");
    assert_eq!(
        wf.description.as_deref(),
        Some("Ship a release candidate to production.")
    );
    assert_eq!(wf.deadline_secs, 45 * 60);
    assert_eq!(wf.stepup_budget, 4);
    assert_eq!(wf.source(), "wf.yaml");
    assert_eq!(ids(wf.steps().iter()), ["unit-tests", "deploy-prod"]);

    let deploy = wf.step("deploy-prod").unwrap();
    assert_eq!(
        deploy.agent.as_str(),
        "spiffe://dev.stepgate.local/agent/deployer"
    );
    assert_eq!(deploy.action, "deploy.rollout");
    assert_eq!(deploy.resource, "https://deploy.prod.acme.internal");
    assert_eq!(
        deploy.scopes.to_strings(),
        ["deploy:canary", "deploy:production"]
    );
    assert_eq!(deploy.intent, "Roll the release out to production.");
    assert_eq!(deploy.risk, Risk::High);
    assert_eq!(deploy.ttl_secs, 1800);
    assert_eq!(deploy.depends_on, ["unit-tests"]);
    assert_eq!(wf.step("unit-tests").unwrap().ttl_secs, 120);
    assert!(wf.step("nope").is_none());
}

#[test]
fn omitted_fields_take_their_defaults() {
    let wf = ok(ONE);
    assert_eq!(wf.description, None);
    assert_eq!(wf.deadline_secs, DEFAULT_DEADLINE_SECS);
    assert_eq!(wf.stepup_budget, DEFAULT_STEPUP_BUDGET);
    assert!(wf.step("only").unwrap().depends_on.is_empty());
}

#[test]
fn json_input_is_accepted_and_equals_the_yaml() {
    let json = ok(RELEASE_JSON);
    assert_eq!(json.deadline_secs, 2700);
    assert_eq!(json.step("deploy-prod").unwrap().ttl_secs, 1800);
    assert_eq!(json, ok(RELEASE));
}

#[test]
fn ttl_bounds_are_inclusive_and_integers_are_seconds() {
    let ttl = |t: &str| ok(&one_with("ttl: 2m", t)).step("only").unwrap().ttl_secs;
    assert_eq!(ttl("ttl: 10s"), 10);
    assert_eq!(ttl("ttl: 1h"), 3600);
    assert_eq!(ttl("ttl: 60m"), 3600);
    assert_eq!(ttl("ttl: 90"), 90);
    assert_eq!(ttl("ttl: \"90s\""), 90);
}

#[test]
fn deadline_and_budget_bounds_are_inclusive() {
    let wf = ok(&ONE.replace("name: one", "name: one\ndeadline: 24h\nstepup_budget: 1000"));
    assert_eq!((wf.deadline_secs, wf.stepup_budget), (86400, 1000));
    let wf = ok(&ONE.replace("name: one", "name: one\ndeadline: 1m\nstepup_budget: 0"));
    assert_eq!((wf.deadline_secs, wf.stepup_budget), (60, 0));
}

#[test]
fn every_risk_class_is_read() {
    for (text, risk) in [
        ("low", Risk::Low),
        ("medium", Risk::Medium),
        ("high", Risk::High),
        ("critical", Risk::Critical),
    ] {
        let wf = ok(&one_with("risk: low", &format!("risk: {text}")));
        assert_eq!(wf.step("only").unwrap().risk, risk);
    }
}

#[test]
fn max_steps_are_accepted() {
    let steps: Vec<String> = (0..MAX_STEPS).map(|i| format!("s{i}")).collect();
    let list: Vec<(&str, &[&str])> = steps.iter().map(|s| (s.as_str(), &[][..])).collect();
    assert_eq!(ok(&graph(&list)).steps().len(), MAX_STEPS);
}

// --- top-level rules ---

#[test]
fn version_other_than_1_is_refused() {
    assert_eq!(
        field_err(&ONE.replace("version: 1", "version: 2")),
        top("version", "`2` is not supported; must be 1")
    );
}

#[test]
fn version_is_reported_before_fields_a_later_format_may_add() {
    let text = ONE.replace("version: 1", "version: 2\nretries: 3");
    assert_eq!(
        field_err(&text),
        top("version", "`2` is not supported; must be 1")
    );
    let json = r#"{"version": 3, "name": "x", "steps": [], "retries": 1}"#;
    assert_eq!(
        field_err(json),
        top("version", "`3` is not supported; must be 1")
    );
}

#[test]
fn bad_names_are_refused() {
    let pattern = "does not match `[a-z0-9][a-z0-9_-]{0,63}`";
    for name in ["Release", "-release", "release.pipeline", "\"a b\""] {
        let shown = name.trim_matches('"');
        assert_eq!(
            field_err(&ONE.replace("name: one", &format!("name: {name}"))),
            top("name", &format!("`{shown}` {pattern}")),
        );
    }
    let long = "a".repeat(65);
    assert_eq!(
        field_err(&ONE.replace("name: one", &format!("name: {long}"))),
        top("name", &format!("`{long}` {pattern}")),
    );
    assert_eq!(
        field_err(&ONE.replace("name: one", "name: \"\"")),
        top("name", "must not be empty")
    );
}

#[test]
fn deadline_out_of_bounds_is_refused() {
    let deadline =
        |d: &str| field_err(&ONE.replace("name: one", &format!("name: one\ndeadline: {d}")));
    assert_eq!(
        deadline("59s"),
        top(
            "deadline",
            "`59s` is out of range; must be between 1m and 24h"
        )
    );
    assert_eq!(
        deadline("25h"),
        top(
            "deadline",
            "`25h` is out of range; must be between 1m and 24h"
        )
    );
    assert_eq!(
        deadline("0"),
        top(
            "deadline",
            "`0` is out of range; must be between 1m and 24h"
        )
    );
    assert_eq!(
        deadline("1d"),
        top(
            "deadline",
            "`1d` is not a duration like `90s`, `2m` or `1h`; must be between 1m and 24h"
        )
    );
}

#[test]
fn stepup_budget_over_1000_is_refused() {
    let text = ONE.replace("name: one", "name: one\nstepup_budget: 1001");
    assert_eq!(
        field_err(&text),
        top(
            "stepup_budget",
            "`1001` is too large; must be between 0 and 1000"
        )
    );
    let huge = ONE.replace(
        "name: one",
        "name: one\nstepup_budget: 18446744073709551615",
    );
    assert_eq!(
        field_err(&huge),
        top(
            "stepup_budget",
            "`18446744073709551615` is too large; must be between 0 and 1000"
        )
    );
}

#[test]
fn no_steps_is_refused() {
    assert_eq!(
        field_err("version: 1\nname: empty\nsteps: []\n"),
        top("steps", "must hold at least one step")
    );
}

#[test]
fn too_many_steps_are_refused() {
    let steps: Vec<String> = (0..=MAX_STEPS).map(|i| format!("s{i}")).collect();
    let list: Vec<(&str, &[&str])> = steps.iter().map(|s| (s.as_str(), &[][..])).collect();
    assert_eq!(
        field_err(&graph(&list)),
        top("steps", "holds 513 steps; at most 512 are allowed")
    );
}

// --- step fields ---

#[test]
fn bad_step_id_names_the_step_by_position() {
    let text = graph(&[("a", &[]), ("B_2", &[])]);
    assert_eq!(
        field_err(&text),
        (
            Some("#2".to_string()),
            "id",
            "`B_2` does not match `[a-z0-9][a-z0-9_-]{0,63}`".to_string()
        )
    );
}

#[test]
fn duplicate_ids_report_both_positions() {
    match err(&graph(&[("a", &[]), ("b", &[]), ("a", &[])])) {
        WorkflowError::DuplicateId {
            file,
            step,
            first,
            second,
        } => {
            assert_eq!(
                (file.as_str(), step.as_str(), first, second),
                ("wf.yaml", "a", 1, 3)
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn malformed_spiffe_ids_are_refused_with_the_reason() {
    let agent = "agent: spiffe://dev.stepgate.local/agent/ci-runner";
    let cases = [
        ("https://dev.stepgate.local/agent/x", SpiffeIdError::Scheme),
        ("spiffe://dev.stepgate.local", SpiffeIdError::EmptyPath),
        ("spiffe:///agent/x", SpiffeIdError::EmptyTrustDomain),
        (
            "spiffe://Dev.local/agent",
            SpiffeIdError::TrustDomainChar('D'),
        ),
        ("spiffe://dev.local/agent//x", SpiffeIdError::EmptySegment),
        ("spiffe://dev.local/agent/../x", SpiffeIdError::DotSegment),
        ("spiffe://dev.local/agent?x", SpiffeIdError::PathChar('?')),
    ];
    for (bad, why) in cases {
        let got = field_err(&one_with(agent, &format!("agent: \"{bad}\"")));
        assert_eq!(got, only("agent", &why.to_string()), "{bad}");
    }
    let got = field_err(&one_with(agent, "agent: ci-runner"));
    assert_eq!(got, only("agent", "must start with `spiffe://`"));
}

#[test]
fn bad_actions_are_refused() {
    let pattern = "does not match `[a-z][a-z0-9_.-]{0,63}`";
    for action in ["Tests.run", "1tests", "tests run", "tests:run"] {
        assert_eq!(
            field_err(&one_with(
                "action: tests.run",
                &format!("action: \"{action}\"")
            )),
            only("action", &format!("`{action}` {pattern}")),
        );
    }
    assert_eq!(
        field_err(&one_with("action: tests.run", "action: \"\"")),
        only("action", "must not be empty")
    );
}

#[test]
fn bad_resources_are_refused() {
    let line = "resource: https://ci.acme.internal";
    let resource = |r: &str| field_err(&one_with(line, &format!("resource: \"{r}\"")));
    assert_eq!(resource(""), only("resource", "must not be empty"));
    assert_eq!(resource("   "), only("resource", "must not be empty"));
    assert_eq!(
        resource("https://a https://b"),
        only(
            "resource",
            "`https://a https://b` contains whitespace; a resource is one value"
        )
    );
    assert_eq!(
        resource(&"r".repeat(257)),
        only("resource", "is 257 bytes; at most 256 are allowed")
    );
    let wf = ok(&one_with(line, &format!("resource: {}", "r".repeat(256))));
    assert_eq!(wf.step("only").unwrap().resource.len(), 256);
}

#[test]
fn empty_scopes_are_refused() {
    let got = field_err(&one_with("scopes: [ci:tests:run]", "scopes: []"));
    assert_eq!(got, only("scopes", "must not be empty"));
}

#[test]
fn bad_scope_syntax_is_refused_with_the_scope_error() {
    let got = field_err(&one_with("scopes: [ci:tests:run]", "scopes: [\"ci:*\"]"));
    let why = ScopeError::BadChar {
        scope: "ci:*".to_string(),
        bad: '*',
    };
    assert_eq!(got, only("scopes", &why.to_string()));
    assert_eq!(
        got.2,
        "scope `ci:*` contains `*`; allowed are a-z A-Z 0-9 and : . _ / -"
    );
}

#[test]
fn too_many_scopes_are_refused() {
    let many: Vec<String> = (0..=32).map(|i| format!("s{i}")).collect();
    let got = field_err(&one_with(
        "scopes: [ci:tests:run]",
        &format!("scopes: [{}]", many.join(", ")),
    ));
    assert_eq!(
        got,
        only("scopes", "33 scopes given; at most 32 are allowed")
    );
}

#[test]
fn a_scope_listed_twice_is_refused() {
    let got = field_err(&one_with("scopes: [ci:tests:run]", "scopes: [a, b, a]"));
    assert_eq!(got, only("scopes", "scope `a` is listed twice"));
}

#[test]
fn intent_must_hold_text_within_the_limit() {
    let line = "intent: Run the tests.";
    assert_eq!(
        field_err(&one_with(line, "intent: \"  \\n \"")),
        only("intent", "must not be empty")
    );
    let long = "x".repeat(MAX_INTENT_BYTES + 1);
    assert_eq!(
        field_err(&one_with(line, &format!("intent: {long}"))),
        only("intent", "is 2001 bytes; at most 2000 are allowed")
    );
    // The limit applies after trimming.
    let padded = format!("intent: \"  {}  \"", "x".repeat(MAX_INTENT_BYTES));
    assert_eq!(
        ok(&one_with(line, &padded))
            .step("only")
            .unwrap()
            .intent
            .len(),
        MAX_INTENT_BYTES
    );
}

#[test]
fn ttl_out_of_bounds_is_refused_with_the_bounds() {
    let ttl = |t: &str| field_err(&one_with("ttl: 2m", t));
    assert_eq!(
        ttl("ttl: 5s"),
        only("ttl", "`5s` is out of range; must be between 10s and 1h")
    );
    assert_eq!(
        ttl("ttl: 2h"),
        only("ttl", "`2h` is out of range; must be between 10s and 1h")
    );
    assert_eq!(
        ttl("ttl: 9"),
        only("ttl", "`9` is out of range; must be between 10s and 1h")
    );
    assert_eq!(
        ttl("ttl: 3601"),
        only("ttl", "`3601` is out of range; must be between 10s and 1h")
    );
    assert_eq!(
        ttl("ttl: 2 minutes"),
        only(
            "ttl",
            "`2 minutes` is not a duration like `90s`, `2m` or `1h`; must be between 10s and 1h"
        )
    );
}

#[test]
fn ttl_of_the_wrong_type_is_a_syntax_error() {
    let (path, message) = syntax_err(&one_with("ttl: 2m", "ttl: -5"));
    assert_eq!(path, "steps[0] (only).ttl");
    assert_eq!(message, "invalid value: integer `-5`, expected a duration such as `90s`, `2m` or `1h`, or whole seconds");
    let (path, message) = syntax_err(&one_with("ttl: 2m", "ttl: 1.5"));
    assert_eq!(path, "steps[0] (only).ttl");
    assert_eq!(message, "invalid type: floating point `1.5`, expected a duration such as `90s`, `2m` or `1h`, or whole seconds");
}

// --- dependencies ---

#[test]
fn self_loop_is_refused() {
    match err(&graph(&[("a", &[]), ("b", &["a", "b"])])) {
        WorkflowError::SelfLoop { file, step } => {
            assert_eq!((file.as_str(), step.as_str()), ("wf.yaml", "b"))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_dependency_is_refused() {
    match err(&graph(&[("a", &[]), ("b", &["a", "ghost"])])) {
        WorkflowError::UnknownDependency {
            file,
            step,
            dependency,
        } => {
            assert_eq!(
                (file.as_str(), step.as_str(), dependency.as_str()),
                ("wf.yaml", "b", "ghost")
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_dependency_listed_twice_is_refused() {
    let got = field_err(&graph(&[("a", &[]), ("b", &["a", "a"])]));
    assert_eq!(
        got,
        (
            Some("b".to_string()),
            "depends_on",
            "`a` is listed twice".to_string()
        )
    );
}

#[test]
fn dependencies_may_name_later_steps() {
    let wf = ok(&graph(&[("b", &["a"]), ("a", &[])]));
    assert_eq!(ids(wf.topo_order()), ["a", "b"]);
}

#[test]
fn three_step_cycle_is_reported_from_its_first_member() {
    // `d` comes first in the file but is only downstream of the cycle.
    let text = graph(&[("d", &["a"]), ("a", &["b"]), ("b", &["c"]), ("c", &["a"])]);
    match err(&text) {
        WorkflowError::Cycle { file, path } => {
            assert_eq!(file, "wf.yaml");
            assert_eq!(path, ["a", "b", "c", "a"]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn cycle_entered_midway_still_starts_at_its_first_member() {
    // The walk from `x` enters the cycle at `c`; the report starts at `b`.
    let text = graph(&[("x", &["c"]), ("b", &["c"]), ("c", &["e"]), ("e", &["b"])]);
    match err(&text) {
        WorkflowError::Cycle { path, .. } => assert_eq!(path, ["b", "c", "e", "b"]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn two_step_cycle_is_reported() {
    match err(&graph(&[("a", &["b"]), ("b", &["a"])])) {
        WorkflowError::Cycle { path, .. } => assert_eq!(path, ["a", "b", "a"]),
        other => panic!("{other:?}"),
    }
}

// --- shape and syntax ---

#[test]
fn unknown_top_level_field_is_refused() {
    let (path, message) = syntax_err(&ONE.replace("name: one", "name: one\nretries: 3"));
    assert_eq!(path, "retries");
    assert!(
        message.starts_with("unknown field `retries`, expected one of `version`, `name`"),
        "{message}"
    );
}

#[test]
fn unknown_step_field_names_the_step_by_id() {
    let (path, message) = syntax_err(&one_with("risk: low", "risk: low\n    retries: 3"));
    assert_eq!(path, "steps[0] (only).retries");
    assert!(
        message.starts_with("unknown field `retries`, expected one of `id`, `agent`"),
        "{message}"
    );
}

#[test]
fn step_without_a_valid_id_is_named_by_position() {
    let (path, _) = syntax_err(
        &one_with("risk: low", "risk: low\n    retries: 3").replace("id: only", "id: Only"),
    );
    assert_eq!(path, "steps[0].retries");
    let (path, message) = syntax_err(&one_with("- id: only\n    agent", "- agent"));
    assert_eq!(
        (path.as_str(), message.as_str()),
        ("steps[0]", "missing field `id`")
    );
}

#[test]
fn missing_intent_is_refused() {
    let (path, message) = syntax_err(&one_with("    intent: Run the tests.\n", ""));
    assert_eq!(
        (path.as_str(), message.as_str()),
        ("steps[0] (only)", "missing field `intent`")
    );
}

#[test]
fn unknown_risk_is_refused() {
    let (path, message) = syntax_err(&one_with("risk: low", "risk: extreme"));
    assert_eq!(path, "steps[0] (only).risk");
    assert_eq!(
        message,
        "unknown variant `extreme`, expected one of `low`, `medium`, `high`, `critical`"
    );
}

#[test]
fn wrong_types_are_refused_with_a_path() {
    let (path, message) = syntax_err(&one_with("scopes: [ci:tests:run]", "scopes: ci:tests:run"));
    assert_eq!(path, "steps[0] (only).scopes");
    assert_eq!(
        message,
        "invalid type: string \"ci:tests:run\", expected a sequence"
    );
    let (path, _) = syntax_err(&ONE.replace("version: 1", "version: \"1\""));
    assert_eq!(path, "version");
}

#[test]
fn explicit_null_for_an_optional_field_is_refused() {
    let (path, message) = syntax_err(&ONE.replace("name: one", "name: one\ndescription:"));
    assert_eq!(path, "description");
    assert_eq!(message, "invalid type: unit value, expected a string");
}

#[test]
fn yaml_syntax_errors_are_refused() {
    let (path, message) = syntax_err("version: 1\nsteps: [\n");
    assert_eq!(path, "");
    assert!(message.contains("line 3 column 1"), "{message}");
}

#[test]
fn duplicate_keys_are_refused_in_yaml_and_json() {
    let (_, message) = syntax_err(&ONE.replace("name: one", "name: one\nname: two"));
    assert_eq!(message, "duplicate entry with key \"name\"");
    let (_, message) = syntax_err(r#"{"version": 1, "version": 1}"#);
    assert_eq!(message, "duplicate field `version` at line 1 column 24");
}

#[test]
fn json_errors_name_the_step_and_trailing_text_is_refused() {
    let json = RELEASE_JSON.replace("\"risk\": \"high\"", "\"risk\": \"high\", \"x\": 1");
    let (path, message) = syntax_err(&json);
    assert_eq!(path, "steps[1] (deploy-prod).x");
    assert!(message.starts_with("unknown field `x`"), "{message}");
    let (path, message) = syntax_err(&format!("{RELEASE_JSON} {{}}"));
    assert_eq!(
        (path.as_str(), message.as_str()),
        ("", "trailing characters at line 13 column 2")
    );
}

#[test]
fn empty_and_non_mapping_documents_are_refused() {
    assert_eq!(
        syntax_err(""),
        (String::new(), "document is empty".to_string())
    );
    assert_eq!(
        syntax_err("# only a comment\n"),
        (String::new(), "document is empty".to_string())
    );
    assert_eq!(
        syntax_err("- a\n- b\n"),
        (
            String::new(),
            "invalid type: sequence, expected a mapping of workflow fields".to_string()
        )
    );
}

#[test]
fn first_problem_in_file_order_is_reported() {
    // Step 2 names an unknown dependency; step 3 has a bad ttl.
    let bad_ttl = step("c", &[]).replace("ttl: 60", "ttl: 5");
    let text = format!("{}{}{bad_ttl}", graph(&[("a", &[])]), step("b", &["ghost"]));
    match err(&text) {
        WorkflowError::UnknownDependency { step, .. } => assert_eq!(step, "b"),
        other => panic!("{other:?}"),
    }
    let bad_ttl_first = format!("{}{}", graph(&[("a", &[])]), bad_ttl);
    let text = format!("{bad_ttl_first}{}", step("b", &["ghost"]));
    assert_eq!(
        field_err(&text),
        (
            Some("c".to_string()),
            "ttl",
            "`5` is out of range; must be between 10s and 1h".to_string()
        )
    );
}

// --- size limits ---

#[test]
fn oversize_text_is_refused() {
    let text = format!(
        "{ONE}#{}\n",
        "x".repeat(usize::try_from(MAX_FILE_BYTES).unwrap())
    );
    match err(&text) {
        WorkflowError::TooLarge { file, size, limit } => {
            assert_eq!(file, "wf.yaml");
            assert_eq!(size, u64::try_from(text.len()).unwrap());
            assert_eq!(limit, MAX_FILE_BYTES);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn load_refuses_an_oversize_file_by_its_size() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.as_file_mut().set_len(MAX_FILE_BYTES + 1).unwrap();
    match Workflow::load(file.path()) {
        Err(WorkflowError::TooLarge {
            file: name,
            size,
            limit,
        }) => {
            assert_eq!(name, file.path().display().to_string());
            assert_eq!((size, limit), (MAX_FILE_BYTES + 1, MAX_FILE_BYTES));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn load_reads_a_file_and_names_it() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(RELEASE.as_bytes()).unwrap();
    let wf = Workflow::load(file.path()).unwrap();
    assert_eq!(wf.source(), file.path().display().to_string());
    assert_eq!(wf, ok(RELEASE));
}

#[test]
fn load_of_a_missing_file_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.yaml");
    match Workflow::load(&path) {
        Err(WorkflowError::Io { file, source }) => {
            assert_eq!(file, path.display().to_string());
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn load_refuses_text_that_is_not_utf8() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(b"version: 1\nname: \xff\n").unwrap();
    match Workflow::load(file.path()) {
        Err(WorkflowError::Syntax { path, message, .. }) => {
            assert_eq!(
                (path.as_str(), message.as_str()),
                ("", "file is not valid utf-8")
            );
        }
        other => panic!("{other:?}"),
    }
}

// --- the graph ---

/// `top` first; `left` and `right` depend on it; `bottom` on both. Written
/// in an order unlike the graph's so the tie-break is visible.
fn diamond() -> Workflow {
    ok(&graph(&[
        ("bottom", &["right", "left"]),
        ("right", &["top"]),
        ("top", &[]),
        ("left", &["top"]),
        ("lone", &[]),
    ]))
}

#[test]
fn topo_order_breaks_ties_by_file_order() {
    let wf = diamond();
    assert_eq!(
        ids(wf.topo_order()),
        ["top", "right", "left", "bottom", "lone"]
    );
    assert_eq!(
        ids(wf.steps().iter()),
        ["bottom", "right", "top", "left", "lone"]
    );
    for _ in 0..5 {
        assert_eq!(ids(diamond().topo_order()), ids(wf.topo_order()));
    }
}

#[test]
fn reaches_follows_dependencies_transitively() {
    let wf = diamond();
    assert!(wf.reaches("top", "left"));
    assert!(wf.reaches("top", "bottom"));
    assert!(wf.reaches("right", "bottom"));
    assert!(!wf.reaches("bottom", "top"));
    assert!(!wf.reaches("left", "right"));
    assert!(!wf.reaches("top", "top"));
    assert!(!wf.reaches("top", "lone"));
    assert!(!wf.reaches("ghost", "bottom"));
}

#[test]
fn dependencies_are_direct_and_as_written() {
    let wf = diamond();
    assert_eq!(wf.dependencies("bottom"), ["right", "left"]);
    assert!(wf.dependencies("top").is_empty());
    assert!(wf.dependencies("ghost").is_empty());
}

// --- identity ---

#[test]
fn canonical_json_is_pinned() {
    let wf = ok(&ONE.replace(
        "name: one",
        "name: one\ndescription: \"Tests \\\"quoted\\\"\"",
    ));
    assert_eq!(
        wf.to_canonical_json(),
        concat!(
            r#"{"deadline":3600,"description":"Tests \"quoted\"","name":"one","stepup_budget":10,"#,
            r#""steps":[{"action":"tests.run","agent":"spiffe://dev.stepgate.local/agent/ci-runner","#,
            r#""depends_on":[],"id":"only","intent":"Run the tests.","resource":"https://ci.acme.internal","#,
            r#""risk":"low","scopes":["ci:tests:run"],"ttl":120}],"version":1}"#
        )
    );
}

#[test]
fn canonical_json_round_trips_to_an_equal_workflow() {
    for wf in [ok(RELEASE), ok(ONE), diamond()] {
        let canonical = wf.to_canonical_json();
        let again = Workflow::parse("canonical.json", &canonical).unwrap();
        assert_eq!(again, wf);
        assert_eq!(again.digest(), wf.digest());
        assert_eq!(ids(again.topo_order()), ids(wf.topo_order()));
        assert_eq!(again.to_canonical_json(), canonical);
    }
}

#[test]
fn digest_is_the_same_for_yaml_and_equivalent_json() {
    let yaml = ok(RELEASE);
    let json = ok(RELEASE_JSON);
    assert_eq!(yaml.digest(), json.digest());
    let hex = yaml.digest().strip_prefix("sha256:").unwrap();
    assert_eq!(hex.len(), 64);
    assert!(hex
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    assert_eq!(yaml.digest(), canonical::digest(&yaml.to_canonical_json()));
}

#[test]
fn digest_changes_with_meaning() {
    let base = ok(ONE);
    for (from, to) in [
        ("ttl: 2m", "ttl: 3m"),
        ("risk: low", "risk: medium"),
        ("name: one", "name: two"),
    ] {
        let other = ok(&ONE.replace(from, to));
        assert_ne!(other.digest(), base.digest(), "{to}");
        assert_ne!(other, base);
    }
}

// --- messages ---

#[test]
fn messages_are_one_lowercase_line_naming_file_step_and_field() {
    let ttl = err(&one_with("ttl: 2m", "ttl: 5s"));
    assert_eq!(
        ttl.to_string(),
        "wf.yaml: step `only`: field `ttl`: `5s` is out of range; must be between 10s and 1h"
    );
    let version = err(&ONE.replace("version: 1", "version: 2"));
    assert_eq!(
        version.to_string(),
        "wf.yaml: field `version`: `2` is not supported; must be 1"
    );
    let cycle = err(&graph(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"])]));
    assert_eq!(
        cycle.to_string(),
        "wf.yaml: field `depends_on`: steps depend on each other in a cycle: `a -> b -> c -> a`"
    );
    let duplicate = err(&graph(&[("a", &[]), ("a", &[])]));
    assert_eq!(
        duplicate.to_string(),
        "wf.yaml: step `a`: id is used by both step #1 and step #2"
    );
    let unknown = err(&graph(&[("a", &["ghost"])]));
    assert_eq!(
        unknown.to_string(),
        "wf.yaml: step `a`: field `depends_on`: no step has id `ghost`"
    );
    let self_loop = err(&graph(&[("a", &["a"])]));
    assert_eq!(
        self_loop.to_string(),
        "wf.yaml: step `a`: field `depends_on`: a step cannot depend on itself"
    );
    let syntax = err(&one_with("risk: low", "risk: extreme"));
    assert_eq!(
        syntax.to_string(),
        "wf.yaml: at `steps[0] (only).risk`: unknown variant `extreme`, expected one of `low`, `medium`, `high`, `critical`"
    );
    let large = WorkflowError::TooLarge {
        file: "big.yaml".into(),
        size: 1048577,
        limit: MAX_FILE_BYTES,
    };
    assert_eq!(
        large.to_string(),
        "big.yaml: file is 1048577 bytes; at most 1048576 are allowed"
    );
}
