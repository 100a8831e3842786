//! Requests retried after their answer was lost: a token request gets the
//! same live token again, a keyed run start answers the run it started, and
//! repeated decisions, completions and failures answer their first outcome.
//! Each retry appends exactly what is asserted here, and nothing else.

use super::*;
use stepgate::engine::{EngineError, RunStartedReply, StepReply};
use stepgate::policy::sha256_text;
use stepgate::request_id::RequestId;
use stepgate::token::KeyPair;

fn kinds(engine: &mut Engine) -> Vec<&'static str> {
    engine.take_events().iter().map(Event::kind).collect()
}

fn key(s: &str) -> RequestId {
    RequestId::parse(s).unwrap()
}

fn start_keyed(
    engine: &mut Engine,
    w: &mut World,
    who: &str,
    request_id: &str,
) -> Result<RunStartedReply, EngineError> {
    let svid = w.svid(who);
    let wf = w.workflow.clone();
    engine.start_run(&mut w.env(), &svid, &wf, Some(&key(request_id)))
}

fn ask_with_intent(
    engine: &mut Engine,
    w: &mut World,
    run: Uuid,
    step: &str,
    scopes: &[&str],
    intent: Option<&str>,
) -> TokenReply {
    let svid = w.svid(&w.agent_of(step));
    let scopes = ScopeSet::parse(scopes).unwrap();
    let req = TokenRequest {
        run,
        step,
        svid: &svid,
        scopes: &scopes,
        intent,
    };
    engine.request_token(&mut w.env(), &req).unwrap()
}

fn is_token_live(reply: &TokenReply) -> bool {
    matches!(
        reply,
        TokenReply::Rejected {
            kind: RejectKind::TokenLive,
            ..
        }
    )
}

#[test]
fn a_retried_token_request_gets_the_byte_identical_token_and_logs_one_redelivery() {
    let mut w = World::new("release");
    let mut engine = Engine::new();
    let run = start(&mut engine, &mut w).run;
    let first = ask(&mut engine, &mut w, run, "unit-tests", &["ci:tests:run"]);
    let (token, jti) = issued(first.clone());
    engine.take_events();

    // Ten seconds later the agent, which never heard the answer, asks again.
    w.now += 10_000;
    let svid = w.svid(&w.agent_of("unit-tests"));
    let again = ask_as(
        &mut engine,
        &mut w,
        run,
        "unit-tests",
        &["ci:tests:run"],
        &svid,
    );
    assert_eq!(again, first, "same token, jti, exp, scopes and approval");
    let (token2, jti2) = issued(again);
    assert_eq!(token2.as_bytes(), token.as_bytes());
    assert_eq!(jti2, jti);

    let events = engine.take_events();
    assert_eq!(
        events,
        vec![Event::TokenRedelivered {
            run,
            step: "unit-tests".into(),
            jti,
            agent: "spiffe://dev.stepgate.local/agent/ci-runner".into(),
            svid_digest: sha256_text(&svid),
        }]
    );
    assert!(
        !format!("{events:?}").contains(&token),
        "no token in events"
    );
    assert_eq!(engine.state().tokens.len(), 1, "nothing new was issued");
    assert_eq!(
        engine.state().runs[&run].steps["unit-tests"].live_token,
        Some(jti)
    );
}

#[test]
fn a_retry_stating_the_step_intent_is_redelivered_and_a_wrong_intent_is_not() {
    let mut w = World::new("release");
    let mut engine = Engine::new();
    let run = start(&mut engine, &mut w).run;
    let intent = w.workflow.step("unit-tests").unwrap().intent.clone();
    let (token, _) = issued(ask_with_intent(
        &mut engine,
        &mut w,
        run,
        "unit-tests",
        &["ci:tests:run"],
        Some(&intent),
    ));
    engine.take_events();

    let again = ask_with_intent(
        &mut engine,
        &mut w,
        run,
        "unit-tests",
        &["ci:tests:run"],
        Some(&intent),
    );
    assert_eq!(issued(again).0, token);
    assert_eq!(kinds(&mut engine), vec!["token_redelivered"]);

    let wrong = ask_with_intent(
        &mut engine,
        &mut w,
        run,
        "unit-tests",
        &["ci:tests:run"],
        Some("Deploy to production."),
    );
    assert_rejected(&wrong, RejectKind::IntentMismatch);
    assert_eq!(kinds(&mut engine), vec!["request_rejected"]);
}

