//! The service on a real sled store: durability, restart, tamper
//! detection, and the in-process transport with its clients.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers stop at the first surprise"
)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use stepgate::audit::{self, AuditError};
use stepgate::bus::InProcess;
use stepgate::chain::ChainError;
use stepgate::client::{AgentClient, Client, ReviewerClient};
use stepgate::clock::ManualClock;
use stepgate::engine::{Config, DecisionReply, TokenReply};
use stepgate::service::{self, Handle, Settings};
use stepgate::store::{RawLog, Store, StoreError};

struct Node {
    handle: Handle,
    transport: InProcess,
    clock: ManualClock,
}

async fn boot(dir: &std::path::Path, clock: ManualClock) -> Node {
    let wf = workflow("release");
    let settings = Settings {
        policy: policy("release", &wf),
        trust: dev_domain().bundle(),
        reviewers: reviewers("release"),
        engine: Config::default(),
        tick: Duration::from_secs(3600),
    };
    let store = Store::open(dir).unwrap();
    let handle = service::start(store, settings, Arc::new(clock.clone()))
        .await
        .unwrap();
    Node {
        transport: InProcess::new(handle.clone()),
        handle,
        clock,
    }
}

fn svid(clock: &ManualClock, who: &str) -> String {
    use stepgate::clock::Clock;
    dev_domain()
        .mint_svid(&id(who), "stepgate", clock.now() / 1000, 300)
        .unwrap()
}

fn agent(node: &Node, who: &str) -> AgentClient<InProcess> {
    AgentClient::new(node.transport.clone(), svid(&node.clock, who))
}

async fn step(node: &Node, run: uuid::Uuid, step: &str, who: &str, scope: &str) -> String {
    let a = agent(node, who);
    let reply = a
        .request_token(run, step, &[scope.to_string()], None)
        .await
        .unwrap();
    let TokenReply::Issued { token, .. } = reply else {
        panic!("{step}: {reply:?}")
    };
    a.complete(run, step, "ok").await.unwrap();
    token
}

const CI: &str = "spiffe://dev.stepgate.local/agent/ci-runner";
const BUILDER: &str = "spiffe://dev.stepgate.local/agent/builder";
const DEPLOYER: &str = "spiffe://dev.stepgate.local/agent/deployer";

fn release_text() -> String {
    std::fs::read_to_string(example("release").join("workflow.yaml")).unwrap()
}

#[tokio::test]
async fn a_restart_mid_run_rebuilds_identical_state_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let node = boot(dir.path(), clock.clone()).await;
    let client = Client::new(node.transport.clone());
    let run = client
        .start_run(&svid(&clock, DANA), &release_text())
        .await
        .unwrap()
        .run;
    step(&node, run, "unit-tests", CI, "ci:tests:run").await;
    let a = agent(&node, BUILDER);
    let live = a
        .request_token(
            run,
            "build-image",
            &["registry:push:payments/payments-api".into()],
            None,
        )
        .await
        .unwrap();
    let TokenReply::Issued {
        token: live_token, ..
    } = live
    else {
        panic!("{live:?}")
    };

    let before = client.run(run).await.unwrap();
    let reviewer = ReviewerClient::new(node.transport.clone(), svid(&clock, RILEY));
    let pending_before = reviewer.pending().await.unwrap();
    let kid = node.handle.kid().to_string();
    node.handle.shutdown().await;
    drop(node);

    let node = boot(dir.path(), clock.clone()).await;
    let client = Client::new(node.transport.clone());
    assert_eq!(node.handle.kid(), kid, "the signing key survives a restart");
    assert_eq!(client.run(run).await.unwrap(), before);
    let reviewer = ReviewerClient::new(node.transport.clone(), svid(&clock, RILEY));
    assert_eq!(reviewer.pending().await.unwrap(), pending_before);
    assert_eq!(pending_before.batches.len(), 1);

    // The token issued before the restart is still known and still live.
    let status = client.introspect(&live_token).await.unwrap();
    assert!(status.active);
    assert_eq!(status.step.as_deref(), Some("build-image"));
    // And the run goes on.
    agent(&node, BUILDER)
        .complete(run, "build-image", "pushed")
        .await
        .unwrap();
    assert!(!client.introspect(&live_token).await.unwrap().active);
    node.handle.shutdown().await;
}

