//! The command line: thin wrappers over the library.
//!
//! Exit codes scripts can rely on:
//! - `0` success;
//! - `1` the command ran and the answer is "no" (a run that did not
//!   complete, a token that does not verify, a broken audit chain);
//! - `2` bad input (a file that does not validate, bad arguments);
//! - `3` the environment failed (data directory unreadable or locked);
//! - `141` stdout was closed by its reader (`stepgate ... | head -1`): the
//!   command stops printing and exits without a message (see [`crate::out`]).

use std::io::Read;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::audit;
use crate::demo::{self, ReviewMode};
use crate::engine::RunStatus;
use crate::out::{OutputError, CLOSED_EXIT};
use crate::outln;
use crate::plan::{check_reviewers, preview, Plan, ReviewerCheck};
use crate::policy::{Outcome, PolicySet};
use crate::review::Reviewers;
use crate::service::SIGNING_KEY;
use crate::spiffe::SpiffeId;
use crate::store::{Store, LOG_TREE};
use crate::token::{self, Jwks, KeyPair, VerifyOptions};
use crate::workflow::Workflow;

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct CliError {
    /// Exit code.
    pub code: u8,
    /// What went wrong.
    pub error: anyhow::Error,
}

impl CliError {
    fn new(code: u8, error: impl Into<anyhow::Error>) -> Self {
        Self {
            code,
            error: error.into(),
        }
    }

    /// True when the command stopped because stdout was closed by its
    /// reader; nothing more should be printed.
    pub fn is_closed_stdout(&self) -> bool {
        OutputError::is_closed(self.error.as_ref())
    }
}

impl From<OutputError> for CliError {
    fn from(e: OutputError) -> Self {
        match e {
            OutputError::Closed => CliError::new(CLOSED_EXIT, e),
            OutputError::Io(_) => env(e),
        }
    }
}

/// Bad input: exit 2.
pub(crate) fn input(e: impl Into<anyhow::Error>) -> CliError {
    CliError::new(2, e)
}

/// Environment failure: exit 3.
pub(crate) fn env(e: impl Into<anyhow::Error>) -> CliError {
    CliError::new(3, e)
}

/// Negative answer: exit 1.
pub(crate) fn no(e: impl Into<anyhow::Error>) -> CliError {
    CliError::new(1, e)
}

