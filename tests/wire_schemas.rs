//! `schemas/wire/*.schema.json` describe exactly what stepgate puts on NATS.
//!
//! Values built from the Rust types and serialized the way the NATS
//! transport serializes them must pass their schema; samples with a wrong
//! type, a missing member or an unknown member must fail it, at the place
//! named here. Every schema file is listed in the README and documents each
//! of its properties.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking; the crate-wide lints guard library code"
)]

use std::collections::BTreeSet;
use std::path::PathBuf;

use jsonschema::Validator;
use serde_json::{json, Value};
use uuid::Uuid;

use stepgate::bus::{Request, Response};
use stepgate::chain::Entry;
use stepgate::engine::{
    BatchStatus, DecisionReply, RefuseKind, RejectKind, RunStartedReply, RunStatus, StepReply,
    StepStatus, TokenReply,
};
use stepgate::event::{BatchItem, Event, RevokeReason};
use stepgate::policy::Outcome;
use stepgate::request_id::RequestId;
use stepgate::service::{BatchView, Introspection, RunView, StepView};
use stepgate::token::{Jwks, KeyPair};
use stepgate::workflow::Risk;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemas/wire")
}

fn load(name: &str) -> Value {
    let path = dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} is not JSON: {e}"))
}

fn validator(name: &str) -> Validator {
    jsonschema::draft202012::new(&load(name))
        .unwrap_or_else(|e| panic!("{name} is not a valid draft 2020-12 schema: {e}"))
}

/// Where `value` fails `schema`: (instance path, schema path) pairs.
fn failures(schema: &str, value: &Value) -> Vec<(String, String)> {
    let v = validator(schema);
    let mut out: Vec<_> = v
        .iter_errors(value)
        .map(|e| (e.instance_path.to_string(), e.schema_path.to_string()))
        .collect();
    out.sort();
    out
}

