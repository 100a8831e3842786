//! The Python examples against a real engine on a real `nats-server`.
//!
//! Starts a private `nats-server -js`, a development trust domain, and
//! `stepgate serve` on the release example; starts a run as dana over the
//! CLI, drives the four pre-production steps with [`AgentClient`] over
//! NATS, lets `examples/python/reviewer.py` approve the production batch as
//! riley, and checks the production token with
//! `examples/python/resource_server.py` before and after its step
//! completes. The Python packages come from `examples/python/requirements.txt`,
//! installed once into a virtualenv under `target/py-venv`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking; the crate-wide lints guard library code"
)]

#[path = "common/nats.rs"]
mod nats;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use uuid::Uuid;

use stepgate::client::{AgentClient, Client};
use stepgate::engine::TokenReply;
use stepgate::nats::NatsTransport;

use nats::NatsServer;

const DOMAIN: &str = "dev.stepgate.local";
const DANA: &str = "spiffe://dev.stepgate.local/human/dana";
const RILEY: &str = "spiffe://dev.stepgate.local/human/riley";
const DEPLOYER: &str = "spiffe://dev.stepgate.local/agent/deployer";
const PROD: &str = "https://deploy.prod.acme.internal";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn release(file: &str) -> PathBuf {
    root().join("examples/release").join(file)
}

fn stepgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_stepgate"))
}

/// A child process killed and reaped on drop, so nothing outlives a
/// failing test.
struct Kid {
    child: Child,
}