#[derive(Debug, Parser)]
#[command(
    name = "stepgate",
    version,
    about = "Task-bounded tokens for AI agents: each workflow step gets a short-lived token scoped to its action, decided by Cedar policy, with step-ups reviewed in batches and every decision in a hash-chained log."
)]
/// Top-level arguments.
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a workflow file; exit 0 when valid, 2 when not.
    Validate {
        /// Workflow file (YAML or JSON).
        file: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Preview every step's decision and the review batches a run would open.
    Plan {
        /// Workflow file.
        file: PathBuf,
        /// Cedar policy file.
        #[arg(long)]
        policy: PathBuf,
        /// Reviewers file: every review group the policy can ask for on
        /// this workflow must have members (exit 2 when one has none).
        #[arg(long)]
        reviewers: Option<PathBuf>,
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run an example pipeline end to end on the embedded engine.
    Demo(DemoArgs),
    /// Signing keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Step tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Offline audit of a data directory (use a copy while an engine runs).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Serve the engine on NATS until SIGINT/SIGTERM.
    Serve(crate::serve::ServeArgs),
    /// Runs on a serving engine, over NATS.
    Run {
        #[command(subcommand)]
        command: crate::remote::RunCommand,
    },
    /// Review batches on a serving engine, over NATS.
    Review {
        #[command(subcommand)]
        command: crate::remote::ReviewCommand,
    },
    /// A local development trust domain: a bundle to trust and SVIDs to present.
    Dev {
        #[command(subcommand)]
        command: crate::remote::DevCommand,
    },
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Example directory holding workflow.yaml, policy.cedar and reviewers.yaml.
    #[arg(default_value = "examples/release")]
    example: PathBuf,
    /// Data directory for the event log and keys.
    #[arg(long, default_value = "stepgate-data")]
    data: PathBuf,
    /// Approve every review batch without asking.
    #[arg(long, conflicts_with = "deny")]
    approve: bool,
    /// Deny every review batch without asking.
    #[arg(long)]
    deny: bool,
    /// Review as this SPIFFE ID (default: the first member of the batch's group).
    #[arg(long)]
    reviewer: Option<String>,
    /// Serve the engine on this NATS server and drive the run over NATS.
    #[arg(long)]
    nats: Option<String>,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Print the JWKS that verifies this data directory's tokens.
    Jwks {
        /// Data directory.
        #[arg(long)]
        data: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Verify a step token and print its claims; exit 0 valid, 1 invalid.
    Verify {
        /// The token, or `-` to read it from stdin (keeps it out of shell history).
        token: String,
        /// JWKS file (from `stepgate keys jwks`).
        #[arg(long)]
        jwks: PathBuf,
        /// The audience this resource server answers to.
        #[arg(long)]
        aud: String,
        /// Expected issuer.
        #[arg(long, default_value = "stepgate")]
        iss: String,
        /// Print the claims as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the whole hash chain; exit 1 naming the first bad sequence number.
    Verify {
        /// Data directory.
        #[arg(long)]
        data: PathBuf,
        /// The head hash you recorded earlier; a log cut short or rewritten
        /// from the end no longer ends in it.
        #[arg(long)]
        expect_head: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print what happened, who approved what, which tokens were live.
    Timeline {
        /// Data directory.
        #[arg(long)]
        data: PathBuf,
        /// Only this run.
        #[arg(long)]
        run: Option<uuid::Uuid>,
        /// Print events as JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// List tokens that were live at a moment, optionally with a scope.
    Tokens {
        /// Data directory.
        #[arg(long)]
        data: PathBuf,
        /// The moment: `YYYY-MM-DDTHH:MM:SSZ` or ms since the epoch; default: every token.
        #[arg(long)]
        at: Option<String>,
        /// Only tokens carrying this scope.
        #[arg(long)]
        scope: Option<String>,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    dispatch(cli).await.map_err(|mut e| {
        // However deep the closed pipe was met (the demo wraps it), the
        // exit status says so.
        if e.is_closed_stdout() {
            e.code = CLOSED_EXIT;
        }
        e
    })
}

async fn dispatch(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Validate { file, json } => validate(&file, json),
        Command::Plan {
            file,
            policy,
            reviewers,
            json,
        } => plan(&file, &policy, reviewers.as_deref(), json),
        Command::Demo(args) => run_demo(args).await,
        Command::Keys {
            command: KeysCommand::Jwks { data },
        } => jwks(&data),
        Command::Token {
            command:
                TokenCommand::Verify {
                    token,
                    jwks,
                    aud,
                    iss,
                    json,
                },
        } => verify_token(&token, &jwks, &aud, &iss, json),
        Command::Serve(args) => crate::serve::run(args).await,
        Command::Run { command } => crate::remote::run_command(command).await,
        Command::Review { command } => crate::remote::review_command(command).await,
        Command::Dev { command } => crate::remote::dev_command(command),
        Command::Audit { command } => match command {
            AuditCommand::Verify {
                data,
                expect_head,
                json,
            } => audit_verify(&data, expect_head.as_deref(), json),
            AuditCommand::Timeline { data, run, json } => audit_timeline(&data, run, json),
            AuditCommand::Tokens {
                data,
                at,
                scope,
                json,
            } => audit_tokens(&data, at.as_deref(), scope.as_deref(), json),
        },
    }
}

fn validate(file: &Path, json: bool) -> Result<(), CliError> {
    match Workflow::load(file) {
        Ok(wf) => {
            if json {
                let out = json!({"valid": true, "file": file.display().to_string(), "workflow": wf.name, "steps": wf.steps().len(), "digest": wf.digest()});
                outln!("{out}")?;
            } else {
                outln!(
                    "{}: valid — workflow `{}`, {} steps, {}",
                    file.display(),
                    wf.name,
                    wf.steps().len(),
                    wf.digest()
                )?;
            }
            Ok(())
        }
        Err(e) => {
            if json {
                outln!(
                    "{}",
                    json!({"valid": false, "file": file.display().to_string(), "error": e.to_string()})
                )?;
            }
            Err(input(e))
        }
    }
}

fn plan(file: &Path, policy: &Path, reviewers: Option<&Path>, json: bool) -> Result<(), CliError> {
    let wf = Workflow::load(file).map_err(input)?;
    let policy =
        PolicySet::load(policy, wf.steps().iter().map(|s| s.action.as_str())).map_err(input)?;
    let now = crate::clock::Clock::now(&crate::clock::SystemClock) / 1000;
    let (mut plan, _) = preview(&wf, &policy, "plan", now);
    if let Some(path) = reviewers {
        let people = Reviewers::load(path).map_err(input)?;
        let file = path.display().to_string();
        plan.reviewers = Some(check_reviewers(&wf, &policy, &people, &file));
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&plan).map_err(no)?)?;
    } else {
        print_plan(&plan, &policy)?;
    }
    match &plan.reviewers {
        Some(check) if !check.errors.is_empty() => Err(reviewer_errors(check)),
        _ => Ok(()),
    }
}

fn print_plan(plan: &Plan, policy: &PolicySet) -> Result<(), CliError> {
    outln!(
        "plan for `{}` ({}) under {} ({})",
        plan.workflow,
        plan.workflow_digest,
        policy.source(),
        plan.policy_digest
    )?;
    outln!()?;
    print_steps(plan)?;
    outln!()?;
    if plan.batches.is_empty() {
        outln!("review batches: none — no step needs review")?;
    }
    for (i, b) in plan.batches.iter().enumerate() {
        outln!(
            "review batch {}: group `{}` reviews {} together",
            i + 1,
            b.group,
            b.steps.join(" → ")
        )?;
    }
    if plan.denied() > 0 {
        outln!()?;
        outln!(
            "{} step(s) would be denied; a run would stop there",
            plan.denied()
        )?;
    }
    if let Some(check) = &plan.reviewers {
        print_reviewer_check(check)?;
    }
    Ok(())
}

fn print_steps(plan: &Plan) -> Result<(), CliError> {
    let width = plan
        .steps
        .iter()
        .map(|s| s.step.len())
        .max()
        .unwrap_or(4)
        .max(4);
    outln!(
        "  {:<width$}  {:<8}  {:<8}  policies / reason",
        "step",
        "risk",
        "decision"
    )?;
    for s in &plan.steps {
        let label = match &s.decision.outcome {
            Outcome::StepUp { group } => format!("step-up → {group}"),
            other => other.label().to_string(),
        };
        let why = if s.decision.policy_ids.is_empty() {
            s.decision.reason.clone()
        } else {
            s.decision.policy_ids.join(", ")
        };
        outln!("  {:<width$}  {:<8}  {:<8}  {why}", s.step, s.risk, label)?;
    }
    Ok(())
}

fn print_reviewer_check(check: &ReviewerCheck) -> Result<(), CliError> {
    outln!()?;
    if check.errors.is_empty() && check.warnings.is_empty() {
        outln!(
            "reviewers {}: every review group the policy can ask for has members",
            check.file
        )?;
    }
    for f in &check.errors {
        outln!("reviewers {}: error: {}", check.file, f.message)?;
    }
    for f in &check.warnings {
        outln!("reviewers {}: warning: {}", check.file, f.message)?;
    }
    Ok(())
}

/// Bad input: the reviewers file lacks groups the policy can ask for.
fn reviewer_errors(check: &ReviewerCheck) -> CliError {
    let messages: Vec<&str> = check.errors.iter().map(|f| f.message.as_str()).collect();
    input(anyhow::anyhow!("{}: {}", check.file, messages.join("; ")))
}

async fn run_demo(args: DemoArgs) -> Result<(), CliError> {
    let review = match (args.approve, args.deny) {
        (true, _) => ReviewMode::Approve,
        (_, true) => ReviewMode::Deny,
        _ => ReviewMode::Prompt,
    };
    let reviewer = args
        .reviewer
        .as_deref()
        .map(SpiffeId::parse)
        .transpose()
        .map_err(|e| input(anyhow::anyhow!("--reviewer: {e}")))?;
    let opts = demo::Options {
        example: args.example,
        data: args.data,
        review,
        reviewer,
        nats: args.nats,
    };
    let outcome = demo::run(opts).await.map_err(|e| {
        let code = if e.downcast_ref::<crate::store::StoreError>().is_some() {
            3
        } else {
            2
        };
        CliError::new(code, e)
    })?;
    if outcome.status != RunStatus::Completed {
        return Err(no(anyhow::anyhow!("run {} did not complete", outcome.run)));
    }
    if !outcome.findings.is_empty() {
        return Err(no(anyhow::anyhow!(
            "the audit found {} problem(s)",
            outcome.findings.len()
        )));
    }
    Ok(())
}

fn jwks(data: &Path) -> Result<(), CliError> {
    crate::store::require_existing(data).map_err(env)?;
    let store = Store::open(data).map_err(env)?;
    let secret = store.key(SIGNING_KEY).map_err(env)?.ok_or_else(|| {
        input(anyhow::anyhow!(
            "{}: no signing key yet; it is created when the engine first starts",
            data.display()
        ))
    })?;
    let secret: [u8; 32] = secret.as_slice().try_into().map_err(|_| {
        env(anyhow::anyhow!(
            "{}: the signing key is damaged",
            data.display()
        ))
    })?;
    let key = KeyPair::from_secret_bytes(secret);
    let jwks = Jwks {
        keys: vec![key.public_jwk()],
    };
    outln!("{}", serde_json::to_string_pretty(&jwks).map_err(no)?)?;
    Ok(())
}

fn verify_token(
    token: &str,
    jwks_path: &Path,
    aud: &str,
    iss: &str,
    json: bool,
) -> Result<(), CliError> {
    let token = if token == "-" {
        let mut s = String::new();
        std::io::stdin()
            .take(64 * 1024)
            .read_to_string(&mut s)
            .map_err(input)?;
        s.trim().to_string()
    } else {
        token.to_string()
    };
    let text = std::fs::read_to_string(jwks_path)
        .map_err(|e| input(anyhow::anyhow!("{}: cannot read: {e}", jwks_path.display())))?;
    let jwks: Jwks = serde_json::from_str(&text)
        .map_err(|e| input(anyhow::anyhow!("{}: not a JWKS: {e}", jwks_path.display())))?;
    let now = crate::clock::Clock::now(&crate::clock::SystemClock) / 1000;
    match token::verify(
        &token,
        &jwks,
        &VerifyOptions {
            issuer: iss,
            audience: aud,
            now,
        },
    ) {
        Ok(claims) => {
            if json {
                outln!("{}", json!({"valid": true, "claims": claims}))?;
            } else {
                outln!("valid step token")?;
                outln!("{}", serde_json::to_string_pretty(&claims).map_err(no)?)?;
            }
            Ok(())
        }
        Err(e) => {
            if json {
                outln!("{}", json!({"valid": false, "error": e.to_string()}))?;
            }
            Err(no(e))
        }
    }
}

/// Reads `--at`: an RFC 3339 UTC time or milliseconds since the epoch.
/// A number small enough to be seconds (before 1973 as milliseconds) is
/// refused rather than read as a date in 1970.
fn parse_at(t: &str) -> Result<i64, CliError> {
    const SECONDS_LIKE: i64 = 100_000_000_000;
    match audit::parse_time(t) {
        Some(ms) if t.bytes().all(|b| b.is_ascii_digit()) && ms < SECONDS_LIKE => {
            Err(input(anyhow::anyhow!(
                "--at `{t}` looks like seconds; give milliseconds since the epoch ({t}000) or YYYY-MM-DDTHH:MM:SSZ"
            )))
        }
        Some(ms) => Ok(ms),
        None => Err(input(anyhow::anyhow!(
            "--at `{}`: expected YYYY-MM-DDTHH:MM:SSZ or ms since the epoch",
            crate::text::escape_controls(t)
        ))),
    }
}

/// Reads `--expect-head`: 64 hex digits, optionally prefixed `sha256:`.
fn parse_head(head: &str) -> Result<String, CliError> {
    let hex = head.trim();
    let hex = hex.strip_prefix("sha256:").unwrap_or(hex);
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(hex.to_ascii_lowercase());
    }
    Err(input(anyhow::anyhow!(
        "--expect-head `{}`: expected the 64 hex digits `audit verify` printed as the head",
        crate::text::escape_controls(head)
    )))
}

fn audit_verify(data: &Path, expect_head: Option<&str>, json: bool) -> Result<(), CliError> {
    let expect_head = expect_head.map(parse_head).transpose()?;
    match audit::verify(data) {
        Ok(mut report) => {
            if let Some(head) = expect_head {
                if !report.head.eq_ignore_ascii_case(&head) {
                    report.findings.push(format!(
                        "the log ends at head {}, not at the expected {head}: it was cut short or rewritten",
                        report.head
                    ));
                }
            }
            if json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(
                        &json!({"ok": report.findings.is_empty(), "report": report})
                    )
                    .map_err(no)?
                )?;
            } else {
                outln!("chain ok: {} events, head {}", report.events, report.head)?;
                outln!(
                    "{} runs, {} batches, {} tokens",
                    report.runs,
                    report.batches,
                    report.tokens
                )?;
                for f in &report.findings {
                    outln!("FINDING: {f}")?;
                }
            }
            if report.findings.is_empty() {
                Ok(())
            } else {
                Err(no(anyhow::anyhow!("{} finding(s)", report.findings.len())))
            }
        }
        Err(audit::AuditError::Chain(e)) => {
            if json {
                outln!(
                    "{}",
                    json!({"ok": false, "first_bad_seq": e.seq(), "tree": LOG_TREE, "error": e.to_string()})
                )?;
            }
            Err(no(anyhow::anyhow!(
                "chain broken at seq {}: `{LOG_TREE}` tree: {e}",
                e.seq()
            )))
        }
        Err(audit::AuditError::Store(e)) if e.is_corruption() => {
            if json {
                outln!(
                    "{}",
                    json!({"ok": false, "first_bad_seq": e.seq(), "error": e.to_string()})
                )?;
            }
            Err(no(anyhow::anyhow!(
                "the data directory is corrupted or was tampered with below the log: {e}"
            )))
        }
        Err(e @ audit::AuditError::Store(_)) => {
            if json {
                outln!("{}", json!({"ok": false, "error": e.to_string()}))?;
            }
            Err(env(e))
        }
        Err(e) => Err(no(e)),
    }
}

