//! The engine core on the release example: decisions, the scope rule,
//! review batches and their rules, revocation, cancellation and budget,
//! and (in `engine/retry.rs`) requests retried after a lost answer.
//! Real Cedar, real signatures, fixed time.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers stop at the first surprise"
)]

mod common;
/// Asserts that a token request was refused before policy, for `kind`.
fn assert_rejected(reply: &TokenReply, kind: RejectKind) {
    assert!(
        matches!(reply, TokenReply::Rejected { kind: k, .. } if *k == kind),
        "expected {kind:?}, got {reply:?}"
    );
}

#[path = "engine/retry.rs"]
mod retry;

use common::*;
use stepgate::engine::{
    BatchStatus, DecisionReply, Engine, RefuseKind, RejectKind, ReviewDecision, RunStatus,
    StepStatus, TokenReply, TokenRequest, TokenStatus,
};
use stepgate::event::{Event, RevokeReason};
use stepgate::scope::ScopeSet;
use stepgate::token::{verify, Jwks, VerifyOptions};
use uuid::Uuid;

fn ask(engine: &mut Engine, w: &mut World, run: Uuid, step: &str, scopes: &[&str]) -> TokenReply {
    let svid = w.svid(&w.agent_of(step));
    ask_as(engine, w, run, step, scopes, &svid)
}

fn ask_as(
    engine: &mut Engine,
    w: &mut World,
    run: Uuid,
    step: &str,
    scopes: &[&str],
    svid: &str,
) -> TokenReply {
    let scopes = ScopeSet::parse(scopes).unwrap();
    let req = TokenRequest {
        run,
        step,
        svid,
        scopes: &scopes,
        intent: None,
    };
    engine.request_token(&mut w.env(), &req).unwrap()
}

fn complete(engine: &mut Engine, w: &mut World, run: Uuid, step: &str) -> Vec<String> {
    let svid = w.svid(&w.agent_of(step));
    engine
        .complete_step(&mut w.env(), run, step, &svid, "done")
        .unwrap()
        .ready
}

fn issued(reply: TokenReply) -> (String, Uuid) {
    match reply {
        TokenReply::Issued { token, jti, .. } => (token, jti),
        other => panic!("expected a token, got {other:?}"),
    }
}

/// Runs the release pipeline up to (not including) `deploy-production`.
fn through_staging(engine: &mut Engine, w: &mut World) -> Uuid {
    let run = start(engine, w).run;
    for (step, scope) in [
        ("unit-tests", "ci:tests:run"),
        ("build-image", "registry:push:payments/payments-api"),
        ("sign-image", "signing:sign:release"),
        ("deploy-staging", "deploy:staging"),
    ] {
        issued(ask(engine, w, run, step, &[scope]));
        complete(engine, w, run, step);
    }
    engine.take_events();
    run
}

fn decide(
    engine: &mut Engine,
    w: &mut World,
    batch: Uuid,
    who: &str,
    approve: bool,
) -> DecisionReply {
    let binding = engine.state().batches[&batch].binding.clone();
    let svid = w.svid(who);
    let d = ReviewDecision {
        batch,
        svid: &svid,
        approve,
        binding: &binding,
        comment: None,
    };
    engine.decide_batch(&mut w.env(), &d).unwrap()
}

#[test]
fn a_run_opens_one_batch_for_the_production_chain_and_readies_the_root() {
    let mut w = World::new("release");
    let mut engine = Engine::new();
    let reply = start(&mut engine, &mut w);
    assert_eq!(reply.ready, vec!["unit-tests".to_string()]);
    assert_eq!(reply.batches.len(), 1);
    let batch = &engine.state().batches[&reply.batches[0]];
    assert_eq!(batch.group, "release-managers");
    let steps: Vec<&str> = batch.items.iter().map(|i| i.step.as_str()).collect();
    assert_eq!(steps, vec!["deploy-production", "migrate-production-db"]);
    assert_eq!(batch.status, BatchStatus::Pending);
    assert_eq!(batch.expires_at, T0 + 900_000);
}