#[test]
fn a_retry_with_other_scopes_while_a_token_is_live_is_still_token_live() {
    // Triage declares logs and metrics; it got a token for logs only.
    let mut w = World::new("incident-response");
    let mut engine = Engine::new();
    let run = start(&mut engine, &mut w).run;
    let (_, jti) = issued(ask(
        &mut engine,
        &mut w,
        run,
        "triage",
        &["logs:read:checkout"],
    ));
    engine.take_events();

    for scopes in [
        &["logs:read:checkout", "metrics:read:checkout"][..],
        &["metrics:read:checkout"][..],
    ] {
        let reply = ask(&mut engine, &mut w, run, "triage", scopes);
        assert_eq!(
            reply,
            TokenReply::Rejected {
                kind: RejectKind::TokenLive,
                reason: format!(
                    "step `triage` already holds live token {jti}; only a request with its scopes gets it again"
                ),
            }
        );
        assert_eq!(kinds(&mut engine), vec!["request_rejected"]);
    }
    assert_eq!(engine.state().tokens.len(), 1);
}

#[test]
fn a_retry_from_another_agent_or_a_bad_identity_is_refused_as_before() {
    let mut w = World::new("release");
    let mut engine = Engine::new();
    let run = start(&mut engine, &mut w).run;
    issued(ask(
        &mut engine,
        &mut w,
        run,
        "unit-tests",
        &["ci:tests:run"],
    ));
    engine.take_events();

    let builder = w.svid("spiffe://dev.stepgate.local/agent/builder");
    let reply = ask_as(
        &mut engine,
        &mut w,
        run,
        "unit-tests",
        &["ci:tests:run"],
        &builder,
    );
    assert_rejected(&reply, RejectKind::WrongAgent);
    let reply = ask_as(
        &mut engine,
        &mut w,
        run,
        "unit-tests",
        &["ci:tests:run"],
        "not-a-jwt",
    );
    assert_rejected(&reply, RejectKind::BadIdentity);
    assert_eq!(
        kinds(&mut engine),
        vec!["request_rejected", "request_rejected"]
    );
}

#[test]
fn a_retry_after_the_issuer_or_the_signing_key_changed_falls_back_to_token_live() {
    let mut w = World::new("release");
    let mut engine = Engine::new();
    let run = start(&mut engine, &mut w).run;
    issued(ask(
        &mut engine,
        &mut w,
        run,
        "unit-tests",
        &["ci:tests:run"],
    ));
    engine.take_events();

    // Another issuer: the rebuilt token's digest is not the recorded one.
    w.config.issuer = "https://stepgate.elsewhere".into();
    let reply = ask(&mut engine, &mut w, run, "unit-tests", &["ci:tests:run"]);
    assert!(is_token_live(&reply), "{reply:?}");
    assert_eq!(kinds(&mut engine), vec!["request_rejected"]);

    // Another key: the recorded kid is not the current one.
    w.config = stepgate::engine::Config::default();
    w.key = KeyPair::from_secret_bytes([9u8; 32]);
    let reply = ask(&mut engine, &mut w, run, "unit-tests", &["ci:tests:run"]);
    assert!(is_token_live(&reply), "{reply:?}");
    assert_eq!(kinds(&mut engine), vec!["request_rejected"]);
}

#[test]
fn a_token_past_exp_is_not_redelivered() {
    let mut w = World::new("release");
    let mut engine = Engine::new();
    let run = start(&mut engine, &mut w).run;
    issued(ask(
        &mut engine,
        &mut w,
        run,
        "unit-tests",
        &["ci:tests:run"],
    ));
    engine.take_events();
    // Past exp but before the expiry sweep ran: nothing is handed out.
    w.now = T0 + 300_000;
    let reply = ask(&mut engine, &mut w, run, "unit-tests", &["ci:tests:run"]);
    assert!(is_token_live(&reply), "{reply:?}");
    assert_eq!(kinds(&mut engine), vec!["request_rejected"]);
}

