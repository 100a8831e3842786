//! Two engines on one NATS account, each with its own data directory: a
//! request reaches the engine that owns its run or batch whichever engine
//! receives it; the JWKS holds both keys; an owner that is down is named in
//! the error; reviewers see every engine's batches.

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

use common::*;
use futures::StreamExt;
use nats_server::NatsServer;
use serve::{dev_init, dev_svid, Engine};
use stepgate::bus::{BusError, Request, Response, Transport};
use stepgate::client::{AgentClient, Client, ClientError, ReviewerClient};
use stepgate::engine::{DecisionReply, RunStatus, TokenReply};
use stepgate::nats::NatsTransport;
use uuid::Uuid;

const STEPS: &[(&str, &str, &str)] = &[
    ("unit-tests", "agent/ci-runner", "ci:tests:run"),
    (
        "build-image",
        "agent/builder",
        "registry:push:payments/payments-api",
    ),
    ("sign-image", "agent/signer", "signing:sign:release"),
    ("deploy-staging", "agent/deployer", "deploy:staging"),
    ("deploy-production", "agent/deployer", "deploy:production"),
    ("migrate-production-db", "agent/migrator", "db:migrate"),
    ("smoke-check", "agent/smoke-tester", "healthcheck:read"),
];

fn agent(dev: &Path, path: &str) -> String {
    dev_svid(dev, &format!("spiffe://{DOMAIN}/{path}"))
}

async fn connect(url: &str) -> NatsTransport {
    NatsTransport::connect(url, Duration::from_secs(10))
        .await
        .unwrap()
}

async fn start_run(t: &NatsTransport, dev: &Path) -> (Uuid, Vec<Uuid>) {
    let text = std::fs::read_to_string(example("release").join("workflow.yaml")).unwrap();
    let started = Client::new(t.clone())
        .start_run(&dev_svid(dev, DANA), &text)
        .await
        .unwrap();
    (started.run, started.batches)
}

/// Drives every step of a release run; approves its batch when asked.
/// Checks each token with introspection while it is live and after.
async fn drive(t: &NatsTransport, dev: &Path, run: Uuid) {
    let client = Client::new(t.clone());
    let reviewer = ReviewerClient::new(t.clone(), dev_svid(dev, RILEY));
    for (step, who, scope) in STEPS {
        let agent = AgentClient::new(t.clone(), agent(dev, who));
        let scopes = [scope.to_string()];
        let mut reply = agent.request_token(run, step, &scopes, None).await.unwrap();
        if let TokenReply::Pending { batch, .. } = reply {
            let shown = reviewer.batch(batch).await.unwrap();
            assert_eq!(shown.run, run);
            let decision = reviewer
                .decide(batch, &shown.binding, true, None)
                .await
                .unwrap();
            assert!(
                matches!(decision, DecisionReply::Applied { approved: true, .. }),
                "{decision:?}"
            );
            reply = agent.request_token(run, step, &scopes, None).await.unwrap();
        }
        let TokenReply::Issued { token, jti, .. } = reply else {
            panic!("{step}: {reply:?}");
        };
        let live = client.introspect(&token).await.unwrap();
        assert!(live.active, "{step}: token is live");
        assert_eq!(live.jti, Some(jti.to_string()));
        assert_eq!(live.run, Some(run.to_string()));
        agent.complete(run, step, "done").await.unwrap();
        assert!(!client.introspect(&token).await.unwrap().active);
    }
    assert_eq!(client.run(run).await.unwrap().status, RunStatus::Completed);
}

fn remote_code(result: Result<impl std::fmt::Debug, ClientError>) -> (String, String) {
    match result {
        Err(ClientError::Bus(BusError::Remote { code, message })) => (code, message),
        other => panic!("expected an error reply, got {other:?}"),
    }
}

/// A private nats-server, a temporary directory and a development trust
/// domain in it.
fn setup() -> (NatsServer, tempfile::TempDir, std::path::PathBuf) {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("dev");
    dev_init(&dev);
    (nats, dir, dev)
}

/// `cp -a FROM TO`: a copy of a data directory, as an operator makes one.
fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

/// The key id of whichever engine answers health.
async fn health_kid(t: &NatsTransport) -> String {
    match t.call(Request::Health {}).await.unwrap() {
        Response::Health { kid, .. } => kid,
        other => panic!("{other:?}"),
    }
}