/// Audit failures: an unreadable directory is the environment's fault; a
/// damaged or tampered one is the answer "no".
fn audit_error(e: audit::AuditError) -> CliError {
    match e {
        audit::AuditError::Store(ref s) if !s.is_corruption() => env(e),
        other => no(other),
    }
}

fn audit_timeline(data: &Path, run: Option<uuid::Uuid>, json: bool) -> Result<(), CliError> {
    let entries = audit::read_verified(data).map_err(audit_error)?;
    let lines = audit::timeline(&entries, run);
    if run.is_some() && lines.is_empty() {
        return Err(input(anyhow::anyhow!(
            "no events for run {}",
            run.unwrap_or_default()
        )));
    }
    for line in &lines {
        if json {
            outln!("{}", serde_json::to_string(line).map_err(no)?)?;
        } else {
            outln!(
                "{}  #{:<5} {}",
                audit::fmt_time(line.at),
                line.seq,
                line.text
            )?;
        }
    }
    Ok(())
}

fn audit_tokens(
    data: &Path,
    at: Option<&str>,
    scope: Option<&str>,
    json: bool,
) -> Result<(), CliError> {
    let entries = audit::read_verified(data).map_err(audit_error)?;
    let engine =
        crate::engine::Engine::replay(entries.iter().map(|e| (e.at, &e.event))).map_err(no)?;
    let state = engine.state();
    let tokens: Vec<_> = match at {
        Some(t) => {
            let ms = parse_at(t)?;
            audit::live_tokens(state, ms, scope)
        }
        None => state
            .tokens
            .values()
            .filter(|t| scope.is_none_or(|s| t.scopes.iter().any(|x| x == s)))
            .collect(),
    };
    for t in tokens {
        if json {
            outln!("{}", serde_json::to_string(t).map_err(no)?)?;
        } else {
            let approval = t
                .approval
                .map(|b| format!(" approval {b}"))
                .unwrap_or_default();
            outln!(
                "{}  {} → {}  run {} step `{}` {} [{}] aud {}{approval}",
                t.jti,
                audit::fmt_time(t.iat),
                audit::fmt_time(t.ended_at()),
                t.run,
                t.step,
                t.sub,
                t.scopes.join(" "),
                t.aud
            )?;
        }
    }
    Ok(())
}
