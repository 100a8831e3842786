//! Demo: one command that plays a whole pipeline on the embedded default.
//!
//! It starts the service on the in-process transport with sled in a data
//! directory, mints JWT-SVIDs for the requester, each agent and the
//! reviewer from a local development trust domain (whose key is kept in
//! the data directory, and whose bundle is the only one the engine
//! trusts), and then plays each step: the agent asks for its token, a
//! review batch is shown to the reviewer when policy asks for one, the
//! token is presented to a small tool that checks it like a resource
//! server would, the step completes and its token is revoked — and the
//! same token, replayed after the step, is refused. The run ends with an
//! offline verification of the audit chain.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use uuid::Uuid;

use crate::audit;
use crate::bus::{InProcess, Transport};
use crate::client::{await_batch, AgentClient, Client, ReviewerClient};
use crate::clock::{Clock, SystemClock};
use crate::engine::{Config, DecisionReply, RunStatus, TokenReply};
use crate::guard::Guard;
use crate::identity::DevTrustDomain;
use crate::out::OutputError;
use crate::outln;
use crate::policy::PolicySet;
use crate::review::Reviewers;
use crate::service::{self, BatchView, Settings};
use crate::spiffe::SpiffeId;
use crate::store::Store;
use crate::workflow::Workflow;

/// Name of the development trust domain key in the store.
pub const DEV_TRUST_DOMAIN_KEY: &str = "dev-trust-domain";

/// How the demo's reviewer decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewMode {
    /// Ask on the terminal.
    Prompt,
    /// Approve every batch.
    Approve,
    /// Deny every batch.
    Deny,
}

/// Demo options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Example directory with workflow.yaml, policy.cedar, reviewers.yaml.
    pub example: PathBuf,
    /// Data directory.
    pub data: PathBuf,
    /// How batches are decided.
    pub review: ReviewMode,
    /// Reviewer identity; default the first member of the batch's group.
    pub reviewer: Option<SpiffeId>,
    /// Serve the engine on this NATS server and drive the run over NATS.
    pub nats: Option<String>,
}

/// What the demo ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Run id.
    pub run: Uuid,
    /// Final run status.
    pub status: RunStatus,
    /// Events in the log after the run.
    pub events: u64,
    /// Audit findings (empty when clean).
    pub findings: Vec<String>,
}

struct Example {
    workflow: Workflow,
    workflow_text: String,
    policy: PolicySet,
    reviewers: Reviewers,
}

fn load_example(dir: &Path) -> anyhow::Result<Example> {
    let wf_path = dir.join("workflow.yaml");
    let workflow = Workflow::load(&wf_path)?;
    let workflow_text = std::fs::read_to_string(&wf_path)
        .with_context(|| format!("{}: cannot read", wf_path.display()))?;
    let policy = PolicySet::load(
        &dir.join("policy.cedar"),
        workflow.steps().iter().map(|s| s.action.as_str()),
    )?;
    let reviewers = Reviewers::load(&dir.join("reviewers.yaml"))?;
    Ok(Example {
        workflow,
        workflow_text,
        policy,
        reviewers,
    })
}

fn dev_trust_domain(store: &Store, name: &str) -> anyhow::Result<DevTrustDomain> {
    let stored_name = format!("{DEV_TRUST_DOMAIN_KEY}:{name}");
    if let Some(der) = store.key(&stored_name)? {
        return Ok(DevTrustDomain::from_pkcs8_der(name, &der)?);
    }
    let td = DevTrustDomain::generate(name, &mut rand_core::OsRng)?;
    store.put_key(&stored_name, &td.to_pkcs8_der()?)?;
    Ok(td)
}

struct Players {
    td: DevTrustDomain,
    clock: Arc<dyn Clock>,
    audience: String,
}

impl Players {
    fn svid(&self, id: &SpiffeId) -> anyhow::Result<String> {
        let now = self.clock.now() / 1000;
        Ok(self.td.mint_svid(id, &self.audience, now, 300)?)
    }
}