async fn jwks_kids(t: &NatsTransport) -> Vec<String> {
    match t.call(Request::Jwks {}).await.unwrap() {
        Response::Jwks(jwks) => jwks.keys.into_iter().map(|k| k.kid).collect(),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_share_the_work_and_each_run_is_answered_by_its_owner() {
    let (nats, dir, dev) = setup();
    let t = connect(&nats.url()).await;

    // Run 1 starts while only engine A serves, so A owns it.
    let mut a = Engine::start(&nats.url(), &dir.path().join("a"), &dev);
    let (run_a, batches_a) = start_run(&t, &dev).await;
    assert_eq!(batches_a.len(), 1, "the release plan opens one batch");

    // Run 2 starts while only engine B serves, so B owns it.
    let mut b = Engine::start(&nats.url(), &dir.path().join("b"), &dev);
    assert_ne!(a.kid(), b.kid(), "each data directory has its own key");
    a.sigkill();
    let (run_b, batches_b) = start_run(&t, &dev).await;

    // With A down, B still knows run 1 is A's, and says so.
    let client = Client::new(t.clone());
    let (code, message) = remote_code(client.run(run_a).await);
    assert_eq!(code, "unavailable");
    assert_eq!(
        message,
        format!(
            "run {run_a} is served by engine `{}`, which is not connected",
            a.kid()
        )
    );
    // A was killed without a goodbye, so its record still looks live: the
    // list is B's batches only, and says A's are missing.
    let reviewer = ReviewerClient::new(t.clone(), dev_svid(&dev, RILEY));
    let pending = reviewer.pending().await.unwrap();
    assert_eq!(pending.unreachable, vec![a.kid().to_string()]);
    let listed: Vec<Uuid> = pending.batches.iter().map(|b| b.batch).collect();
    assert_eq!(listed, batches_b);
    // Tokens A signed stay verifiable: its key is still in the JWKS.
    assert_eq!(
        jwks_kids(&t).await,
        vec![b.kid().to_string(), a.kid().to_string()]
    );

    // Both serve: every request, wherever the queue group delivers it,
    // is answered by the run's owner.
    a.spawn();
    let pending = reviewer.pending().await.unwrap();
    assert!(pending.unreachable.is_empty(), "{pending:?}");
    let mut listed: Vec<Uuid> = pending.batches.iter().map(|b| b.batch).collect();
    listed.sort();
    let mut expected = [batches_a.clone(), batches_b.clone()].concat();
    expected.sort();
    assert_eq!(listed, expected);
    drive(&t, &dev, run_a).await;
    drive(&t, &dev, run_b).await;
    let view_a = client.run(run_a).await.unwrap();
    assert_eq!(view_a.batches, batches_a);

    // A stopped engine may still hold pending batches, so the list names
    // it as missing until it is back.
    assert_eq!(b.sigterm(), Some(0));
    let pending = reviewer.pending().await.unwrap();
    assert_eq!(pending.unreachable, vec![b.kid().to_string()]);
    assert!(pending.batches.is_empty(), "{pending:?}");
    let (code, _) = remote_code(client.run(run_b).await);
    assert_eq!(code, "unavailable");
    assert_eq!(
        client.run(run_a).await.unwrap().status,
        RunStatus::Completed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_forwarded_to_an_engine_is_answered_there_and_only_there() {
    let (nats, dir, dev) = setup();
    let t = connect(&nats.url()).await;
    let mut a = Engine::start(&nats.url(), &dir.path().join("a"), &dev);
    let mut b = Engine::start(&nats.url(), &dir.path().join("b"), &dev);
    let nc = t.client();

    // Health on each engine's own subject names that engine.
    for engine in [&a, &b] {
        let subject = format!("stepgate.v1.engine.{}.health", engine.kid());
        let reply = nc.request(subject, "{}".into()).await;
        // No Content-Type header: the request is msgpack, and `{}` is not.
        let reply = reply.unwrap();
        let response: Response = rmp_serde::from_slice(&reply.payload).unwrap();
        assert!(
            matches!(response, Response::Error { ref code, .. } if code == "bad_request"),
            "{response:?}"
        );
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Content-Type", "application/json");
        let reply = nc
            .request_with_headers(
                format!("stepgate.v1.engine.{}.health", engine.kid()),
                headers,
                "{}".into(),
            )
            .await
            .unwrap();
        let response: Response = serde_json::from_slice(&reply.payload).unwrap();
        match response {
            Response::Health { kid, ready, .. } => {
                assert_eq!(kid, engine.kid());
                assert!(ready);
            }
            other => panic!("{other:?}"),
        }
    }

    // An unknown route on an engine's subject is refused by that engine.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Content-Type", "application/json");
    let subject = format!("stepgate.v1.engine.{}.no.such", a.kid());
    let reply = nc
        .request_with_headers(subject.clone(), headers, "{}".into())
        .await
        .unwrap();
    let response: Response = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(
        response,
        Response::Error {
            code: "unknown_subject".into(),
            message: format!("no request is served on `{subject}`"),
        }
    );

    // A run is answered on its owner's subject and unknown on the other's:
    // a forwarded request is never forwarded again.
    let (run, _) = start_run(&t, &dev).await;
    let status = |kid: &str| {
        let nc = nc.clone();
        let subject = format!("stepgate.v1.engine.{kid}.run.status");
        async move {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Content-Type", "application/json");
            let body = serde_json::to_vec(&serde_json::json!({ "run": run })).unwrap();
            let reply = nc
                .request_with_headers(subject, headers, body.into())
                .await
                .unwrap();
            serde_json::from_slice::<Response>(&reply.payload).unwrap()
        }
    };
    let (on_a, on_b) = (status(a.kid()).await, status(b.kid()).await);
    let a_owns = matches!(on_a, Response::Run(_));
    let (owner, other) = match (&on_a, &on_b) {
        (Response::Run(_), Response::Error { .. }) => (on_a, on_b),
        (Response::Error { .. }, Response::Run(_)) => (on_b, on_a),
        _ => panic!("exactly one engine owns the run: {on_a:?} / {on_b:?}"),
    };
    assert!(matches!(owner, Response::Run(ref v) if v.run == run));
    assert!(matches!(other, Response::Error { ref code, .. } if code == "unknown_run"));

    // A garbled directory entry heals when the owner starts again.
    let owner = if a_owns { &mut a } else { &mut b };
    let js = async_nats::jetstream::new(nc.clone());
    let directory = js.get_key_value("STEPGATE_DIRECTORY").await.unwrap();
    let key = format!("run.{run}");
    directory.put(&key, "NOPE".into()).await.unwrap();
    assert_eq!(owner.sigterm(), Some(0));
    owner.spawn();
    let deadline = Instant::now() + Duration::from_secs(10);
    while directory.get(&key).await.unwrap().as_deref() != Some(owner.kid().as_bytes()) {
        assert!(Instant::now() < deadline, "the entry was not written again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = Client::new(t.clone());
    for _ in 0..8 {
        assert_eq!(client.run(run).await.unwrap().run, run);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_run_start_repeated_on_any_engine_starts_one_run() {
    let (nats, dir, dev) = setup();
    let t = connect(&nats.url()).await;
    let mut nats = nats;
    let a = Engine::start(&nats.url(), &dir.path().join("a"), &dev);
    let b = Engine::start(&nats.url(), &dir.path().join("b"), &dev);
    let text = std::fs::read_to_string(example("release").join("workflow.yaml")).unwrap();
    let client = Client::new(t.clone());
    let svid = dev_svid(&dev, DANA);
    let key = stepgate::request_id::RequestId::parse("release-2026-12-04").unwrap();

    // Whichever engine each repeat reaches, it is sent to the engine that
    // took the key first, which answers the same run.
    let first = client.start_run_keyed(&svid, &text, &key).await.unwrap();
    for _ in 0..12 {
        let again = client.start_run_keyed(&svid, &text, &key).await.unwrap();
        assert_eq!(again.run, first.run);
        assert_eq!(again.batches, first.batches);
    }
    let pending = ReviewerClient::new(t.clone(), dev_svid(&dev, RILEY))
        .pending()
        .await
        .unwrap();
    assert_eq!(pending.batches.len(), 1, "one run, so one batch");
    assert!(pending.unreachable.is_empty());

    // Sent to an engine's own subject, the start is answered by the engine
    // that took the key, and refused by the other.
    let body = serde_json::json!({"svid": svid, "workflow": text, "request_id": key.as_str()});
    let mut answers = vec![];
    for engine in [&a, &b] {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Content-Type", "application/json");
        let reply = t
            .client()
            .request_with_headers(
                format!("stepgate.v1.engine.{}.run.start", engine.kid()),
                headers,
                serde_json::to_vec(&body).unwrap().into(),
            )
            .await
            .unwrap();
        answers.push(serde_json::from_slice::<Response>(&reply.payload).unwrap());
    }
    let started: Vec<_> = answers
        .iter()
        .filter_map(|r| match r {
            Response::RunStarted(s) => Some(s.run),
            _ => None,
        })
        .collect();
    assert_eq!(started, vec![first.run], "{answers:?}");
    assert!(
        answers
            .iter()
            .any(|r| matches!(r, Response::Error { code, .. } if code == "conflict")),
        "{answers:?}"
    );

    // NATS comes back with an empty store: the engines write their
    // entries again, and the repeat still finds the first run.
    nats.restart_empty();
    let js = async_nats::jetstream::new(t.client().clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    for engine in [&a, &b] {
        let mark = format!("engine.{}", engine.kid());
        loop {
            let written = match js.get_key_value("STEPGATE_REQUESTS").await {
                Ok(bucket) => matches!(bucket.get(&mark).await, Ok(Some(_))),
                Err(_) => false,
            };
            if written {
                break;
            }
            assert!(Instant::now() < deadline, "entries were not written again");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for _ in 0..12 {
        let again = client.start_run_keyed(&svid, &text, &key).await.unwrap();
        assert_eq!(again.run, first.run);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_whose_key_a_copy_took_over_while_it_hung_stops() {
    let (nats, dir, dev) = setup();
    let mut original = Engine::start(&nats.url(), &dir.path().join("a"), &dev);
    assert_eq!(original.sigterm(), Some(0));
    copy_dir(&dir.path().join("a"), &dir.path().join("copy"));
    original.spawn();

    // The original hangs long enough for the copy to pass its start check.
    let hung = serve::Stopped::new(original.pid());
    let copy = Engine::start(&nats.url(), &dir.path().join("copy"), &dev);
    assert_eq!(copy.kid(), original.kid());

    // Both listen on the key's own subject. A health request sent there
    // now is answered at once by the copy; the original, once woken, has
    // not confirmed its key for longer than its lease, so it answers (if
    // at all) not ready, and serves nothing.
    let t = connect(&nats.url()).await;
    let nc = t.client().clone();
    let inbox = nc.new_inbox();
    let mut replies = nc.subscribe(inbox.clone()).await.unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Content-Type", "application/json");
    nc.publish_with_reply_and_headers(
        format!("stepgate.v1.engine.{}.health", copy.kid()),
        inbox,
        headers,
        "{}".into(),
    )
    .await
    .unwrap();
    nc.flush().await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), replies.next())
        .await
        .unwrap()
        .unwrap();
    let first: Response = serde_json::from_slice(&first.payload).unwrap();
    assert!(
        matches!(first, Response::Health { ready: true, .. }),
        "{first:?}"
    );
    drop(hung);
    while let Ok(Some(late)) = tokio::time::timeout(Duration::from_secs(3), replies.next()).await {
        let late: Response = serde_json::from_slice(&late.payload).unwrap();
        assert!(
            matches!(late, Response::Health { ready: false, .. }),
            "{late:?}"
        );
    }

    // Its next heartbeat finds the record written by the copy: it stops.
    let mut child = original.child.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        assert!(Instant::now() < deadline, "the original kept serving");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(code, Some(3));
    assert_eq!(health_kid(&t).await, copy.kid());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_of_a_served_data_directory_is_refused() {
    let (nats, dir, dev) = setup();
    let mut a = Engine::start(&nats.url(), &dir.path().join("a"), &dev);
    // A copy taken while A is stopped, then both served.
    assert_eq!(a.sigterm(), Some(0));
    let copy = dir.path().join("copy");
    copy_dir(&dir.path().join("a"), &copy);
    a.spawn();
    // The record says A serves and A keeps refreshing it: the copy exits.
    let release = example("release");
    let out = Command::new(env!("CARGO_BIN_EXE_stepgate"))
        .args(["serve", "--nats", &nats.url(), "--data"])
        .arg(&copy)
        .arg("--policy")
        .arg(release.join("policy.cedar"))
        .arg("--trust-bundle")
        .arg(dev.join("bundle.json"))
        .arg("--reviewers")
        .arg(release.join("reviewers.yaml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "another engine is serving with this data directory's key `{}`",
            a.kid()
        )),
        "{stderr}"
    );
    // A is untouched.
    let t = connect(&nats.url()).await;
    assert_eq!(health_kid(&t).await, a.kid());
}