#[test]
fn a_stepped_up_token_is_redelivered_with_its_approval_and_no_new_decision() {
    let mut w = World::new("release");
    let mut engine = Engine::new();
    let run = through_staging(&mut engine, &mut w);
    let batch = engine.state().runs[&run].batches[0];
    decide(&mut engine, &mut w, batch, RILEY, true);
    let first = ask(
        &mut engine,
        &mut w,
        run,
        "deploy-production",
        &["deploy:production"],
    );
    assert!(matches!(
        first,
        TokenReply::Issued {
            approval: Some(b),
            ..
        } if b == batch
    ));
    engine.take_events();
    let again = ask(
        &mut engine,
        &mut w,
        run,
        "deploy-production",
        &["deploy:production"],
    );
    assert_eq!(again, first);
    // No `decided` event: audit pairs each issue with its decision, and a
    // redelivery is not a new issue.
    assert_eq!(kinds(&mut engine), vec!["token_redelivered"]);
    assert_eq!(engine.state().runs[&run].stepups, 1);
}

#[test]
fn a_start_repeated_with_its_request_id_answers_the_same_run_and_logs_nothing() {
    let mut w = World::new("release");
    let mut engine = Engine::new();
    let first = start_keyed(&mut engine, &mut w, DANA, "release-2026-12-04").unwrap();
    let started = kinds(&mut engine);
    assert_eq!(started[0], "run_started");

    let again = start_keyed(&mut engine, &mut w, DANA, "release-2026-12-04").unwrap();
    assert_eq!(again, first);
    assert!(kinds(&mut engine).is_empty(), "a repeat appends nothing");
    assert_eq!(engine.state().runs.len(), 1);

    // The answer shows the run as it is now.
    let run = first.run;
    issued(ask(
        &mut engine,
        &mut w,
        run,
        "unit-tests",
        &["ci:tests:run"],
    ));
    complete(&mut engine, &mut w, run, "unit-tests");
    engine.take_events();
    let later = start_keyed(&mut engine, &mut w, DANA, "release-2026-12-04").unwrap();
    assert_eq!(
        later,
        RunStartedReply {
            run,
            batches: first.batches.clone(),
            ready: vec!["build-image".into()],
        }
    );
    assert!(kinds(&mut engine).is_empty());
}

#[test]
fn request_ids_are_per_requester_and_a_start_without_one_always_starts() {
    let mut w = World::new("release");
    let mut engine = Engine::new();
    let dana = start_keyed(&mut engine, &mut w, DANA, "nightly").unwrap();
    let sam = start_keyed(&mut engine, &mut w, SAM, "nightly").unwrap();
    assert_ne!(dana.run, sam.run);
    let plain_a = start(&mut engine, &mut w).run;
    let plain_b = start(&mut engine, &mut w).run;
    assert_ne!(plain_a, plain_b);
    assert_eq!(engine.state().runs.len(), 4);
    assert_eq!(engine.state().runs_by_request.len(), 2);
}