impl Drop for Kid {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Runs `cmd` to completion within `limit` (killed past it), capturing its
/// output through files so a chatty child cannot block on a full pipe.
fn run(mut cmd: Command, limit: Duration, scratch: &Path, label: &str) -> Output {
    let out_path = scratch.join(format!("{label}.stdout"));
    let err_path = scratch.join(format!("{label}.stderr"));
    cmd.stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).unwrap())
        .stderr(fs::File::create(&err_path).unwrap());
    let mut kid = Kid {
        child: cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {label}: {e}")),
    };
    let until = Instant::now() + limit;
    let status = loop {
        if let Some(status) = kid.child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > until {
            let _ = kid.child.kill();
            let _ = kid.child.wait();
            panic!(
                "{label} did not finish within {limit:?}\nstdout:\n{}\nstderr:\n{}",
                fs::read_to_string(&out_path).unwrap_or_default(),
                fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: fs::read(&out_path).unwrap(),
        stderr: fs::read(&err_path).unwrap(),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[track_caller]
fn ok(output: Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// A virtualenv with `examples/python/requirements.txt` installed; reused
/// while the requirements stay the same.
fn venv(scratch: &Path) -> PathBuf {
    let requirements = root().join("examples/python/requirements.txt");
    let wanted = fs::read_to_string(&requirements).unwrap();
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let dir = target.join("py-venv");
    let python = dir.join("bin/python");
    let stamp = dir.join("stepgate-requirements.txt");
    if python.exists() && fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return python;
    }
    let _ = fs::remove_dir_all(&dir);
    let host_python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let mut cmd = Command::new(&host_python);
    cmd.args(["-m", "venv"]).arg(&dir);
    ok(
        run(cmd, Duration::from_secs(120), scratch, "venv"),
        "python3 -m venv",
    );
    let mut cmd = Command::new(&python);
    cmd.args(["-m", "pip", "install", "--disable-pip-version-check", "-r"])
        .arg(&requirements);
    ok(
        run(cmd, Duration::from_secs(600), scratch, "pip"),
        "pip install -r examples/python/requirements.txt",
    );
    fs::write(&stamp, wanted).unwrap();
    python
}

/// A JWT-SVID for `who` from the development trust domain in `dev`.
fn svid(dev: &Path, who: &str, scratch: &Path) -> String {
    let mut cmd = stepgate();
    cmd.args(["dev", "svid", who, "--dir"])
        .arg(dev)
        .args(["--ttl", "900"]);
    let out = ok(
        run(cmd, Duration::from_secs(30), scratch, "svid"),
        "stepgate dev svid",
    );
    out.trim().to_string()
}

struct Python {
    python: PathBuf,
    nats: String,
    scratch: PathBuf,
}

impl Python {
    fn script(&self, name: &str, args: &[&str], label: &str) -> Output {
        let mut cmd = Command::new(&self.python);
        cmd.arg(root().join("examples/python").join(name))
            .arg("--nats")
            .arg(&self.nats)
            .args(args)
            .env_remove("STEPGATE_SVID")
            .env("PYTHONUNBUFFERED", "1");
        run(cmd, Duration::from_secs(90), &self.scratch, label)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_reviewer_and_resource_server_against_a_real_engine() {
    let scratch = tempfile::tempdir().unwrap();
    let scratch = scratch.path().to_path_buf();
    let python = tokio::task::spawn_blocking({
        let scratch = scratch.clone();
        move || venv(&scratch)
    })
    .await
    .unwrap();

    let server = NatsServer::start();
    let url = server.url();

    // A development trust domain and the engine.
    let dev = scratch.join("dev");
    let mut cmd = stepgate();
    cmd.args(["dev", "init", "--dir"])
        .arg(&dev)
        .args(["--trust-domain", DOMAIN]);
    ok(
        run(cmd, Duration::from_secs(30), &scratch, "dev-init"),
        "stepgate dev init",
    );
    let bundle = dev.join("bundle.json");
    assert!(bundle.exists(), "dev init writes bundle.json");

    let serve_log = scratch.join("serve.log");
    let serve = Kid {
        child: stepgate()
            .arg("serve")
            .args(["--nats", &url, "--data"])
            .arg(scratch.join("data"))
            .arg("--policy")
            .arg(release("policy.cedar"))
            .arg("--trust-bundle")
            .arg(&bundle)
            .arg("--reviewers")
            .arg(release("reviewers.yaml"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&serve_log).unwrap())
            .spawn()
            .expect("start stepgate serve"),
    };

    let transport = NatsTransport::connect(&url, Duration::from_secs(10))
        .await
        .expect("connect to NATS");
    let client = Client::new(transport.clone());
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        match client.jwks().await {
            Ok(jwks) if !jwks.keys.is_empty() => break,
            other => {
                assert!(
                    Instant::now() < until,
                    "stepgate serve did not answer on {url}: {other:?}\n{}",
                    fs::read_to_string(&serve_log).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    // dana starts a run through the CLI.
    let svid_of = |who: &str| {
        let (dev, scratch) = (dev.clone(), scratch.clone());
        let who = who.to_string();
        async move {
            tokio::task::spawn_blocking(move || svid(&dev, &who, &scratch))
                .await
                .unwrap()
        }
    };
    let dana = scratch.join("dana.svid");
    fs::write(&dana, svid_of(DANA).await).unwrap();
    let mut cmd = stepgate();
    cmd.args(["run", "start"])
        .arg(release("workflow.yaml"))
        .args(["--nats", &url, "--svid-file"])
        .arg(&dana)
        .arg("--json");
    let started = tokio::task::spawn_blocking({
        let scratch = scratch.clone();
        move || {
            ok(
                run(cmd, Duration::from_secs(30), &scratch, "run-start"),
                "stepgate run start",
            )
        }
    })
    .await
    .unwrap();
    let started: Value = serde_json::from_str(started.trim()).expect("run start prints JSON");
    let run_id: Uuid = started["run"].as_str().unwrap().parse().unwrap();
    let batches = started["batches"].as_array().unwrap();
    assert_eq!(batches.len(), 1, "one batch for the two production steps");
    let batch: Uuid = batches[0].as_str().unwrap().parse().unwrap();
    assert_eq!(started["ready"], serde_json::json!(["unit-tests"]));

    // The four pre-production steps need no review.
    for (step, agent, scope) in [
        (
            "unit-tests",
            "spiffe://dev.stepgate.local/agent/ci-runner",
            "ci:tests:run",
        ),
        (
            "build-image",
            "spiffe://dev.stepgate.local/agent/builder",
            "registry:push:payments/payments-api",
        ),
        (
            "sign-image",
            "spiffe://dev.stepgate.local/agent/signer",
            "signing:sign:release",
        ),
        ("deploy-staging", DEPLOYER, "deploy:staging"),
    ] {
        let agent = AgentClient::new(transport.clone(), svid_of(agent).await);
        let reply = agent
            .request_token(run_id, step, &[scope.to_string()], None)
            .await
            .unwrap();
        match reply {
            TokenReply::Issued {
                scopes, approval, ..
            } => {
                assert_eq!(scopes, vec![scope.to_string()], "{step}");
                assert_eq!(approval, None, "{step} needs no review");
            }
            other => panic!("{step}: expected a token, got {other:?}"),
        }
        agent.complete(run_id, step, "done").await.unwrap();
    }

    // Production waits for review.
    let deployer = AgentClient::new(transport.clone(), svid_of(DEPLOYER).await);
    let production = ["deploy:production".to_string()];
    let reply = deployer
        .request_token(run_id, "deploy-production", &production, None)
        .await
        .unwrap();
    assert_eq!(
        reply,
        TokenReply::Pending {
            batch,
            group: "release-managers".into(),
        }
    );

    // riley approves with the Python reviewer.
    let py = Python {
        python,
        nats: url.clone(),
        scratch: scratch.clone(),
    };
    let riley = scratch.join("riley.svid");
    fs::write(&riley, svid_of(RILEY).await).unwrap();
    let reviewed = tokio::task::spawn_blocking({
        let riley = riley.display().to_string();
        move || {
            let out = py.script(
                "reviewer.py",
                &[
                    "--once",
                    "--approve",
                    "--svid-file",
                    &riley,
                    "--timeout",
                    "60",
                    "--consumer",
                    "py-reviewer-test",
                    "--comment",
                    "approved by the Python example",
                ],
                "reviewer",
            );
            (py, out)
        }
    })
    .await
    .unwrap();
    let (py, out) = reviewed;
    let printed = ok(out, "reviewer.py --once --approve");
    assert!(
        printed.contains(&format!("batch {batch} opened")),
        "{printed}"
    );
    assert!(printed.contains("deploy-production"), "{printed}");
    assert!(printed.contains("\"status\": \"applied\""), "{printed}");

    // Now the deployer gets its token, naming the approving batch.
    let token = match deployer
        .request_token(run_id, "deploy-production", &production, None)
        .await
        .unwrap()
    {
        TokenReply::Issued {
            token,
            scopes,
            approval,
            ..
        } => {
            assert_eq!(approval, Some(batch));
            assert_eq!(scopes, production.to_vec());
            token
        }
        other => panic!("expected the production token, got {other:?}"),
    };
    let token_file = scratch.join("prod.jwt");
    fs::write(&token_file, &token).unwrap();
    let token_arg = token_file.display().to_string();

    // The resource server accepts it for deploy:production ...
    let (py, accepted, wrong_scope) = tokio::task::spawn_blocking({
        let token_arg = token_arg.clone();
        move || {
            let accepted = py.script(
                "resource_server.py",
                &[
                    "--aud",
                    PROD,
                    "--scope",
                    "deploy:production",
                    "--token-file",
                    &token_arg,
                ],
                "rs-accept",
            );
            let wrong_scope = py.script(
                "resource_server.py",
                &[
                    "--aud",
                    PROD,
                    "--scope",
                    "deploy:staging",
                    "--token-file",
                    &token_arg,
                ],
                "rs-scope",
            );
            (py, accepted, wrong_scope)
        }
    })
    .await
    .unwrap();
    let claims: Value = serde_json::from_str(&ok(accepted, "resource_server.py (live token)"))
        .expect("claims as JSON");
    assert_eq!(claims["sub"], DEPLOYER);
    assert_eq!(claims["aud"], PROD);
    assert_eq!(claims["iss"], "stepgate");
    assert_eq!(claims["scope"], "deploy:production");
    assert_eq!(claims["step"], "deploy-production");
    assert_eq!(claims["run"], run_id.to_string());
    assert_eq!(claims["approval"], batch.to_string());
    // ... but not for a scope it does not carry.
    assert_eq!(wrong_scope.status.code(), Some(1), "{wrong_scope:?}");
    let reason = text(&wrong_scope.stderr);
    assert!(
        reason.contains("scope deploy:staging not granted"),
        "{reason}"
    );

    // Completing the step revokes the token; the resource server refuses it.
    let done = deployer
        .complete(run_id, "deploy-production", "rolled out")
        .await
        .unwrap();
    assert_eq!(done.revoked.len(), 1);
    let refused = tokio::task::spawn_blocking(move || {
        py.script(
            "resource_server.py",
            &[
                "--aud",
                PROD,
                "--scope",
                "deploy:production",
                "--token-file",
                &token_arg,
            ],
            "rs-revoked",
        )
    })
    .await
    .unwrap();
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let reason = text(&refused.stderr);
    assert_eq!(reason.lines().count(), 1, "one line: {reason}");
    assert!(reason.contains("token is not active"), "{reason}");
    assert!(refused.stdout.is_empty());

    drop(serve);
    drop(server);
}