#[test]
fn an_allowed_step_gets_a_token_with_exactly_the_asked_scopes_and_capped_exp() {
    let mut w = World::new("release");
    let mut engine = Engine::new();
    let run = start(&mut engine, &mut w).run;
    let (token, jti) = issued(ask(
        &mut engine,
        &mut w,
        run,
        "unit-tests",
        &["ci:tests:run"],
    ));

    let jwks = Jwks {
        keys: vec![w.key.public_jwk()],
    };
    let opts = VerifyOptions {
        issuer: "stepgate",
        audience: "https://ci.acme.internal",
        now: T0 / 1000,
    };
    let claims = verify(&token, &jwks, &opts).unwrap();
    assert_eq!(claims.sub, "spiffe://dev.stepgate.local/agent/ci-runner");
    assert_eq!(claims.scope, "ci:tests:run");
    assert_eq!(claims.jti, jti.to_string());
    assert_eq!(claims.run, run.to_string());
    assert_eq!(claims.step, "unit-tests");
    assert_eq!(claims.wf, w.workflow.digest());
    assert_eq!(claims.approval, None);
    // Step TTL is 10m, the default token TTL 5m: the shorter wins.
    assert_eq!(claims.exp, T0 / 1000 + 300);
    assert_eq!(claims.iat, T0 / 1000);

    let events = engine.take_events();
    let kinds: Vec<&str> = events.iter().map(Event::kind).collect();
    assert_eq!(kinds, vec!["token_requested", "decided", "token_issued"]);
    match &events[1] {
        Event::Decided {
            policy_ids,
            policy_digest,
            ..
        } => {
            assert_eq!(policy_ids, &vec!["ci-runner-runs-tests".to_string()]);
            assert_eq!(policy_digest, w.policy.digest());
        }
        other => panic!("{other:?}"),
    }
    // The event names the token by digest, never carries it.
    let text = format!("{events:?}");
    assert!(!text.contains(&token));
}

#[test]
fn asking_beyond_the_step_scopes_rejects_the_whole_request() {
    let mut w = World::new("release");
    let mut engine = Engine::new();
    let run = start(&mut engine, &mut w).run;
    let reply = ask(
        &mut engine,
        &mut w,
        run,
        "unit-tests",
        &["ci:tests:run", "deploy:production"],
    );
    assert_eq!(
        reply,
        TokenReply::Rejected {
            kind: RejectKind::ScopeExcess,
            reason: "step `unit-tests` does not declare `deploy:production`; nothing was issued"
                .into()
        }
    );
    assert!(engine.state().tokens.is_empty());
    let kinds: Vec<&str> = engine.take_events().iter().map(Event::kind).collect();
    assert_eq!(kinds, vec!["request_rejected"]);
}

#[test]
fn a_subset_of_the_step_scopes_is_issued_as_asked_not_widened() {
    // Triage declares logs and metrics; it asks for logs only.
    let mut w = World::new("incident-response");
    let mut engine = Engine::new();
    let run = start(&mut engine, &mut w).run;
    assert_eq!(
        w.workflow.step("triage").unwrap().scopes.to_strings(),
        vec![
            "logs:read:checkout".to_string(),
            "metrics:read:checkout".to_string()
        ]
    );
    let (token, _) = issued(ask(
        &mut engine,
        &mut w,
        run,
        "triage",
        &["logs:read:checkout"],
    ));
    let jwks = Jwks {
        keys: vec![w.key.public_jwk()],
    };
    let aud = w.workflow.step("triage").unwrap().resource.clone();
    let opts = VerifyOptions {
        issuer: "stepgate",
        audience: &aud,
        now: T0 / 1000,
    };
    assert_eq!(
        verify(&token, &jwks, &opts).unwrap().scope,
        "logs:read:checkout"
    );
}