#[tokio::test]
async fn an_agent_waiting_on_review_gets_its_token_when_the_batch_is_approved() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let node = boot(dir.path(), clock.clone()).await;
    let client = Client::new(node.transport.clone());
    let run = client
        .start_run(&svid(&clock, DANA), &release_text())
        .await
        .unwrap()
        .run;
    step(&node, run, "unit-tests", CI, "ci:tests:run").await;
    step(
        &node,
        run,
        "build-image",
        BUILDER,
        "registry:push:payments/payments-api",
    )
    .await;
    step(
        &node,
        run,
        "sign-image",
        "spiffe://dev.stepgate.local/agent/signer",
        "signing:sign:release",
    )
    .await;
    step(&node, run, "deploy-staging", DEPLOYER, "deploy:staging").await;

    let deployer = agent(&node, DEPLOYER);
    let waiting = tokio::spawn(async move {
        deployer
            .token(
                run,
                "deploy-production",
                &["deploy:production".into()],
                None,
                Duration::from_secs(10),
            )
            .await
    });
    let reviewer = ReviewerClient::new(node.transport.clone(), svid(&clock, SAM));
    let batch = loop {
        // The batch opened at run start; wait until the agent is parked on it.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let pending = reviewer.pending().await.unwrap().batches;
        if pending.len() == 1 {
            break pending[0].clone();
        }
    };
    let steps: Vec<&str> = batch.items.iter().map(|i| i.step.as_str()).collect();
    assert_eq!(steps, vec!["deploy-production", "migrate-production-db"]);
    assert_eq!(batch.requester, DANA);
    let applied = reviewer
        .decide(batch.batch, &batch.binding, true, Some("looks right"))
        .await
        .unwrap();
    assert!(matches!(
        applied,
        DecisionReply::Applied { approved: true, .. }
    ));

    let reply = waiting.await.unwrap().unwrap();
    match reply {
        TokenReply::Issued {
            approval, scopes, ..
        } => {
            assert_eq!(approval, Some(batch.batch));
            assert_eq!(scopes, vec!["deploy:production".to_string()]);
        }
        other => panic!("{other:?}"),
    }
    let again = reviewer
        .decide(batch.batch, &batch.binding, false, None)
        .await
        .unwrap();
    assert!(matches!(again, DecisionReply::Refused { .. }));
    node.handle.shutdown().await;
}

#[tokio::test]
async fn a_tampered_event_is_caught_by_audit_and_refused_by_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let node = boot(dir.path(), clock.clone()).await;
    let client = Client::new(node.transport.clone());
    let run = client
        .start_run(&svid(&clock, DANA), &release_text())
        .await
        .unwrap()
        .run;
    step(&node, run, "unit-tests", CI, "ci:tests:run").await;
    node.handle.shutdown().await;
    drop(node);

    let clean = audit::verify(dir.path()).unwrap();
    assert!(clean.findings.is_empty(), "{:?}", clean.findings);
    assert_eq!(clean.runs, 1);
    assert_eq!(clean.tokens, 1);

    {
        let raw = RawLog::open(dir.path()).unwrap();
        let records: Vec<(u64, Vec<u8>)> = raw.records().map(Result::unwrap).collect();
        let (seq, mut bytes) = records[5].clone();
        assert_eq!(seq, 5);
        // Change one byte inside the body (past the record header).
        let at = bytes.len() - 10;
        bytes[at] ^= 0x20;
        raw.overwrite(seq, &bytes).unwrap();
    }
    match audit::verify(dir.path()) {
        Err(AuditError::Chain(e)) => assert_eq!(e.seq(), 5, "{e}"),
        other => panic!("expected a chain error, got {other:?}"),
    }
    match Store::open(dir.path()) {
        Err(StoreError::Chain(ChainError::Hash { seq } | ChainError::Decode { seq, .. })) => {
            assert_eq!(seq, 5)
        }
        other => panic!("expected the store to refuse the log, got {other:?}"),
    }
}
