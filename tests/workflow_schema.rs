//! `schemas/workflow.schema.json` and [`Workflow::parse`] agree.
//!
//! Editors and other tools check workflow files with the JSON Schema;
//! stepgate checks them with its own rules. These tests hold the two to the
//! same answer: a valid file passes both, and each kind of mistake the
//! schema can express is refused by both.

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "a test fails by panicking; the crate-wide lints guard library code"
)]

use std::collections::BTreeSet;

use jsonschema::Validator;
use serde_json::{json, Value};
use stepgate::workflow::{Workflow, WorkflowError};

fn schema() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/workflow.schema.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn validator() -> Validator {
    jsonschema::draft202012::new(&schema()).unwrap()
}

/// A valid workflow using every field.
fn sample() -> Value {
    json!({
        "version": 1,
        "name": "release-pipeline",
        "description": "Ship a release candidate to production.",
        "deadline": "45m",
        "stepup_budget": 4,
        "steps": [
            {
                "id": "unit-tests",
                "agent": "spiffe://dev.stepgate.local/agent/ci-runner",
                "action": "tests.run",
                "resource": "https://ci.acme.internal",
                "scopes": ["ci:tests:run"],
                "intent": "Run the unit test suite on the release candidate.",
                "risk": "low",
                "ttl": "2m",
                "depends_on": []
            },
            {
                "id": "deploy-prod",
                "agent": "spiffe://dev.stepgate.local/agent/deployer",
                "action": "deploy.rollout",
                "resource": "https://deploy.prod.acme.internal",
                "scopes": ["deploy:production", "deploy:canary"],
                "intent": "Roll the release out to production.",
                "risk": "high",
                "ttl": 1800,
                "depends_on": ["unit-tests"]
            }
        ]
    })
}

/// [`sample`] changed by `edit`.
fn sample_with(edit: impl FnOnce(&mut Value)) -> Value {
    let mut doc = sample();
    edit(&mut doc);
    doc
}

fn parse(doc: &Value) -> Result<Workflow, WorkflowError> {
    Workflow::parse("sample.json", &doc.to_string())
}