#[track_caller]
fn assert_valid(schema: &str, value: &Value) {
    let v = validator(schema);
    let errors: Vec<String> = v
        .iter_errors(value)
        .map(|e| format!("{e} at `{}`", e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "{schema} refuses {}:\n{}",
        serde_json::to_string_pretty(value).unwrap(),
        errors.join("\n")
    );
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut out: Vec<_> = list
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    out.sort();
    out
}

/// A request's NATS payload, as the NATS transport encodes it in JSON.
fn payload(request: &Request) -> Value {
    let bytes = stepgate::nats::encode_request(request, true).unwrap();
    let value: Value = serde_json::from_slice(&bytes).unwrap();
    assert!(value.get("op").is_none(), "the subject names the op");
    value
}

/// What the engine makes of a JSON payload on the subject of `op`.
fn decode(op: &str, value: Value) -> Result<Request, String> {
    stepgate::nats::decode_request(op, &serde_json::to_vec(&value).unwrap(), true)
}

fn reply(response: &Response) -> Value {
    serde_json::to_value(response).unwrap()
}

fn id(n: u128) -> Uuid {
    Uuid::from_u128(0x0193_a5b2_7c1e_7d3a_9f00_0000_0000_0000 + n)
}

const DIGEST: &str = "sha256:0d5e7c1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5";
const SVID: &str = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJzcGlmZmUifQ.c2ln";
const RILEY: &str = "spiffe://dev.stepgate.local/human/riley";
const DEPLOYER: &str = "spiffe://dev.stepgate.local/agent/deployer";

fn item() -> BatchItem {
    BatchItem {
        step: "deploy-production".into(),
        agent: DEPLOYER.into(),
        action: "deploy.rollout".into(),
        resource: "https://deploy.prod.acme.internal".into(),
        scopes: vec!["deploy:production".into()],
        intent: "Roll out payments-api v2.14.0 to production.".into(),
        intent_digest: DIGEST.into(),
        scope_digest: DIGEST.into(),
        risk: Risk::High,
        policy_ids: vec!["production-rollout-needs-release-manager".into()],
    }
}

fn batch_opened() -> Event {
    Event::BatchOpened {
        batch: id(2),
        run: id(1),
        group: "release-managers".into(),
        items: vec![item()],
        binding: DIGEST.into(),
        expires_at: 1_796_400_900_000,
    }
}

fn entry(seq: u64, event: Event) -> Entry {
    Entry {
        seq,
        at: 1_796_400_000_000,
        hash: "ab".repeat(32),
        event,
    }
}

/// Every request, with the schema of its payload.
fn requests() -> Vec<(&'static str, Request)> {
    vec![
        (
            "start_run",
            Request::StartRun {
                svid: SVID.into(),
                workflow: "version: 1\nname: x\n".into(),
                request_id: None,
            },
        ),
        (
            "start_run",
            Request::StartRun {
                svid: SVID.into(),
                workflow: "version: 1\nname: x\n".into(),
                request_id: Some(RequestId::parse("release-2026-12-04.try-1").unwrap()),
            },
        ),
        ("run_status", Request::RunStatus { run: id(1) }),
        (
            "cancel_run",
            Request::CancelRun {
                run: id(1),
                svid: SVID.into(),
                reason: "wrong tag".into(),
            },
        ),
        (
            "resume_run",
            Request::ResumeRun {
                run: id(1),
                svid: SVID.into(),
                extra_budget: 1,
            },
        ),
        (
            "step_token",
            Request::StepToken {
                run: id(1),
                step: "deploy-production".into(),
                svid: SVID.into(),
                scopes: vec!["deploy:production".into()],
                intent: None,
            },
        ),
        (
            "step_token",
            Request::StepToken {
                run: id(1),
                step: "deploy-production".into(),
                svid: SVID.into(),
                scopes: vec!["deploy:production".into()],
                intent: Some("Roll out payments-api v2.14.0 to production.".into()),
            },
        ),
        (
            "complete_step",
            Request::CompleteStep {
                run: id(1),
                step: "unit-tests".into(),
                svid: SVID.into(),
                summary: "412 passed".into(),
            },
        ),
        (
            "fail_step",
            Request::FailStep {
                run: id(1),
                step: "unit-tests".into(),
                svid: SVID.into(),
                reason: "3 failed".into(),
            },
        ),
        ("pending_batches", Request::PendingBatches {}),
        ("batch", Request::Batch { batch: id(2) }),
        (
            "decide_batch",
            Request::DecideBatch {
                batch: id(2),
                svid: SVID.into(),
                approve: true,
                binding: DIGEST.into(),
                comment: Some("canary numbers look fine".into()),
            },
        ),
        (
            "decide_batch",
            Request::DecideBatch {
                batch: id(2),
                svid: SVID.into(),
                approve: false,
                binding: DIGEST.into(),
                comment: None,
            },
        ),
        (
            "introspect",
            Request::Introspect {
                token: "a.b.c".into(),
            },
        ),
        ("jwks", Request::Jwks {}),
        ("health", Request::Health {}),
    ]
}

fn token_replies() -> Vec<TokenReply> {
    vec![
        TokenReply::Issued {
            token: "eyJhbGciOiJFZERTQSJ9.e30.c2ln".into(),
            jti: id(3),
            exp: 1_796_401_800_000,
            scopes: vec!["deploy:production".into()],
            approval: Some(id(2)),
        },
        TokenReply::Issued {
            token: "eyJhbGciOiJFZERTQSJ9.e30.c2ln".into(),
            jti: id(4),
            exp: 1_796_400_600_000,
            scopes: vec!["ci:tests:run".into()],
            approval: None,
        },
        TokenReply::Pending {
            batch: id(2),
            group: "release-managers".into(),
        },
        TokenReply::Denied {
            reason: "forbidden by only-deployer-holds-deploy-production".into(),
            policy_ids: vec!["only-deployer-holds-deploy-production".into()],
        },
        TokenReply::Rejected {
            kind: RejectKind::ScopeExcess,
            reason: "scope `deploy:everything` is not the step's".into(),
        },
        TokenReply::Paused {
            reason: "3 step-ups, budget 2".into(),
        },
    ]
}

const REJECT_KINDS: [RejectKind; 10] = [
    RejectKind::BadIdentity,
    RejectKind::WrongAgent,
    RejectKind::NoScopes,
    RejectKind::ScopeExcess,
    RejectKind::IntentMismatch,
    RejectKind::StepNotReady,
    RejectKind::StepFinished,
    RejectKind::TokenLive,
    RejectKind::RunNotActive,
    RejectKind::RunPaused,
];

const REFUSE_KINDS: [RefuseKind; 8] = [
    RefuseKind::BadIdentity,
    RefuseKind::NotInGroup,
    RefuseKind::SelfApproval,
    RefuseKind::AgentOfBatch,
    RefuseKind::AlreadyDecided,
    RefuseKind::Expired,
    RefuseKind::BindingMismatch,
    RefuseKind::RunEnded,
];

fn decision_replies() -> Vec<DecisionReply> {
    let mut out = vec![
        DecisionReply::Applied {
            batch: id(2),
            approved: true,
            valid_until: 1_796_401_800_000,
        },
        DecisionReply::Applied {
            batch: id(2),
            approved: false,
            valid_until: 1_796_400_000_000,
        },
    ];
    out.extend(REFUSE_KINDS.iter().map(|kind| DecisionReply::Refused {
        kind: *kind,
        reason: format!("refused: {}", kind.as_str()),
    }));
    out
}

fn batch_view(status: BatchStatus) -> BatchView {
    BatchView {
        batch: id(2),
        run: id(1),
        workflow: "release-pipeline".into(),
        requester: "spiffe://dev.stepgate.local/human/dana".into(),
        group: "release-managers".into(),
        items: vec![item()],
        binding: DIGEST.into(),
        expires_at: 1_796_400_900_000,
        status,
    }
}

/// Every reply kind, with the schema it fits.
fn replies() -> Vec<(&'static str, Response)> {
    let mut out = vec![(
        "run_started",
        Response::RunStarted(RunStartedReply {
            run: id(1),
            batches: vec![id(2)],
            ready: vec!["unit-tests".into()],
        }),
    )];
    out.extend(
        token_replies()
            .into_iter()
            .map(|r| ("token", Response::Token(r))),
    );
    out.extend(
        decision_replies()
            .into_iter()
            .map(|r| ("decision", Response::Decision(r))),
    );
    out.extend([
        (
            "step",
            Response::Step(StepReply {
                ready: vec!["build-image".into()],
                run_status: RunStatus::Active,
                revoked: vec![id(4)],
            }),
        ),
        (
            "cancelled",
            Response::Cancelled {
                revoked: vec![id(3), id(4)],
            },
        ),
        ("resumed", Response::Resumed),
        (
            "health",
            Response::Health {
                ready: true,
                events: 42,
                kid: "k1".into(),
            },
        ),
        (
            "introspection",
            Response::Introspection(Introspection {
                active: true,
                scope: Some("deploy:production".into()),
                sub: Some(DEPLOYER.into()),
                aud: Some("https://deploy.prod.acme.internal".into()),
                iss: Some("stepgate".into()),
                exp: Some(1_796_401_800),
                iat: Some(1_796_400_000),
                jti: Some(id(3).to_string()),
                token_type: Some("stepgate-step+jwt".into()),
                run: Some(id(1).to_string()),
                step: Some("deploy-production".into()),
            }),
        ),
        (
            "introspection",
            Response::Introspection(Introspection::default()),
        ),
        (
            "jwks",
            Response::Jwks(Jwks {
                keys: vec![KeyPair::from_secret_bytes([7; 32]).public_jwk()],
            }),
        ),
        (
            "run",
            Response::Run(Box::new(RunView {
                run: id(1),
                workflow: "release-pipeline".into(),
                requester: "spiffe://dev.stepgate.local/human/dana".into(),
                status: RunStatus::Paused,
                deadline: 1_796_402_700_000,
                stepups: 1,
                budget: 2,
                steps: vec![
                    StepView {
                        step: "unit-tests".into(),
                        status: StepStatus::Completed,
                        live_token: None,
                        batch: None,
                    },
                    StepView {
                        step: "deploy-production".into(),
                        status: StepStatus::Ready,
                        live_token: Some(id(3)),
                        batch: Some(id(2)),
                    },
                ],
                batches: vec![id(2)],
            })),
        ),
        (
            "batches",
            Response::Batches {
                batches: vec![
                    batch_view(BatchStatus::Pending),
                    batch_view(BatchStatus::Approved {
                        by: RILEY.into(),
                        valid_until: 1_796_401_800_000,
                    }),
                    batch_view(BatchStatus::Denied { by: RILEY.into() }),
                    batch_view(BatchStatus::Expired),
                    batch_view(BatchStatus::Withdrawn),
                ],
                unreachable: vec![],
            },
        ),
        (
            "batches",
            Response::Batches {
                batches: vec![],
                unreachable: vec!["kVa1l6u8H2kq7cDsyqk0l5jR1p4vSfJ9Y3zgG1o0dQk".into()],
            },
        ),
        (
            "error",
            Response::Error {
                code: "unknown_batch".into(),
                message: format!("unknown batch {}", id(9)),
            },
        ),
    ]);
    out
}

/// One of every event.
fn events() -> Vec<Event> {
    let (run, batch, jti) = (id(1), id(2), id(3));
    vec![
        Event::KeyCreated { kid: "k1".into() },
        Event::RunStarted {
            run,
            requester: "spiffe://dev.stepgate.local/human/dana".into(),
            workflow: "release-pipeline".into(),
            workflow_digest: DIGEST.into(),
            workflow_json: "{}".into(),
            policy_digest: DIGEST.into(),
            deadline: 1_796_402_700_000,
            stepup_budget: 2,
            request_id: None,
        },
        Event::RunStarted {
            run: id(5),
            requester: "spiffe://dev.stepgate.local/human/dana".into(),
            workflow: "release-pipeline".into(),
            workflow_digest: DIGEST.into(),
            workflow_json: "{}".into(),
            policy_digest: DIGEST.into(),
            deadline: 1_796_402_700_000,
            stepup_budget: 2,
            request_id: Some("release-2026-12-04:1".into()),
        },
        Event::StepReady {
            run,
            step: "unit-tests".into(),
        },
        Event::TokenRequested {
            run,
            step: "deploy-production".into(),
            agent: DEPLOYER.into(),
            scopes: vec!["deploy:production".into()],
            svid_digest: DIGEST.into(),
        },
        Event::RequestRejected {
            run,
            step: "deploy-production".into(),
            agent: None,
            svid_digest: DIGEST.into(),
            kind: "bad_identity".into(),
            reason: "expired".into(),
        },
        Event::Decided {
            run,
            step: "deploy-production".into(),
            outcome: Outcome::StepUp {
                group: "release-managers".into(),
            },
            policy_ids: vec!["production-rollout-needs-release-manager".into()],
            policy_digest: DIGEST.into(),
            errors: vec![],
            reason: "review by release-managers".into(),
            scopes: vec!["deploy:production".into()],
        },
        Event::Decided {
            run,
            step: "unit-tests".into(),
            outcome: Outcome::Allow,
            policy_ids: vec!["ci-runner-runs-tests".into()],
            policy_digest: DIGEST.into(),
            errors: vec![],
            reason: "permitted".into(),
            scopes: vec!["ci:tests:run".into()],
        },
        Event::Decided {
            run,
            step: "x".into(),
            outcome: Outcome::Deny,
            policy_ids: vec![],
            policy_digest: DIGEST.into(),
            errors: vec!["an error".into()],
            reason: "no permit".into(),
            scopes: vec![],
        },
        batch_opened(),
        Event::BatchDecided {
            batch,
            run,
            approved: true,
            reviewer: RILEY.into(),
            binding: DIGEST.into(),
            comment: None,
            valid_until: 1_796_401_800_000,
        },
        Event::BatchExpired { batch, run },
        Event::BatchWithdrawn {
            batch,
            run,
            reason: "run cancelled".into(),
        },
        Event::DecisionRefused {
            batch,
            run,
            reviewer: Some(RILEY.into()),
            kind: "already_decided".into(),
            reason: "decided".into(),
        },
        Event::TokenIssued {
            run,
            step: "deploy-production".into(),
            jti,
            digest: DIGEST.into(),
            kid: "k1".into(),
            sub: DEPLOYER.into(),
            aud: "https://deploy.prod.acme.internal".into(),
            scopes: vec!["deploy:production".into()],
            iat: 1_796_400_000_000,
            exp: 1_796_401_800_000,
            approval: Some(batch),
        },
        Event::TokenRedelivered {
            run,
            step: "deploy-production".into(),
            jti,
            agent: DEPLOYER.into(),
            svid_digest: DIGEST.into(),
        },
        Event::TokenRevoked {
            run,
            step: "deploy-production".into(),
            jti,
            reason: RevokeReason::StepCompleted,
        },
        Event::TokenExpired {
            run,
            step: "deploy-production".into(),
            jti,
        },
        Event::StepCompleted {
            run,
            step: "deploy-production".into(),
            summary: String::new(),
        },
        Event::StepFailed {
            run,
            step: "deploy-production".into(),
            reason: "denied".into(),
        },
        Event::RunPaused {
            run,
            reason: "over budget".into(),
        },
        Event::RunResumed {
            run,
            by: RILEY.into(),
            extra_budget: 1,
        },
        Event::RunCompleted { run },
        Event::RunFailed {
            run,
            step: "unit-tests".into(),
        },
        Event::RunCancelled {
            run,
            by: "deadline".into(),
            reason: "deadline passed".into(),
        },
    ]
}

#[test]
fn every_request_payload_fits_its_schema() {
    let mut ops = BTreeSet::new();
    for (op, request) in requests() {
        let value = payload(&request);
        assert_valid(&format!("request.{op}.schema.json"), &value);
        // And the engine reads the payload back as the same request.
        assert_eq!(decode(op, value).unwrap(), request);
        ops.insert(op);
    }
    // Subjects without fields also take an empty payload.
    assert_eq!(
        stepgate::nats::decode_request("health", b"", true).unwrap(),
        Request::Health {}
    );
    let files: BTreeSet<String> = schema_files()
        .into_iter()
        .filter_map(|f| {
            f.strip_prefix("request.")
                .and_then(|f| f.strip_suffix(".schema.json"))
                .map(str::to_string)
        })
        .collect();
    let ops: BTreeSet<String> = ops.into_iter().map(str::to_string).collect();
    assert_eq!(files, ops, "one request schema per op, and every op tested");
}

#[test]
fn every_reply_fits_its_schema_and_no_other() {
    let kinds: Vec<&str> = vec![
        "run_started",
        "token",
        "step",
        "cancelled",
        "resumed",
        "decision",
        "introspection",
        "jwks",
        "run",
        "batches",
        "health",
        "error",
    ];
    let mut seen = BTreeSet::new();
    for (kind, response) in replies() {
        let value = reply(&response);
        assert_eq!(value["reply"], json!(kind), "tagged by `reply`");
        assert_valid(&format!("reply.{kind}.schema.json"), &value);
        assert_valid("reply.schema.json", &value);
        for other in kinds.iter().filter(|k| **k != kind) {
            assert!(
                !validator(&format!("reply.{other}.schema.json")).is_valid(&value),
                "a `{kind}` reply must not fit reply.{other}.schema.json: {value}"
            );
        }
        seen.insert(kind);
    }
    assert_eq!(seen, kinds.iter().copied().collect::<BTreeSet<_>>());
}

#[test]
fn token_and_decision_replies_are_flat() {
    let value = reply(&Response::Token(TokenReply::Pending {
        batch: id(2),
        group: "release-managers".into(),
    }));
    assert_eq!(
        value,
        json!({
            "reply": "token",
            "status": "pending",
            "batch": "0193a5b2-7c1e-7d3a-9f00-000000000002",
            "group": "release-managers"
        })
    );
    let value = reply(&Response::Decision(DecisionReply::Refused {
        kind: RefuseKind::SelfApproval,
        reason: "no".into(),
    }));
    assert_eq!(
        value,
        json!({"reply": "decision", "status": "refused", "kind": "self_approval", "reason": "no"})
    );
    // Every reject kind is in the schema's list.
    for kind in REJECT_KINDS {
        let value = reply(&Response::Token(TokenReply::Rejected {
            kind,
            reason: "why".into(),
        }));
        assert_valid("reply.token.schema.json", &value);
    }
}

#[test]
fn every_event_entry_fits_the_entry_schema() {
    let all = events();
    let kinds: BTreeSet<&str> = all.iter().map(Event::kind).collect();
    assert_eq!(kinds.len(), 22, "one of every event type");
    for (seq, event) in all.into_iter().enumerate() {
        let value = serde_json::to_value(entry(seq as u64, event)).unwrap();
        assert_valid("entry.schema.json", &value);
    }
    // The batch_opened entry as a reviewer reads it off JetStream.
    let value = serde_json::to_value(entry(7, batch_opened())).unwrap();
    assert_eq!(value["event"]["type"], "batch_opened");
    assert_eq!(
        value["event"]["batch"],
        "0193a5b2-7c1e-7d3a-9f00-000000000002"
    );
    assert_eq!(value["event"]["items"][0]["risk"], "high");
    assert_valid("entry.schema.json", &value);
}

#[test]
fn invalid_samples_are_refused_where_they_go_wrong() {
    // A misspelt optional member: the schema and the engine both refuse it.
    let mut decide = payload(&Request::DecideBatch {
        batch: id(2),
        svid: SVID.into(),
        approve: true,
        binding: DIGEST.into(),
        comment: None,
    });
    decide.as_object_mut().unwrap().remove("comment");
    decide["coment"] = json!("looks fine");
    assert_eq!(
        failures("request.decide_batch.schema.json", &decide),
        pairs(&[("", "/additionalProperties")])
    );
    let refused = decode("decide_batch", decide).unwrap_err();
    assert!(refused.contains("unknown field `coment`"), "{refused}");

    // Wrong type: both refuse.
    let mut wrong = payload(&Request::DecideBatch {
        batch: id(2),
        svid: SVID.into(),
        approve: true,
        binding: DIGEST.into(),
        comment: None,
    });
    wrong["approve"] = json!("yes");
    assert_eq!(
        failures("request.decide_batch.schema.json", &wrong),
        pairs(&[("/approve", "/properties/approve/type")])
    );
    assert!(decode("decide_batch", wrong).is_err());

    // A run id that is not a UUID, and a missing member.
    let bad_run = json!({"run": "run-1", "svid": SVID, "scopes": ["ci:tests:run"]});
    assert_eq!(
        failures("request.step_token.schema.json", &bad_run),
        pairs(&[("", "/required"), ("/run", "/properties/run/$ref/pattern"),])
    );
    assert!(decode("step_token", bad_run).is_err());

    // A request id with a space: the schema refuses it, and the engine
    // answers an error naming the field.
    let bad_key = json!({"svid": SVID, "workflow": "version: 1", "request_id": "try 2"});
    assert_eq!(
        failures("request.start_run.schema.json", &bad_key),
        pairs(&[("/request_id", "/properties/request_id/anyOf")])
    );
    let refused = decode("start_run", bad_key).unwrap_err();
    assert!(
        refused.contains("`request_id` contains ' ' at position 3"),
        "{refused}"
    );

    // `summary` may be left out but not sent as null.
    let null_summary = json!({"run": id(1), "step": "s", "svid": SVID, "summary": null});
    assert_eq!(
        failures("request.complete_step.schema.json", &null_summary),
        pairs(&[("/summary", "/properties/summary/type")])
    );
    assert!(decode("complete_step", null_summary).is_err());

    // A token reply with an unknown status, and an issued reply whose
    // expiry is text: the tagged union refuses both as a whole.
    let mut issued = reply(&Response::Token(token_replies().remove(0)));
    issued["exp"] = json!("1796401800000");
    assert_eq!(
        failures("reply.token.schema.json", &issued),
        pairs(&[("", "/oneOf")])
    );
    let mut unknown = reply(&Response::Token(token_replies().remove(2)));
    unknown["status"] = json!("queued");
    assert_eq!(
        failures("reply.token.schema.json", &unknown),
        pairs(&[("", "/oneOf")])
    );
    assert!(serde_json::from_value::<Response>(unknown).is_err());

    // An error reply with an extra member, and one without a message.
    let mut error = reply(&Response::Error {
        code: "forbidden".into(),
        message: "no".into(),
    });
    error["detail"] = json!("x");
    assert_eq!(
        failures("reply.error.schema.json", &error),
        pairs(&[("", "/additionalProperties")])
    );
    assert_eq!(
        failures(
            "reply.error.schema.json",
            &json!({"reply": "error", "code": "x"})
        ),
        pairs(&[("", "/required")])
    );

    // An entry whose hash is not hex, and one of an unknown event type.
    let mut bad_hash = serde_json::to_value(entry(0, batch_opened())).unwrap();
    bad_hash["hash"] = json!("not-hex");
    assert_eq!(
        failures("entry.schema.json", &bad_hash),
        pairs(&[("/hash", "/properties/hash/pattern")])
    );
    let mut bad_event = serde_json::to_value(entry(0, batch_opened())).unwrap();
    bad_event["event"]["type"] = json!("batch_reopened");
    assert_eq!(
        failures("entry.schema.json", &bad_event),
        pairs(&[("/event", "/properties/event/$ref/oneOf")])
    );
}

fn schema_files() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".schema.json"))
        .collect();
    out.sort();
    out
}

