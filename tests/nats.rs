//! The engine on a real nats-server that each test starts on a free
//! loopback port with its own JetStream store: request-reply, bad payloads,
//! a NATS restart while a batch is pending, and an engine killed with
//! SIGKILL and restarted.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers stop at the first surprise"
)]

mod common;
#[path = "common/nats.rs"]
mod nats_server;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use nats_server::NatsServer;
use stepgate::bus::{Request, Response, Transport};
use stepgate::client::{AgentClient, Client, ReviewerClient};
use stepgate::engine::{DecisionReply, TokenReply};
use stepgate::nats::NatsTransport;

/// `stepgate serve` as a child process; killed on drop.
struct Engine {
    child: Option<Child>,
    args: Vec<String>,
}

impl Engine {
    fn start(nats: &str, data: &Path, dev: &Path) -> Self {
        let args = vec![
            "serve".into(),
            "--nats".into(),
            nats.into(),
            "--data".into(),
            data.display().to_string(),
            "--policy".into(),
            example("release")
                .join("policy.cedar")
                .display()
                .to_string(),
            "--trust-bundle".into(),
            dev.join("bundle.json").display().to_string(),
            "--reviewers".into(),
            example("release")
                .join("reviewers.yaml")
                .display()
                .to_string(),
        ];
        let mut engine = Self { child: None, args };
        engine.spawn();
        engine
    }

    fn spawn(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_stepgate"))
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn sigkill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap(); // SIGKILL on Unix
            c.wait().unwrap();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.sigkill();
    }
}

fn dev_svid(dev: &Path, who: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_stepgate"))
        .args(["dev", "svid", who, "--dir"])
        .arg(dev)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn dev_init(dir: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_stepgate"))
        .args(["dev", "init", "--dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn connect(url: &str) -> NatsTransport {
    NatsTransport::connect(url, Duration::from_secs(5))
        .await
        .unwrap()
}

/// Waits until the engine answers health.
async fn ready(t: &NatsTransport) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Response::Health { events, .. }) = t.call(Request::Health {}).await {
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
            let (h, b) = json(r#"{"run": "00000000-0000-0000-0000-000000000001"}"#);
            ("stepgate.v1.run.status", h, b, "unknown_run")
        },
        {
            let (h, b) = json("{}");
            ("stepgate.v1.no.such.subject", h, b, "unknown_subject")
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
    let pending = reviewer.pending().await.unwrap();
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
        reviewer.pending().await.unwrap().len(),
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

    let mut child = engine.child.take().unwrap();
    let pid = child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(code) = child.try_wait().unwrap() {
            break code;
        }
        assert!(
            Instant::now() < deadline,
            "the engine did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code.code(), Some(0));

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