#[test]
fn empty_scopes_wrong_agent_and_bad_identity_are_rejected() {
    let mut w = World::new("release");
    let mut engine = Engine::new();
    let run = start(&mut engine, &mut w).run;
    assert!(matches!(
        ask(&mut engine, &mut w, run, "unit-tests", &[]),
        TokenReply::Rejected {
            kind: RejectKind::NoScopes,
            ..
        }
    ));

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

    // A name alone is not an identity: an SVID from another trust domain's key fails.
    let foreign =
        stepgate::identity::DevTrustDomain::generate(DOMAIN, &mut rand_core::OsRng).unwrap();
    let forged = foreign
        .mint_svid(&id(&w.agent_of("unit-tests")), "stepgate", T0 / 1000, 300)
        .unwrap();
    let reply = ask_as(
        &mut engine,
        &mut w,
        run,
        "unit-tests",
        &["ci:tests:run"],
        &forged,
    );
    assert_rejected(&reply, RejectKind::BadIdentity);
    assert!(engine.state().tokens.is_empty());
}

#[test]
fn a_step_whose_dependencies_are_open_is_not_ready() {
    let mut w = World::new("release");
    let mut engine = Engine::new();
    let run = start(&mut engine, &mut w).run;
    let reply = ask(
        &mut engine,
        &mut w,
        run,
        "build-image",
        &["registry:push:payments/payments-api"],
    );
    assert_eq!(
        reply,
        TokenReply::Rejected {
            kind: RejectKind::StepNotReady,
            reason: "step `build-image` waits for unit-tests".into()
        }
    );
}

#[test]
fn completing_a_step_revokes_its_token_and_readies_the_next() {
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
    engine.take_events();
    let ready = complete(&mut engine, &mut w, run, "unit-tests");
    assert_eq!(ready, vec!["build-image".to_string()]);
    assert_eq!(
        engine.state().tokens[&jti].status,
        TokenStatus::Revoked {
            reason: RevokeReason::StepCompleted,
            at: T0
        }
    );
    let kinds: Vec<&str> = engine.take_events().iter().map(Event::kind).collect();
    assert_eq!(kinds, vec!["token_revoked", "step_completed", "step_ready"]);
}

#[test]
fn a_stepped_up_step_waits_for_the_batch_and_gets_an_approval_bound_token() {
    let mut w = World::new("release");
    let mut engine = Engine::new();
    let run = through_staging(&mut engine, &mut w);
    let batch = engine.state().runs[&run].batches[0];

    let reply = ask(
        &mut engine,
        &mut w,
        run,
        "deploy-production",
        &["deploy:production"],
    );
    assert_eq!(
        reply,
        TokenReply::Pending {
            batch,
            group: "release-managers".into()
        }
    );

    w.now += 60_000;
    let applied = decide(&mut engine, &mut w, batch, RILEY, true);
    assert_eq!(
        applied,
        DecisionReply::Applied {
            batch,
            approved: true,
            valid_until: T0 + 60_000 + 900_000
        }
    );

    let (token, _) = issued(ask(
        &mut engine,
        &mut w,
        run,
        "deploy-production",
        &["deploy:production"],
    ));
    let jwks = Jwks {
        keys: vec![w.key.public_jwk()],
    };
    let opts = VerifyOptions {
        issuer: "stepgate",
        audience: "https://deploy.prod.acme.internal",
        now: w.now / 1000,
    };
    let claims = verify(&token, &jwks, &opts).unwrap();
    assert_eq!(claims.approval, Some(batch.to_string()));
    assert_eq!(engine.state().runs[&run].stepups, 1);
}

#[test]
fn the_requester_may_not_approve_their_own_run() {
    let mut w = World::new("release");
    // Put dana in the group so only the self-approval rule stands in the way.
    w.reviewers = stepgate::review::Reviewers::from_groups([(
        "release-managers".to_string(),
        vec![id(DANA), id(RILEY)],
    )]);
    let mut engine = Engine::new();
    let run = start(&mut engine, &mut w).run;
    let batch = engine.state().runs[&run].batches[0];
    let reply = decide(&mut engine, &mut w, batch, DANA, true);
    assert!(
        matches!(
            reply,
            DecisionReply::Refused {
                kind: RefuseKind::SelfApproval,
                ..
            }
        ),
        "{reply:?}"
    );
    assert_eq!(engine.state().batches[&batch].status, BatchStatus::Pending);
}