/// Walks a schema; every member of every `properties` needs a title and a
/// description.
fn undocumented(node: &Value, path: &str, out: &mut Vec<String>) {
    match node {
        Value::Object(map) => {
            if let Some(Value::Object(props)) = map.get("properties") {
                for (name, prop) in props {
                    let documented = ["title", "description"].iter().all(|k| {
                        prop.get(*k)
                            .and_then(Value::as_str)
                            .is_some_and(|s| !s.is_empty())
                    });
                    if !documented {
                        out.push(format!("{path}/properties/{name}"));
                    }
                }
            }
            for (key, value) in map {
                undocumented(value, &format!("{path}/{key}"), out);
            }
        }
        Value::Array(items) => {
            for (i, value) in items.iter().enumerate() {
                undocumented(value, &format!("{path}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn every_schema_is_documented_and_listed() {
    let readme = std::fs::read_to_string(dir().join("README.md")).unwrap();
    let files = schema_files();
    assert_eq!(
        files.len(),
        27,
        "13 requests, 12 reply kinds, any reply, entry"
    );
    for file in &files {
        let schema = load(file);
        assert_eq!(
            schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{file}"
        );
        assert!(schema["title"].is_string() && schema["description"].is_string());
        validator(file);
        let mut missing = vec![];
        undocumented(&schema, "", &mut missing);
        assert!(missing.is_empty(), "{file}: undocumented {missing:?}");
        assert!(
            readme.contains(file.as_str()),
            "README.md does not list {file}"
        );
    }
}

#[test]
fn every_subject_has_its_request_schema_in_the_readme() {
    let readme = std::fs::read_to_string(dir().join("README.md")).unwrap();
    for (suffix, op) in stepgate::nats::ROUTES {
        let subject = format!("{}.{suffix}", stepgate::nats::PREFIX);
        let row = readme
            .lines()
            .find(|l| l.starts_with(&format!("| `{subject}` |")))
            .unwrap_or_else(|| panic!("README.md has no row for {subject}"));
        let schema = format!("request.{op}.schema.json");
        assert!(row.contains(&schema), "{subject} → {schema}: {row}");
        assert!(dir().join(&schema).exists(), "{schema}");
    }
    assert_eq!(stepgate::nats::ROUTES.len(), 13);
}