#[test]
fn the_same_request_id_with_another_workflow_is_a_conflict_and_changes_nothing() {
    let mut w = World::new("release");
    let mut engine = Engine::new();
    let first = start_keyed(&mut engine, &mut w, DANA, "release-1").unwrap();
    engine.take_events();

    let text = std::fs::read_to_string(example("release").join("workflow.yaml")).unwrap();
    w.workflow = stepgate::workflow::Workflow::parse(
        "release-budget-1",
        &text.replace("stepup_budget: 2", "stepup_budget: 1"),
    )
    .unwrap();
    let err = start_keyed(&mut engine, &mut w, DANA, "release-1").unwrap_err();
    match &err {
        EngineError::RequestIdReused { request_id, run } => {
            assert_eq!(request_id, "release-1");
            assert_eq!(*run, first.run);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        err.to_string(),
        format!(
            "request id `release-1` already started run {} of another workflow; nothing was started",
            first.run
        )
    );
    assert!(kinds(&mut engine).is_empty(), "nothing appended");
    assert_eq!(engine.state().runs.len(), 1);
}

#[test]
fn replaying_the_log_rebuilds_the_request_id_index() {
    let mut w = World::new("release");
    let mut engine = Engine::new();
    let first = start_keyed(&mut engine, &mut w, DANA, "release-1").unwrap();
    let log: Vec<(i64, Event)> = engine
        .take_events()
        .into_iter()
        .map(|e| (w.now, e))
        .collect();
    match &log[0].1 {
        Event::RunStarted { request_id, .. } => {
            assert_eq!(request_id.as_deref(), Some("release-1"))
        }
        other => panic!("{other:?}"),
    }

    let mut replayed = Engine::replay(log.iter().map(|(at, e)| (*at, e))).unwrap();
    assert_eq!(
        replayed.state().runs_by_request,
        engine.state().runs_by_request
    );
    assert_eq!(
        replayed
            .state()
            .run_by_request(DANA, "release-1")
            .map(|r| r.id),
        Some(first.run)
    );
    let again = start_keyed(&mut replayed, &mut w, DANA, "release-1").unwrap();
    assert_eq!(again, first);
    assert!(replayed.take_events().is_empty());
}

#[test]
fn a_log_that_uses_one_request_id_for_two_runs_does_not_replay() {
    let mut w = World::new("release");
    let mut engine = Engine::new();
    start_keyed(&mut engine, &mut w, DANA, "k").unwrap();
    let first = engine.take_events().remove(0);
    let Event::RunStarted {
        requester,
        workflow,
        workflow_digest,
        workflow_json,
        policy_digest,
        deadline,
        stepup_budget,
        request_id,
        ..
    } = first.clone()
    else {
        panic!("{first:?}")
    };
    let second = Event::RunStarted {
        run: Uuid::from_u128(99),
        requester,
        workflow,
        workflow_digest,
        workflow_json,
        policy_digest,
        deadline,
        stepup_budget,
        request_id,
    };
    let err = Engine::replay([(T0, &first), (T0, &second)]).unwrap_err();
    assert!(
        matches!(
            err,
            stepgate::engine::ApplyError::DuplicateRequest { run, .. } if run == Uuid::from_u128(99)
        ),
        "{err:?}"
    );
}

#[test]
fn a_decision_repeated_by_its_reviewer_answers_as_first_and_logs_nothing() {
    let mut w = World::new("release");
    let mut engine = Engine::new();
    let run = start(&mut engine, &mut w).run;
    let batch = engine.state().runs[&run].batches[0];
    w.now += 60_000;
    let first = decide(&mut engine, &mut w, batch, RILEY, true);
    assert_eq!(
        first,
        DecisionReply::Applied {
            batch,
            approved: true,
            valid_until: T0 + 60_000 + 900_000
        }
    );
    engine.take_events();

    w.now += 30_000;
    assert_eq!(decide(&mut engine, &mut w, batch, RILEY, true), first);
    assert!(kinds(&mut engine).is_empty(), "a repeat appends nothing");

    // Another verdict, or another reviewer, is refused as before.
    let flipped = decide(&mut engine, &mut w, batch, RILEY, false);
    let other = decide(&mut engine, &mut w, batch, SAM, true);
    for reply in [flipped, other] {
        assert_eq!(
            reply,
            DecisionReply::Refused {
                kind: RefuseKind::AlreadyDecided,
                reason: format!("batch {batch} is already approved")
            }
        );
    }
    assert_eq!(
        kinds(&mut engine),
        vec!["decision_refused", "decision_refused"]
    );
}

#[test]
fn a_denial_repeated_with_another_binding_is_refused() {
    let mut w = World::new("release");
    let mut engine = Engine::new();
    let run = start(&mut engine, &mut w).run;
    let batch = engine.state().runs[&run].batches[0];
    let first = decide(&mut engine, &mut w, batch, RILEY, false);
    assert_eq!(decide(&mut engine, &mut w, batch, RILEY, false), first);
    engine.take_events();
    let svid = w.svid(RILEY);
    let d = ReviewDecision {
        batch,
        svid: &svid,
        approve: false,
        binding: "sha256:00",
        comment: None,
    };
    let reply = engine.decide_batch(&mut w.env(), &d).unwrap();
    assert!(matches!(
        reply,
        DecisionReply::Refused {
            kind: RefuseKind::AlreadyDecided,
            ..
        }
    ));
    assert_eq!(kinds(&mut engine), vec!["decision_refused"]);
}

#[test]
fn a_completion_repeated_by_its_agent_answers_success_and_logs_nothing() {
    let mut w = World::new("release");
    let mut engine = Engine::new();
    let run = start(&mut engine, &mut w).run;
    let (_, jti) = issued(ask(
        &mut engine,
        &mut w,
        run,
        "unit-tests",
        &["ci:tests:run"],
    ));
    let svid = w.svid(&w.agent_of("unit-tests"));
    let first = engine
        .complete_step(&mut w.env(), run, "unit-tests", &svid, "412 passed")
        .unwrap();
    let expected = StepReply {
        ready: vec!["build-image".into()],
        run_status: RunStatus::Active,
        revoked: vec![jti],
    };
    assert_eq!(first, expected);
    engine.take_events();

    let again = engine
        .complete_step(&mut w.env(), run, "unit-tests", &svid, "412 passed")
        .unwrap();
    assert_eq!(again, expected);
    assert!(kinds(&mut engine).is_empty());

    // Another agent is still forbidden; failing a completed step conflicts.
    let builder = w.svid("spiffe://dev.stepgate.local/agent/builder");
    let err = engine
        .complete_step(&mut w.env(), run, "unit-tests", &builder, "done")
        .unwrap_err();
    assert!(matches!(err, EngineError::Forbidden(_)), "{err:?}");
    let err = engine
        .fail_step(&mut w.env(), run, "unit-tests", &svid, "oops")
        .unwrap_err();
    assert_eq!(err.to_string(), "step `unit-tests` is not in progress");
    assert!(kinds(&mut engine).is_empty());
}

#[test]
fn completing_the_last_step_again_answers_the_completed_run() {
    let mut w = World::new("release");
    let mut engine = Engine::new();
    let run = through_staging(&mut engine, &mut w);
    let batch = engine.state().runs[&run].batches[0];
    decide(&mut engine, &mut w, batch, RILEY, true);
    for (step, scope) in [
        ("deploy-production", "deploy:production"),
        ("migrate-production-db", "db:migrate"),
    ] {
        issued(ask(&mut engine, &mut w, run, step, &[scope]));
        complete(&mut engine, &mut w, run, step);
    }
    let (_, jti) = issued(ask(
        &mut engine,
        &mut w,
        run,
        "smoke-check",
        &["healthcheck:read"],
    ));
    let svid = w.svid(&w.agent_of("smoke-check"));
    let first = engine
        .complete_step(&mut w.env(), run, "smoke-check", &svid, "ok")
        .unwrap();
    assert_eq!(
        first,
        StepReply {
            ready: vec![],
            run_status: RunStatus::Completed,
            revoked: vec![jti],
        }
    );
    engine.take_events();
    let again = engine
        .complete_step(&mut w.env(), run, "smoke-check", &svid, "ok")
        .unwrap();
    assert_eq!(again, first);
    assert!(kinds(&mut engine).is_empty());
}

#[test]
fn a_failure_repeated_by_its_agent_answers_the_same_revocations() {
    let mut w = World::new("release");
    let mut engine = Engine::new();
    let run = start(&mut engine, &mut w).run;
    let (_, jti) = issued(ask(
        &mut engine,
        &mut w,
        run,
        "unit-tests",
        &["ci:tests:run"],
    ));
    let svid = w.svid(&w.agent_of("unit-tests"));
    let first = engine
        .fail_step(&mut w.env(), run, "unit-tests", &svid, "3 failed")
        .unwrap();
    let expected = StepReply {
        ready: vec![],
        run_status: RunStatus::Failed,
        revoked: vec![jti],
    };
    assert_eq!(first, expected);
    engine.take_events();

    let again = engine
        .fail_step(&mut w.env(), run, "unit-tests", &svid, "3 failed")
        .unwrap();
    assert_eq!(again, expected);
    assert!(kinds(&mut engine).is_empty());
    let err = engine
        .complete_step(&mut w.env(), run, "unit-tests", &svid, "ok")
        .unwrap_err();
    assert_eq!(err.to_string(), format!("run {run} has ended"));
}