/// What stepgate is expected to say about an invalid sample.
#[derive(Debug)]
enum Refusal {
    /// A [`WorkflowError::Syntax`] at this path.
    Syntax(&'static str),
    /// A [`WorkflowError::Field`] for this step (if any) and field.
    Field(Option<&'static str>, &'static str),
}

fn matches(err: &WorkflowError, want: &Refusal) -> bool {
    match (err, want) {
        (WorkflowError::Syntax { file, path, .. }, Refusal::Syntax(want_path)) => {
            file == "sample.json" && path == want_path
        }
        (
            WorkflowError::Field {
                file, step, field, ..
            },
            Refusal::Field(want_step, want_field),
        ) => file == "sample.json" && step.as_deref() == *want_step && field == want_field,
        _ => false,
    }
}

#[test]
fn schema_compiles_as_draft_2020_12() {
    let schema = schema();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert!(jsonschema::draft202012::new(&schema).is_ok());
}

#[test]
fn valid_sample_passes_the_schema_and_the_parser() {
    let doc = sample();
    assert!(validator().is_valid(&doc));
    let wf = parse(&doc).unwrap();
    assert_eq!(wf.name, "release-pipeline");
    assert_eq!(wf.steps().len(), 2);
    assert_eq!(wf.step("deploy-prod").unwrap().ttl_secs, 1800);
}

#[test]
fn minimal_sample_passes_the_schema_and_the_parser() {
    let doc = sample_with(|d| {
        let top = d.as_object_mut().unwrap();
        for optional in ["description", "deadline", "stepup_budget"] {
            top.remove(optional);
        }
        d["steps"][0].as_object_mut().unwrap().remove("depends_on");
    });
    assert!(validator().is_valid(&doc));
    let wf = parse(&doc).unwrap();
    assert_eq!((wf.deadline_secs, wf.stepup_budget), (3600, 10));
}

#[test]
fn canonical_json_passes_the_schema() {
    let wf = parse(&sample()).unwrap();
    let canonical: Value = serde_json::from_str(&wf.to_canonical_json()).unwrap();
    assert!(validator().is_valid(&canonical));
}

#[test]
fn invalid_samples_are_refused_by_both() {
    use Refusal::{Field, Syntax};
    let step0 = Some("unit-tests");
    let step1 = Some("deploy-prod");
    let cases: Vec<(&str, Value, Refusal)> = vec![
        (
            "unknown top-level field",
            sample_with(|d| d["retries"] = json!(3)),
            Syntax("retries"),
        ),
        (
            "unknown step field",
            sample_with(|d| d["steps"][1]["retries"] = json!(3)),
            Syntax("steps[1] (deploy-prod).retries"),
        ),
        (
            "empty scopes",
            sample_with(|d| d["steps"][0]["scopes"] = json!([])),
            Field(step0, "scopes"),
        ),
        (
            "bad risk",
            sample_with(|d| d["steps"][1]["risk"] = json!("extreme")),
            Syntax("steps[1] (deploy-prod).risk"),
        ),
        (
            "bad agent scheme",
            sample_with(|d| d["steps"][0]["agent"] = json!("https://dev.stepgate.local/agent/x")),
            Field(step0, "agent"),
        ),
        (
            "agent without a path",
            sample_with(|d| d["steps"][0]["agent"] = json!("spiffe://dev.stepgate.local")),
            Field(step0, "agent"),
        ),
        (
            "agent with an upper-case trust domain",
            sample_with(|d| d["steps"][0]["agent"] = json!("spiffe://Dev.local/agent")),
            Field(step0, "agent"),
        ),
        (
            "missing intent",
            sample_with(|d| {
                d["steps"][0].as_object_mut().unwrap().remove("intent");
            }),
            Syntax("steps[0] (unit-tests)"),
        ),
        (
            "blank intent",
            sample_with(|d| d["steps"][0]["intent"] = json!("   ")),
            Field(step0, "intent"),
        ),
        (
            "version 2",
            sample_with(|d| d["version"] = json!(2)),
            Field(None, "version"),
        ),
        (
            "bad name",
            sample_with(|d| d["name"] = json!("Release")),
            Field(None, "name"),
        ),
        (
            "no steps",
            sample_with(|d| d["steps"] = json!([])),
            Field(None, "steps"),
        ),
        (
            "null description",
            sample_with(|d| d["description"] = Value::Null),
            Syntax("description"),
        ),
        (
            "budget over 1000",
            sample_with(|d| d["stepup_budget"] = json!(1001)),
            Field(None, "stepup_budget"),
        ),
        (
            "deadline in days",
            sample_with(|d| d["deadline"] = json!("1d")),
            Field(None, "deadline"),
        ),
        (
            "deadline in seconds over 24h",
            sample_with(|d| d["deadline"] = json!(86401)),
            Field(None, "deadline"),
        ),
        (
            "bad step id",
            sample_with(|d| d["steps"][0]["id"] = json!("Unit_Tests")),
            Field(Some("#1"), "id"),
        ),
        (
            "bad action",
            sample_with(|d| d["steps"][0]["action"] = json!("Tests.Run")),
            Field(step0, "action"),
        ),
        (
            "resource with a space",
            sample_with(|d| d["steps"][0]["resource"] = json!("https://a https://b")),
            Field(step0, "resource"),
        ),
        (
            "bad scope",
            sample_with(|d| d["steps"][0]["scopes"] = json!(["ci:*"])),
            Field(step0, "scopes"),
        ),
        (
            "scope listed twice",
            sample_with(|d| d["steps"][0]["scopes"] = json!(["a", "a"])),
            Field(step0, "scopes"),
        ),
        (
            "ttl in days",
            sample_with(|d| d["steps"][0]["ttl"] = json!("1d")),
            Field(step0, "ttl"),
        ),
        (
            "ttl in seconds under 10",
            sample_with(|d| d["steps"][0]["ttl"] = json!(9)),
            Field(step0, "ttl"),
        ),
        (
            "ttl as a fraction",
            sample_with(|d| d["steps"][0]["ttl"] = json!(1.5)),
            Syntax("steps[0] (unit-tests).ttl"),
        ),
        (
            "dependency listed twice",
            sample_with(|d| d["steps"][1]["depends_on"] = json!(["unit-tests", "unit-tests"])),
            Field(step1, "depends_on"),
        ),
    ];

    let validator = validator();
    for (what, doc, want) in cases {
        assert!(!validator.is_valid(&doc), "schema accepted: {what}");
        match parse(&doc) {
            Ok(_) => panic!("parser accepted: {what}"),
            Err(e) => assert!(matches(&e, &want), "{what}: want {want:?}, got {e:?}"),
        }
    }
}

/// The property names an object schema at `pointer` allows.
fn properties(schema: &Value, pointer: &str) -> BTreeSet<String> {
    let props = schema.pointer(pointer).and_then(Value::as_object).unwrap();
    props.keys().cloned().collect()
}

fn keys(value: &Value) -> BTreeSet<String> {
    value.as_object().unwrap().keys().cloned().collect()
}

#[test]
fn schema_names_exactly_the_fields_stepgate_writes() {
    let schema = schema();
    let wf = parse(&sample()).unwrap();
    let canonical: Value = serde_json::from_str(&wf.to_canonical_json()).unwrap();
    assert_eq!(properties(&schema, "/properties"), keys(&canonical));
    assert_eq!(
        properties(&schema, "/$defs/step/properties"),
        keys(&canonical["steps"][0])
    );
}

#[test]
fn every_property_has_a_title_and_a_description() {
    let schema = schema();
    for pointer in ["/properties", "/$defs/step/properties"] {
        for (name, prop) in schema.pointer(pointer).and_then(Value::as_object).unwrap() {
            for key in ["title", "description"] {
                let text = prop.get(key).and_then(Value::as_str).unwrap_or("");
                assert!(!text.is_empty(), "{pointer}/{name} has no {key}");
            }
        }
    }
}

#[test]
fn objects_allow_no_other_properties() {
    let schema = schema();
    for pointer in ["", "/$defs/step"] {
        let object = schema.pointer(pointer).unwrap();
        assert_eq!(object["additionalProperties"], json!(false), "{pointer}");
    }
}