/// Runs the demo and prints its timeline to stdout.
pub async fn run(opts: Options) -> anyhow::Result<Outcome> {
    if opts.review == ReviewMode::Prompt && !std::io::stdin().is_terminal() {
        bail!("stdin is not a terminal, so nobody can answer a review prompt; pass --approve or --deny");
    }
    let example = load_example(&opts.example)?;
    let requester = example
        .reviewers
        .requester()
        .cloned()
        .context("reviewers.yaml names no `requester` to start the demo run")?;
    let domain = requester.trust_domain().to_string();
    for step in example.workflow.steps() {
        if step.agent.trust_domain() != domain {
            bail!(
                "step `{}`: agent `{}` is outside the demo trust domain `{domain}`",
                step.id,
                step.agent
            );
        }
    }

    std::fs::create_dir_all(&opts.data)
        .with_context(|| format!("{}: cannot create data directory", opts.data.display()))?;
    let store = Store::open(&opts.data)?;
    let td = dev_trust_domain(&store, &domain)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let config = Config::default();
    let settings = Settings {
        policy: example.policy.clone(),
        trust: td.bundle(),
        reviewers: example.reviewers.clone(),
        engine: config.clone(),
        tick: Duration::from_millis(500),
    };
    let players = Players {
        td,
        clock: clock.clone(),
        audience: config.svid_audience.clone(),
    };
    let handle = service::start(store, settings, clock.clone()).await?;
    // Shut the service down however the run ends, also when stdout closes.
    let result = serve_and_play(&example, &opts, &players, &handle, &requester, &config).await;
    handle.shutdown().await;
    let (run, status) = result?;

    let report = audit::verify(&opts.data)?;
    outln!()?;
    outln!(
        "audit  chain of {} events verified; head {}",
        report.events,
        report.head
    )?;
    if report.findings.is_empty() {
        outln!("audit  every elevated token carries an approval of its own step")?;
    }
    for f in &report.findings {
        outln!("audit  FINDING: {f}")?;
    }
    outln!(
        "       replay offline: stepgate audit timeline --data {} --run {run}",
        opts.data.display()
    )?;
    Ok(Outcome {
        run,
        status,
        events: report.events,
        findings: report.findings,
    })
}

/// Prints the header, then plays the run on the in-process transport or,
/// with `--nats`, serves the engine there and plays over NATS.
async fn serve_and_play(
    example: &Example,
    opts: &Options,
    players: &Players,
    handle: &service::Handle,
    requester: &SpiffeId,
    config: &Config,
) -> anyhow::Result<(Uuid, RunStatus)> {
    print_header(example, opts, handle.kid())?;
    match &opts.nats {
        None => {
            let transport = InProcess::new(handle.clone());
            drive(example, opts, players, &transport, requester, config).await
        }
        Some(url) => {
            // The engine serves on NATS; every agent and reviewer of the
            // demo talks to it over NATS, as separate processes would.
            // Everything that can fail comes before the engine task starts,
            // so an early return leaves nothing serving.
            let client = crate::nats::connect(url, Duration::from_secs(10)).await?;
            let transport =
                crate::nats::NatsTransport::connect(url, Duration::from_secs(10)).await?;
            outln!("  nats      {url} (engine serving; agents and reviewers connect as clients)")?;
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let server = crate::nats::Server::start(client, handle.clone()).await?;
            let server = tokio::spawn(server.serve(async {
                let _ = stopped.await;
            }));
            let result = drive(example, opts, players, &transport, requester, config).await;
            let _ = stop.send(());
            let _ = server.await;
            result
        }
    }
}

async fn drive<T: Transport + Clone + 'static>(
    example: &Example,
    opts: &Options,
    players: &Players,
    transport: &T,
    requester: &SpiffeId,
    config: &Config,
) -> anyhow::Result<(Uuid, RunStatus)> {
    let printer = tokio::spawn(print_events(transport.events()));
    let result = play(example, opts, players, transport, requester, config).await;
    // Let the printer catch up before the summary.
    tokio::time::sleep(Duration::from_millis(100)).await;
    printer.abort();
    result
}

