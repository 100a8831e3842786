//! How many step cycles the embedded engine completes per second:
//! `cargo bench --bench token_path`.
//!
//! One cycle is what an agent pipeline does for its first step: start a
//! run of the release example, ask for the `unit-tests` token (identity
//! check, Cedar decision, Ed25519 signature) and complete the step (the
//! token is revoked). That is three requests, each answered only after its
//! events are flushed to sled, on a real database in a temporary
//! directory. With 1 agent every request waits for its own flush; with 16
//! agents at once, group commit shares flushes between them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a bench stops at the first surprise"
)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use stepgate::bus::InProcess;
use stepgate::client::{AgentClient, Client};
use stepgate::clock::{Clock, SystemClock};
use stepgate::engine::{Config, TokenReply};
use stepgate::identity::DevTrustDomain;
use stepgate::policy::PolicySet;
use stepgate::review::Reviewers;
use stepgate::service::{self, Settings};
use stepgate::spiffe::SpiffeId;
use stepgate::store::Store;
use stepgate::workflow::Workflow;

const AGENTS: [usize; 2] = [1, 16];
const DANA: &str = "spiffe://dev.stepgate.local/human/dana";
const CI: &str = "spiffe://dev.stepgate.local/agent/ci-runner";

fn release(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples/release")
        .join(file)
}

struct Bench {
    transport: InProcess,
    workflow: String,
    requester: String,
    agent: String,
}

async fn boot(dir: &std::path::Path) -> Bench {
    let domain = DevTrustDomain::generate("dev.stepgate.local", &mut rand_core::OsRng).unwrap();
    let workflow = Workflow::load(&release("workflow.yaml")).unwrap();
    let actions = workflow.steps().iter().map(|s| s.action.as_str());
    let settings = Settings {
        policy: PolicySet::load(&release("policy.cedar"), actions).unwrap(),
        trust: domain.bundle(),
        reviewers: Reviewers::load(&release("reviewers.yaml")).unwrap(),
        engine: Config::default(),
        tick: Duration::from_secs(1),
    };
    let handle = service::start(Store::open(dir).unwrap(), settings, Arc::new(SystemClock))
        .await
        .unwrap();
    let now = SystemClock.now() / 1000;
    let svid = |who: &str| {
        let id = SpiffeId::parse(who).unwrap();
        domain.mint_svid(&id, "stepgate", now, 3600).unwrap()
    };
    Bench {
        transport: InProcess::new(handle),
        workflow: std::fs::read_to_string(release("workflow.yaml")).unwrap(),
        requester: svid(DANA),
        agent: svid(CI),
    }
}

async fn cycle(bench: &Bench) {
    let client = Client::new(bench.transport.clone());
    let run = client
        .start_run(&bench.requester, &bench.workflow)
        .await
        .unwrap()
        .run;
    let agent = AgentClient::new(bench.transport.clone(), bench.agent.clone());
    let scopes = ["ci:tests:run".to_string()];
    let reply = agent
        .request_token(run, "unit-tests", &scopes, None)
        .await
        .unwrap();
    assert!(matches!(reply, TokenReply::Issued { .. }), "{reply:?}");
    agent.complete(run, "unit-tests", "done").await.unwrap();
}

/// Runs `cycles` cycles spread over `agents` concurrent tasks.
async fn run_cycles(bench: &Arc<Bench>, cycles: u64, agents: usize) -> Duration {
    let agents = agents as u64;
    let start = Instant::now();
    let tasks: Vec<_> = (0..agents)
        .map(|i| {
            let bench = bench.clone();
            let mine = cycles / agents + u64::from(i < cycles % agents);
            tokio::spawn(async move {
                for _ in 0..mine {
                    cycle(&bench).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    start.elapsed()
}

fn token_path(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bench = Arc::new(runtime.block_on(boot(dir.path())));
    let mut group = c.benchmark_group("token_path");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(1));
    for agents in AGENTS {
        group.bench_with_input(BenchmarkId::new("agents", agents), &agents, |b, &n| {
            b.iter_custom(|cycles| runtime.block_on(run_cycles(&bench, cycles, n)))
        });
    }
    group.finish();
}

criterion_group!(benches, token_path);
criterion_main!(benches);
