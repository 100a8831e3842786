//! The engine on a real nats-server that each test starts on a free
//! loopback port with its own JetStream store: request-reply, bad payloads,
//! a NATS restart while a batch is pending, an engine killed with SIGKILL
//! and restarted, and an engine paused with SIGSTOP so that its replies
//! reach the client only after the request timed out.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers stop at the first surprise"
)]

mod common;
#[path = "common/nats.rs"]
mod nats_server;
#[path = "common/serve.rs"]
mod serve;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use nats_server::NatsServer;
use serve::{dev_init, dev_svid, Engine, Stopped};
use stepgate::bus::{BusError, Request, Response, Transport};
use stepgate::client::{AgentClient, Client, ClientError, ReviewerClient};
use stepgate::engine::{DecisionReply, TokenReply};
use stepgate::nats::NatsTransport;
use stepgate::request_id::RequestId;

async fn connect(url: &str) -> NatsTransport {
    NatsTransport::connect(url, Duration::from_secs(5))
        .await
        .unwrap()
}

/// Waits until the engine answers health.
async fn ready(t: &NatsTransport) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Response::Health {
            events,
            ready: true,
            ..
        }) = t.call(Request::Health {}).await
        {
            return events;
        }
        assert!(Instant::now() < deadline, "engine did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const CI: &str = "spiffe://dev.stepgate.local/agent/ci-runner";
const BUILDER: &str = "spiffe://dev.stepgate.local/agent/builder";
const SIGNER: &str = "spiffe://dev.stepgate.local/agent/signer";
const DEPLOYER: &str = "spiffe://dev.stepgate.local/agent/deployer";

fn release_text() -> String {
    std::fs::read_to_string(example("release").join("workflow.yaml")).unwrap()
}

async fn do_step(
    t: &NatsTransport,
    dev: &Path,
    run: uuid::Uuid,
    step: &str,
    who: &str,
    scope: &str,
) {
    let agent = AgentClient::new(t.clone(), dev_svid(dev, who));
    let reply = agent
        .request_token(run, step, &[scope.to_string()], None)
        .await
        .unwrap();
    assert!(
        matches!(reply, TokenReply::Issued { .. }),
        "{step}: {reply:?}"
    );
    agent.complete(run, step, "ok").await.unwrap();
}

async fn to_production(t: &NatsTransport, dev: &Path) -> uuid::Uuid {
    let run = Client::new(t.clone())
        .start_run(&dev_svid(dev, DANA), &release_text())
        .await
        .unwrap()
        .run;
    do_step(t, dev, run, "unit-tests", CI, "ci:tests:run").await;
    do_step(
        t,
        dev,
        run,
        "build-image",
        BUILDER,
        "registry:push:payments/payments-api",
    )
    .await;
    do_step(t, dev, run, "sign-image", SIGNER, "signing:sign:release").await;
    do_step(t, dev, run, "deploy-staging", DEPLOYER, "deploy:staging").await;
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_oversize_and_mistyped_payloads_get_errors_and_leave_the_log_alone() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    dev_init(&dir.path().join("dev"));
    let _engine = Engine::start(
        &nats.url(),
        &dir.path().join("data"),
        &dir.path().join("dev"),
    );
    let t = connect(&nats.url()).await;
    let before = ready(&t).await;
    let client = t.client().clone();

    let json = |v: &str| {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Content-Type", "application/json");
        (h, Bytes::from(v.to_string()))
    };
    let cases: Vec<(&str, async_nats::HeaderMap, Bytes, &str)> = vec![
        (
            "stepgate.v1.step.token",
            async_nats::HeaderMap::new(),
            Bytes::from_static(b"\xc1\xff garbage"),
            "bad_request",
        ),
        (
            // Deep nesting must be refused before the decoder's recursion
            // can exhaust the stack, in any build.
            "stepgate.v1.health",
            async_nats::HeaderMap::new(),
            Bytes::from([vec![0x91u8; 100_000], vec![0xc0]].concat()),
            "bad_request",
        ),
        {
            let (h, b) = json("{not json");
            ("stepgate.v1.step.token", h, b, "bad_request")
        },
        {
            let (h, b) = json(r#"{"run": 42, "step": "unit-tests", "svid": "x", "scopes": []}"#);
            ("stepgate.v1.step.token", h, b, "bad_request")
        },
        {
            let (h, b) = json(
                r#"{"run": "00000000-0000-0000-0000-000000000001", "step": "s", "svid": "x", "scopes": ["a b"]}"#,
            );
            ("stepgate.v1.step.token", h, b, "bad_request")
        },
        {
            let (h, b) = json(r#"{"batch": "not-a-uuid"}"#);
            ("stepgate.v1.review.decide", h, b, "bad_request")
        },
        {
            let (h, b) = json(r#"[1,2,3]"#);
            ("stepgate.v1.run.start", h, b, "bad_request")
        },
        {
            let (h, b) = json(r#"{"svid": "x", "workflow": "version: 1\nname: x\nsteps: []\n"}"#);
            ("stepgate.v1.run.start", h, b, "bad_request")
        },
        {
            let (h, b) = json(r#"{"svid": "x", "workflow": "version: 1", "request_id": "try 2"}"#);
            ("stepgate.v1.run.start", h, b, "bad_request")
        },
        {
            let (h, b) = json(r#"{"run": "00000000-0000-0000-0000-000000000001"}"#);
            ("stepgate.v1.run.status", h, b, "unknown_run")
        },
        {
            let big = format!(r#"{{"token": "{}"}}"#, "a".repeat(300 * 1024));
            let (h, b) = json(&big);
            ("stepgate.v1.token.introspect", h, b, "too_large")
        },
    ];
    for (subject, headers, payload, code) in cases {
        let reply = client
            .request_with_headers(subject.to_string(), headers, payload)
            .await
            .unwrap();
        let is_json = reply
            .headers
            .as_ref()
            .and_then(|h| h.get("Content-Type"))
            .is_some();
        let response = stepgate::nats::decode_response(&reply.payload, is_json).unwrap();
        match response {
            Response::Error { code: got, .. } => assert_eq!(got, code, "{subject}"),
            other => panic!("{subject}: expected an error, got {other:?}"),
        }
    }
    // Every subject refuses a payload with a field it does not know.
    for (suffix, _) in stepgate::nats::ROUTES {
        let subject = format!("{}.{suffix}", stepgate::nats::PREFIX);
        let (h, b) = json(r#"{"unexpected": true}"#);
        let reply = client
            .request_with_headers(subject.clone(), h, b)
            .await
            .unwrap();
        match stepgate::nats::decode_response(&reply.payload, true).unwrap() {
            Response::Error { code, .. } => assert_eq!(code, "bad_request", "{subject}"),
            other => panic!("{subject}: expected an error, got {other:?}"),
        }
    }
    // A subject outside the contract has no responder at all.
    let (h, b) = json("{}");
    let refused = client
        .request_with_headers("stepgate.v1.no.such.subject", h, b)
        .await
        .unwrap_err();
    assert_eq!(
        refused.kind(),
        async_nats::client::RequestErrorKind::NoResponders
    );
    // A request with no reply subject is dropped.
    client
        .publish("stepgate.v1.run.start", Bytes::from_static(b"{}"))
        .await
        .unwrap();
    client.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(ready(&t).await, before, "the log did not change");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_while_a_batch_is_pending_loses_nothing() {
    let mut nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("dev");
    dev_init(&dev);
    let _engine = Engine::start(&nats.url(), &dir.path().join("data"), &dev);
    let t = connect(&nats.url()).await;
    ready(&t).await;
    let run = to_production(&t, &dev).await;

    // The deployer waits on review over NATS, without polling.
    let agent = AgentClient::new(t.clone(), dev_svid(&dev, DEPLOYER));
    let waiting = tokio::spawn(async move {
        agent
            .token(
                run,
                "deploy-production",
                &["deploy:production".into()],
                None,
                Duration::from_secs(60),
            )
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    nats.restart();
    ready(&t).await; // clients and engine reconnect by themselves

    let reviewer = ReviewerClient::new(t.clone(), dev_svid(&dev, RILEY));
    let pending = reviewer.pending().await.unwrap().batches;
    assert_eq!(
        pending.len(),
        1,
        "the batch is still pending after the restart"
    );
    let decision = reviewer
        .decide(pending[0].batch, &pending[0].binding, true, None)
        .await
        .unwrap();
    assert!(matches!(
        decision,
        DecisionReply::Applied { approved: true, .. }
    ));

    let reply = waiting.await.unwrap().unwrap();
    match reply {
        TokenReply::Issued { approval, .. } => assert_eq!(approval, Some(pending[0].batch)),
        other => panic!("{other:?}"),
    }

    // The batch events are in JetStream (file storage survived the restart).
    let js = async_nats::jetstream::new(t.client().clone());
    let mut stream = js.get_stream(stepgate::nats::EVENTS_STREAM).await.unwrap();
    let opened = stream
        .get_last_raw_message_by_subject("stepgate.v1.events.batch.opened")
        .await
        .unwrap();
    let entry: stepgate::chain::Entry = serde_json::from_slice(&opened.payload).unwrap();
    assert_eq!(entry.event.kind(), "batch_opened");
    // Every committed event reaches the stream exactly once.
    let events = ready(&t).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stored = stream.info().await.unwrap().state.messages;
        if stored == events || Instant::now() > deadline {
            assert_eq!(stored, events);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_killed_mid_run_rebuilds_its_state_and_issues_nothing_twice() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("dev");
    dev_init(&dev);
    let mut engine = Engine::start(&nats.url(), &dir.path().join("data"), &dev);
    let t = connect(&nats.url()).await;
    ready(&t).await;
    let client = Client::new(t.clone());
    let run = client
        .start_run(&dev_svid(&dev, DANA), &release_text())
        .await
        .unwrap()
        .run;
    let ci = AgentClient::new(t.clone(), dev_svid(&dev, CI));
    let TokenReply::Issued { token, jti, .. } = ci
        .request_token(run, "unit-tests", &["ci:tests:run".into()], None)
        .await
        .unwrap()
    else {
        panic!("no token")
    };
    let before = client.run(run).await.unwrap();
    let events_before = ready(&t).await;

    engine.sigkill();
    engine.spawn();
    let events_after = ready(&t).await;
    assert_eq!(
        events_after, events_before,
        "every answered event was on disk"
    );
    assert_eq!(client.run(run).await.unwrap(), before);
    let status = client.introspect(&token).await.unwrap();
    assert!(status.active);
    assert_eq!(status.jti, Some(jti.to_string()));
    // Not issued twice: asking again after the restart hands out the same
    // token, rebuilt from the replayed log.
    let again = ci
        .request_token(run, "unit-tests", &["ci:tests:run".into()], None)
        .await
        .unwrap();
    match again {
        TokenReply::Issued {
            token: again,
            jti: again_jti,
            ..
        } => assert_eq!((again, again_jti), (token, jti)),
        other => panic!("{other:?}"),
    }
    let reviewer = ReviewerClient::new(t.clone(), dev_svid(&dev, RILEY));
    assert_eq!(
        reviewer.pending().await.unwrap().batches.len(),
        1,
        "the pending batch is still pending"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_engine_cleanly_and_a_restart_resumes_the_run() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("dev");
    dev_init(&dev);
    let mut engine = Engine::start(&nats.url(), &dir.path().join("data"), &dev);
    let t = connect(&nats.url()).await;
    ready(&t).await;
    let client = Client::new(t.clone());
    let run = client
        .start_run(&dev_svid(&dev, DANA), &release_text())
        .await
        .unwrap()
        .run;
    let before = client.run(run).await.unwrap();

    assert_eq!(engine.sigterm(), Some(0));

    engine.spawn();
    ready(&t).await;
    assert_eq!(client.run(run).await.unwrap(), before);
}

#[test]
fn the_demo_drives_the_release_pipeline_over_nats() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = Command::new(env!("CARGO_BIN_EXE_stepgate"))
        .args(["demo", "examples/release", "--approve", "--data"])
        .arg(&data)
        .args(["--nats", &nats.url()])
        .current_dir(root())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("engine serving; agents and reviewers connect as clients"),
        "{stdout}"
    );
    assert_eq!(
        stdout.matches("tool    accepted the token").count(),
        7,
        "{stdout}"
    );
    assert!(stdout.contains("review  batch APPROVED"), "{stdout}");
}

/// Waits until the engine's log holds `expected` events, then checks that
/// it holds exactly that many.
async fn settle(t: &NatsTransport, expected: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let events = ready(t).await;
        if events >= expected || Instant::now() > deadline {
            assert_eq!(events, expected, "events in the log");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The first message seen on `_INBOX.>` that decodes to a reply `want`
/// accepts: a reply that went to an inbox, whoever was listening there.
async fn overheard(
    snoop: &mut async_nats::Subscriber,
    want: impl Fn(&Response) -> bool,
) -> Response {
    use futures::StreamExt;
    let find = async {
        while let Some(message) = snoop.next().await {
            let decoded = stepgate::nats::decode_response(&message.payload, false)
                .or_else(|_| stepgate::nats::decode_response(&message.payload, true));
            if let Ok(response) = decoded {
                if want(&response) {
                    return response;
                }
            }
        }
        panic!("the inbox subscription ended")
    };
    tokio::time::timeout(Duration::from_secs(20), find)
        .await
        .expect("the late reply was sent")
}

fn timed_out<T: std::fmt::Debug>(result: &Result<T, ClientError>) -> bool {
    matches!(result, Err(ClientError::Bus(BusError::Transport(m))) if m.contains("timed out"))
}

/// `stepgate audit timeline --json` of a data directory, one value per event.
fn audit_timeline(data: &Path) -> Vec<serde_json::Value> {
    serve::stepgate_ok(&["audit", "timeline", "--json", "--data"], data)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_that_arrives_after_its_request_timed_out_changes_nothing() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (dev, data) = (dir.path().join("dev"), dir.path().join("data"));
    dev_init(&dev);
    let mut engine = Engine::start(&nats.url(), &data, &dev);
    let patient = connect(&nats.url()).await;
    let base = ready(&patient).await;
    // The client under test gives up after one second.
    let impatient = NatsTransport::connect(&nats.url(), Duration::from_secs(1))
        .await
        .unwrap();
    let dana = dev_svid(&dev, DANA);
    let key = RequestId::parse("release-2026-12-04.try-1").unwrap();
    let starter = Client::new(impatient.clone());
    // Overhear every reply, to see the late ones go to dead inboxes.
    let mut snoop = patient.client().subscribe("_INBOX.>").await.unwrap();
    patient.client().flush().await.unwrap();

    // run.start while the engine is stopped: the client times out; the
    // engine, resumed, starts the run and answers a dead inbox.
    let lost = {
        let _stopped = Stopped::new(engine.pid());
        starter.start_run_keyed(&dana, &release_text(), &key).await
    };
    assert!(timed_out(&lost), "{lost:?}");
    // run_started, batch_opened, step_ready.
    settle(&patient, base + 3).await;
    let late_start = overheard(&mut snoop, |r| matches!(r, Response::RunStarted(_))).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // it reached the client too

    // The client's next, unrelated request gets its own answer.
    match impatient.call(Request::Health {}).await.unwrap() {
        Response::Health { events, .. } => assert_eq!(events, base + 3),
        other => panic!("a stale reply was taken for health's answer: {other:?}"),
    }
    // The retry answers the run the lost request started; nothing is added.
    let started = starter
        .start_run_keyed(&dana, &release_text(), &key)
        .await
        .unwrap();
    let view = Client::new(patient.clone()).run(started.run).await.unwrap();
    assert_eq!(started.batches, view.batches);
    assert_eq!(started.batches.len(), 1);
    assert_eq!(started.ready, vec!["unit-tests".to_string()]);
    settle(&patient, base + 3).await;
    assert_eq!(late_start, Response::RunStarted(started.clone()));
    let run = started.run;

    // step.token, lost the same way.
    let ci = AgentClient::new(impatient.clone(), dev_svid(&dev, CI));
    let scopes = ["ci:tests:run".to_string()];
    let lost = {
        let _stopped = Stopped::new(engine.pid());
        ci.request_token(run, "unit-tests", &scopes, None).await
    };
    assert!(timed_out(&lost), "{lost:?}");
    // token_requested, decided, token_issued.
    settle(&patient, base + 6).await;
    let late_token = overheard(&mut snoop, |r| matches!(r, Response::Token(_))).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let jwks = Client::new(impatient.clone()).jwks().await.unwrap();
    assert_eq!(
        jwks.keys.len(),
        1,
        "the next request got the jwks, not a token"
    );

    // The retry gets the token that was issued, and a redelivery is logged.
    let TokenReply::Issued { token, jti, .. } = ci
        .request_token(run, "unit-tests", &scopes, None)
        .await
        .unwrap()
    else {
        panic!("the retry got no token")
    };
    settle(&patient, base + 7).await;
    let Response::Token(TokenReply::Issued {
        token: lost_token,
        jti: lost_jti,
        ..
    }) = late_token
    else {
        panic!("the late reply carried no token: {late_token:?}")
    };
    assert_eq!(token.as_bytes(), lost_token.as_bytes(), "byte for byte");
    assert_eq!(jti, lost_jti);
    let status = Client::new(patient.clone())
        .introspect(&token)
        .await
        .unwrap();
    assert!(status.active);
    assert_eq!(status.jti, Some(jti.to_string()));

    // The log, read offline after a clean stop.
    assert_eq!(engine.sigterm(), Some(0));
    let timeline = audit_timeline(&data);
    assert_eq!(timeline.len() as u64, base + 7);
    let of = |kind: &str| -> Vec<&serde_json::Value> {
        timeline
            .iter()
            .filter(|l| l["kind"] == kind)
            .map(|l| &l["event"])
            .collect()
    };
    let runs = of("run_started");
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["run"], run.to_string());
    assert_eq!(runs[0]["request_id"], key.as_str());
    let issued = of("token_issued");
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0]["step"], "unit-tests");
    assert_eq!(issued[0]["jti"], jti.to_string());
    // Byte for byte the token that was issued and never seen.
    assert_eq!(issued[0]["digest"], stepgate::policy::sha256_text(&token));
    let redelivered = of("token_redelivered");
    assert_eq!(redelivered.len(), 1);
    assert_eq!(redelivered[0]["jti"], jti.to_string());
    assert_eq!(redelivered[0]["agent"], CI);

    let out = Command::new(env!("CARGO_BIN_EXE_stepgate"))
        .args(["audit", "verify", "--json", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let verified: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(verified["ok"], true);
    assert_eq!(verified["report"]["findings"], serde_json::json!([]));
    assert_eq!(verified["report"]["tokens"], 1);
    assert_eq!(verified["report"]["runs"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_start_repeated_with_a_request_id_from_the_cli_starts_one_run() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("dev");
    dev_init(&dev);
    let _engine = Engine::start(&nats.url(), &dir.path().join("data"), &dev);
    let t = connect(&nats.url()).await;
    let base = ready(&t).await;
    let svid_file = dir.path().join("dana.svid");
    std::fs::write(&svid_file, dev_svid(&dev, DANA)).unwrap();
    let run_start = |request_id: &str| {
        Command::new(env!("CARGO_BIN_EXE_stepgate"))
            .args(["run", "start", "--json", "--request-id", request_id])
            .arg(example("release").join("workflow.yaml"))
            .args(["--nats", &nats.url(), "--svid-file"])
            .arg(&svid_file)
            .output()
            .unwrap()
    };

    let runs: Vec<serde_json::Value> = (0..2)
        .map(|_| {
            let out = run_start("nightly-2026-12-04");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            serde_json::from_slice(&out.stdout).unwrap()
        })
        .collect();
    assert_eq!(runs[0], runs[1]);
    // run_started, batch_opened, step_ready: once.
    assert_eq!(ready(&t).await, base + 3);

    let bad = run_start("nightly 2026");
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("`request_id` contains ' ' at position 7"),
        "{stderr}"
    );
    assert_eq!(ready(&t).await, base + 3);
}