fn print_header(example: &Example, opts: &Options, kid: &str) -> Result<(), OutputError> {
    let wf = &example.workflow;
    outln!("stepgate demo — {} ({} steps)", wf.name, wf.steps().len())?;
    outln!(
        "  workflow  {} {}",
        opts.example.join("workflow.yaml").display(),
        wf.digest()
    )?;
    outln!(
        "  policy    {} {}",
        example.policy.source(),
        example.policy.digest()
    )?;
    outln!("  data      {} (signing key {kid})", opts.data.display())?;
    outln!()
}

async fn print_events(mut rx: tokio::sync::broadcast::Receiver<crate::chain::Entry>) {
    while let Ok(entry) = rx.recv().await {
        let line = outln!(
            "    log #{:<4} {}",
            entry.seq,
            audit::describe(&entry.event)
        );
        // Nobody reads the log lines any more; the run itself goes on
        // until its own next line finds stdout closed.
        if line.is_err() {
            break;
        }
    }
}

async fn play<T: Transport + Clone + 'static>(
    example: &Example,
    opts: &Options,
    players: &Players,
    transport: &T,
    requester: &SpiffeId,
    config: &Config,
) -> anyhow::Result<(Uuid, RunStatus)> {
    let client = Client::new(transport.clone());
    let started = client
        .start_run(&players.svid(requester)?, &example.workflow_text)
        .await?;
    let run = started.run;
    outln!(
        "run {run} started by {requester}; {} review batch(es) opened",
        started.batches.len()
    )?;
    settle().await;

    let jwks = client.jwks().await?;
    let total = example.workflow.steps().len();
    for (index, step) in example.workflow.topo_order().enumerate() {
        outln!()?;
        outln!(
            "[{}/{total}] step `{}` — {} on {}",
            index + 1,
            step.id,
            step.action,
            step.resource
        )?;
        outln!("      agent   {}", step.agent)?;
        outln!("      intent  {}", step.intent)?;
        let agent = AgentClient::new(transport.clone(), players.svid(&step.agent)?);
        let scopes = step.scopes.to_strings();

        let events = transport.events();
        let first = agent
            .request_token(run, &step.id, &scopes, Some(&step.intent))
            .await?;
        settle().await;
        let reply = match first {
            TokenReply::Pending { batch, group } => {
                outln!("      pending review by `{group}` (batch {batch}); the agent waits for the decision")?;
                let reviewer_task = review(opts, players, transport, batch, &group, example);
                let waiting = async {
                    await_batch(events, run, batch, Duration::from_secs(900)).await?;
                    // The review may have outlived the agent's SVID: present a fresh one.
                    let agent = AgentClient::new(transport.clone(), players.svid(&step.agent)?);
                    let reply = agent
                        .request_token(run, &step.id, &scopes, Some(&step.intent))
                        .await?;
                    anyhow::Ok(reply)
                };
                // If the review fails, stop waiting at once.
                let ((), reply) = tokio::try_join!(reviewer_task, waiting)?;
                reply
            }
            other => other,
        };
        settle().await;
        match reply {
            TokenReply::Issued {
                token,
                jti,
                exp,
                scopes,
                approval,
            } => {
                let approval = approval
                    .map(|b| format!(" (approved in batch {b})"))
                    .unwrap_or_default();
                outln!(
                    "      token   {jti} [{}] until {}{approval}",
                    scopes.join(" "),
                    audit::fmt_time(exp)
                )?;
                let guard = Guard {
                    issuer: config.issuer.clone(),
                    audience: step.resource.clone(),
                    jwks: jwks.clone(),
                };
                let scope = scopes.first().cloned().unwrap_or_default();
                let now = players.clock.now() / 1000;
                let status = client.introspect(&token).await?;
                match guard.check(&token, &scope, now, &status) {
                    Ok(_) => {
                        outln!("      tool    accepted the token for `{scope}`; doing the work")?
                    }
                    Err(e) => bail!("step `{}`: the tool refused a fresh token: {e}", step.id),
                }
                agent
                    .complete(run, &step.id, &format!("{} done", step.action))
                    .await?;
                settle().await;
                let status = client.introspect(&token).await?;
                match guard.check(&token, &scope, players.clock.now() / 1000, &status) {
                    Err(e) => outln!("      replay  the same token after the step: refused — {e}")?,
                    Ok(_) => bail!(
                        "step `{}`: a token was still accepted after its step ended",
                        step.id
                    ),
                }
            }
            TokenReply::Denied { reason, .. } => {
                outln!("      denied  {reason}")?;
                agent
                    .fail(run, &step.id, &format!("no token: {reason}"))
                    .await?;
                settle().await;
                break;
            }
            TokenReply::Rejected { kind, reason } => {
                outln!("      rejected ({}) {reason}", kind.as_str())?;
                agent.fail(run, &step.id, &reason).await?;
                settle().await;
                break;
            }
            TokenReply::Paused { reason } => {
                outln!("      paused  {reason}")?;
                break;
            }
            TokenReply::Pending { batch, .. } => bail!("batch {batch} is still pending"),
        }
    }
    let view = client.run(run).await?;
    outln!()?;
    outln!(
        "run {run} {}",
        serde_json::to_string(&view.status)?.trim_matches('"')
    )?;
    Ok((run, view.status))
}