#[test]
fn a_second_decision_on_a_decided_batch_is_refused() {
    let mut w = World::new("release");
    let mut engine = Engine::new();
    let run = start(&mut engine, &mut w).run;
    let batch = engine.state().runs[&run].batches[0];
    assert!(matches!(
        decide(&mut engine, &mut w, batch, RILEY, false),
        DecisionReply::Applied {
            approved: false,
            ..
        }
    ));
    let again = decide(&mut engine, &mut w, batch, SAM, true);
    assert_eq!(
        again,
        DecisionReply::Refused {
            kind: RefuseKind::AlreadyDecided,
            reason: format!("batch {batch} is already denied")
        }
    );
    assert_eq!(
        engine.state().batches[&batch].status,
        BatchStatus::Denied { by: RILEY.into() }
    );
}

#[test]
fn outsiders_wrong_bindings_and_late_decisions_are_refused() {
    let mut w = World::new("release");
    let mut engine = Engine::new();
    let run = start(&mut engine, &mut w).run;
    let batch = engine.state().runs[&run].batches[0];

    let outsider = decide(
        &mut engine,
        &mut w,
        batch,
        "spiffe://dev.stepgate.local/human/mallory",
        true,
    );
    assert!(matches!(
        outsider,
        DecisionReply::Refused {
            kind: RefuseKind::NotInGroup,
            ..
        }
    ));

    let svid = w.svid(RILEY);
    let d = ReviewDecision {
        batch,
        svid: &svid,
        approve: true,
        binding: "sha256:00",
        comment: None,
    };
    let reply = engine.decide_batch(&mut w.env(), &d).unwrap();
    assert!(matches!(
        reply,
        DecisionReply::Refused {
            kind: RefuseKind::BindingMismatch,
            ..
        }
    ));

    w.now = T0 + 900_000;
    let late = decide(&mut engine, &mut w, batch, RILEY, true);
    assert!(matches!(
        late,
        DecisionReply::Refused {
            kind: RefuseKind::Expired,
            ..
        }
    ));
    assert!(engine.tick(w.now).unwrap());
    assert_eq!(engine.state().batches[&batch].status, BatchStatus::Expired);
}

#[test]
fn a_denied_batch_denies_the_token() {
    let mut w = World::new("release");
    let mut engine = Engine::new();
    let run = through_staging(&mut engine, &mut w);
    let batch = engine.state().runs[&run].batches[0];
    decide(&mut engine, &mut w, batch, SAM, false);
    let reply = ask(
        &mut engine,
        &mut w,
        run,
        "deploy-production",
        &["deploy:production"],
    );
    assert!(matches!(reply, TokenReply::Denied { .. }), "{reply:?}");
    assert!(engine.state().runs[&run].steps["deploy-production"]
        .live_token
        .is_none());
}

#[test]
fn cancelling_a_run_revokes_every_live_token_and_withdraws_batches() {
    let mut w = World::new("release");
    let mut engine = Engine::new();
    let run = start(&mut engine, &mut w).run;
    let batch = engine.state().runs[&run].batches[0];
    let (_, jti) = issued(ask(
        &mut engine,
        &mut w,
        run,
        "unit-tests",
        &["ci:tests:run"],
    ));
    let svid = w.svid(DANA);
    let revoked = engine
        .cancel_run(&mut w.env(), run, &svid, "release called off")
        .unwrap();
    assert_eq!(revoked, vec![jti]);
    assert_eq!(engine.state().runs[&run].status, RunStatus::Cancelled);
    assert_eq!(
        engine.state().batches[&batch].status,
        BatchStatus::Withdrawn
    );
    assert_eq!(
        engine.state().tokens[&jti].status,
        TokenStatus::Revoked {
            reason: RevokeReason::RunCancelled,
            at: T0
        }
    );
    // Approve after cancel: refused, nothing changes.
    let late = decide(&mut engine, &mut w, batch, RILEY, true);
    assert!(
        matches!(
            late,
            DecisionReply::Refused {
                kind: RefuseKind::AlreadyDecided,
                ..
            }
        ),
        "{late:?}"
    );
}