/// Lets the event printer show what the last call committed.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(20)).await;
}

async fn review<T: Transport + Clone + 'static>(
    opts: &Options,
    players: &Players,
    transport: &T,
    batch: Uuid,
    group: &str,
    example: &Example,
) -> anyhow::Result<()> {
    let reviewer_id = match &opts.reviewer {
        Some(id) => id.clone(),
        None => example
            .reviewers
            .members(group)
            .into_iter()
            .next()
            .cloned()
            .with_context(|| format!("reviewer group `{group}` has no members"))?,
    };
    let reviewer = ReviewerClient::new(transport.clone(), players.svid(&reviewer_id)?);
    let view = reviewer.batch(batch).await?;
    show_batch(&view, &reviewer_id)?;
    let approve = match opts.review {
        ReviewMode::Approve => true,
        ReviewMode::Deny => false,
        ReviewMode::Prompt => {
            ask(&format!(
                "      approve all {} step(s) as {reviewer_id}? [y/N] ",
                view.items.len()
            ))
            .await?
        }
    };
    let comment = if approve {
        "reviewed in the demo"
    } else {
        "denied in the demo"
    };
    match reviewer
        .decide(batch, &view.binding, approve, Some(comment))
        .await?
    {
        DecisionReply::Applied { approved, .. } => {
            outln!(
                "      review  batch {} by {reviewer_id}",
                if approved { "APPROVED" } else { "DENIED" }
            )?;
            Ok(())
        }
        DecisionReply::Refused { kind, reason } => {
            bail!("the decision was refused ({}): {reason}", kind.as_str())
        }
    }
}

fn show_batch(view: &BatchView, reviewer: &SpiffeId) -> Result<(), OutputError> {
    outln!()?;
    outln!(
        "      ┌ review batch {} — group `{}`, reviewer {reviewer}",
        view.batch,
        view.group
    )?;
    outln!(
        "      │ run {} of `{}` requested by {}",
        view.run,
        view.workflow,
        view.requester
    )?;
    for item in &view.items {
        outln!(
            "      │ • {} ({} risk): {} on {}",
            item.step,
            item.risk.as_str(),
            item.action,
            item.resource
        )?;
        outln!("      │     scopes  {}", item.scopes.join(" "))?;
        outln!("      │     intent  {}", item.intent)?;
        outln!("      │     policy  {}", item.policy_ids.join(", "))?;
    }
    outln!("      └ binding {}", view.binding)
}

async fn ask(prompt: &str) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        bail!("a batch needs a decision but stdin is not a terminal; pass --approve or --deny");
    }
    let prompt = prompt.to_string();
    tokio::task::spawn_blocking(move || {
        crate::out::write(format_args!("{prompt}"))?;
        crate::out::flush()?;
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        Ok(matches!(line.trim(), "y" | "Y" | "yes" | "YES"))
    })
    .await?
}