#[test]
fn a_run_over_its_step_up_budget_pauses_until_a_reviewer_resumes_it() {
    let mut w = World::new("release");
    let text = std::fs::read_to_string(example("release").join("workflow.yaml")).unwrap();
    w.workflow = stepgate::workflow::Workflow::parse(
        "release-budget-1",
        &text.replace("stepup_budget: 2", "stepup_budget: 1"),
    )
    .unwrap();
    let mut engine = Engine::new();
    let run = through_staging(&mut engine, &mut w);
    let batch = engine.state().runs[&run].batches[0];
    decide(&mut engine, &mut w, batch, RILEY, true);

    issued(ask(
        &mut engine,
        &mut w,
        run,
        "deploy-production",
        &["deploy:production"],
    ));
    complete(&mut engine, &mut w, run, "deploy-production");
    engine.take_events();

    let reply = ask(
        &mut engine,
        &mut w,
        run,
        "migrate-production-db",
        &["db:migrate"],
    );
    assert_eq!(
        reply,
        TokenReply::Paused {
            reason: "run made 2 step-ups; its budget is 1".into()
        }
    );
    assert_eq!(engine.state().runs[&run].status, RunStatus::Paused);
    let kinds: Vec<&str> = engine.take_events().iter().map(Event::kind).collect();
    assert_eq!(kinds, vec!["token_requested", "decided", "run_paused"]);

    // The requester cannot lift the pause; a reviewer can.
    let dana = w.svid(DANA);
    assert!(engine.resume_run(&mut w.env(), run, &dana, 1).is_err());
    let riley = w.svid(RILEY);
    engine.resume_run(&mut w.env(), run, &riley, 1).unwrap();
    assert_eq!(engine.state().runs[&run].budget, 2);
    let (_, _) = issued(ask(
        &mut engine,
        &mut w,
        run,
        "migrate-production-db",
        &["db:migrate"],
    ));
    assert_eq!(engine.state().runs[&run].stepups, 2);
}

#[test]
fn a_token_past_exp_expires_on_tick_and_the_step_may_ask_again() {
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
    // While it is live, asking again hands out the same token.
    let again = ask(&mut engine, &mut w, run, "unit-tests", &["ci:tests:run"]);
    assert_eq!(issued(again).1, jti);
    w.now = T0 + 300_000;
    assert!(engine.tick(w.now).unwrap());
    assert_eq!(
        engine.state().tokens[&jti].status,
        TokenStatus::Expired { at: T0 + 300_000 }
    );
    let (_, second) = issued(ask(
        &mut engine,
        &mut w,
        run,
        "unit-tests",
        &["ci:tests:run"],
    ));
    assert_ne!(second, jti);
    assert_eq!(
        engine.state().runs[&run].steps["unit-tests"].status,
        StepStatus::Ready
    );
}

#[test]
fn replaying_the_events_rebuilds_identical_state() {
    let mut w = World::new("release");
    let mut engine = Engine::new();
    let mut log = vec![];
    let run = start(&mut engine, &mut w).run;
    // start() drained its events; rebuild from a fresh engine that keeps them.
    let mut engine = Engine::new();
    let mut w = World::new("release");
    let svid = w.svid(DANA);
    let wf = w.workflow.clone();
    let run2 = engine
        .start_run(&mut w.env(), &svid, &wf, None)
        .unwrap()
        .run;
    assert_eq!(run, run2, "ids are deterministic");
    log.extend(engine.take_events().into_iter().map(|e| (w.now, e)));
    issued(ask(
        &mut engine,
        &mut w,
        run,
        "unit-tests",
        &["ci:tests:run"],
    ));
    log.extend(engine.take_events().into_iter().map(|e| (w.now, e)));
    complete(&mut engine, &mut w, run, "unit-tests");
    log.extend(engine.take_events().into_iter().map(|e| (w.now, e)));

    let replayed = Engine::replay(log.iter().map(|(at, e)| (*at, e))).unwrap();
    let a = serde_json::to_value(&engine.state().runs[&run]).unwrap();
    let b = serde_json::to_value(&replayed.state().runs[&run]).unwrap();
    assert_eq!(a, b);
    assert_eq!(engine.state().tokens, replayed.state().tokens);
    assert_eq!(engine.state().batches, replayed.state().batches);
}
