//! CLI commands that talk to a serving engine over NATS, and the local
//! development trust domain used to try it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::json;

use crate::cli::{env, input, no, CliError};
use crate::client::{Client, ReviewerClient};
use crate::engine::DecisionReply;
use crate::identity::DevTrustDomain;
use crate::nats::NatsTransport;
use crate::outln;
use crate::request_id::RequestId;
use crate::spiffe::SpiffeId;

/// Where to reach the engine and who the caller is.
#[derive(Debug, Args)]
pub struct Remote {
    /// NATS server URL.
    #[arg(long, env = "STEPGATE_NATS")]
    nats: String,
    /// File holding the caller's JWT-SVID (`-` for stdin); or set STEPGATE_SVID.
    #[arg(long)]
    svid_file: Option<PathBuf>,
    /// Request timeout, seconds.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    /// Print replies as JSON.
    #[arg(long)]
    json: bool,
}

impl Remote {
    async fn transport(&self) -> Result<NatsTransport, CliError> {
        NatsTransport::connect(&self.nats, Duration::from_secs(self.timeout))
            .await
            .map_err(env)
    }

    fn svid(&self) -> Result<String, CliError> {
        if let Some(path) = &self.svid_file {
            return read_secret(path);
        }
        std::env::var("STEPGATE_SVID")
            .map(|s| s.trim().to_string())
            .map_err(|_| {
                input(anyhow::anyhow!(
                    "no identity: pass --svid-file FILE or set STEPGATE_SVID"
                ))
            })
    }
}

fn read_secret(path: &Path) -> Result<String, CliError> {
    let mut s = String::new();
    if path.as_os_str() == "-" {
        std::io::stdin()
            .take(64 * 1024)
            .read_to_string(&mut s)
            .map_err(input)?;
    } else {
        s = std::fs::read_to_string(path)
            .map_err(|e| input(anyhow::anyhow!("{}: cannot read: {e}", path.display())))?;
    }
    Ok(s.trim().to_string())
}

/// `stepgate run ...`
#[derive(Debug, Subcommand)]
pub enum RunCommand {
    /// Start a run of a workflow file.
    Start {
        /// Workflow file.
        file: PathBuf,
        /// Idempotency key (1-128 of A-Z a-z 0-9 . _ : -); the same key
        /// and workflow again answer the run it started. Default: a fresh
        /// UUID v7 each time.
        #[arg(long)]
        request_id: Option<RequestId>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show a run's status.
    Status {
        /// Run id.
        run: uuid::Uuid,
        #[command(flatten)]
        remote: Remote,
    },
    /// Cancel a run; every live token of it is revoked.
    Cancel {
        /// Run id.
        run: uuid::Uuid,
        /// Why.
        #[arg(long, default_value = "cancelled from the command line")]
        reason: String,
        #[command(flatten)]
        remote: Remote,
    },
}

/// `stepgate review ...`
#[derive(Debug, Subcommand)]
pub enum ReviewCommand {
    /// List batches waiting for a decision.
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// Show one batch.
    Show {
        /// Batch id.
        batch: uuid::Uuid,
        #[command(flatten)]
        remote: Remote,
    },
    /// Approve a batch as shown.
    Approve {
        /// Batch id.
        batch: uuid::Uuid,
        /// Optional words for the record.
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Deny a batch.
    Deny {
        /// Batch id.
        batch: uuid::Uuid,
        /// Optional words for the record.
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
}

/// `stepgate dev ...`
#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Create a development trust domain in DIR (key and bundle.json).
    Init {
        /// Directory for the key and the bundle.
        #[arg(long)]
        dir: PathBuf,
        /// Trust domain name.
        #[arg(long, default_value = "dev.stepgate.local")]
        trust_domain: String,
    },
    /// Print a JWT-SVID for a SPIFFE ID of the development trust domain.
    Svid {
        /// The SPIFFE ID.
        id: String,
        /// Directory made by `dev init`.
        #[arg(long)]
        dir: PathBuf,
        /// Lifetime, seconds.
        #[arg(long, default_value_t = 300)]
        ttl: i64,
        /// Audience.
        #[arg(long, default_value = "stepgate")]
        audience: String,
    },
}

fn print<T: serde::Serialize + std::fmt::Debug>(value: &T, json: bool) -> Result<(), CliError> {
    if json {
        outln!("{}", serde_json::to_string(value).map_err(no)?)?;
    } else {
        outln!("{}", serde_json::to_string_pretty(value).map_err(no)?)?;
    }
    Ok(())
}

fn remote_err(e: crate::client::ClientError) -> CliError {
    use crate::bus::BusError;
    match &e {
        crate::client::ClientError::Bus(BusError::Remote { code, .. })
            if code == "unavailable" || code == "timeout" =>
        {
            env(e)
        }
        crate::client::ClientError::Bus(BusError::Remote { .. }) => input(e),
        crate::client::ClientError::Bus(BusError::Transport(_) | BusError::Closed) => env(e),
        _ => no(e),
    }
}

/// A start that failed without an answer may still have started the run:
/// tell the user how to ask again without starting a second one.
fn outcome_unknown(e: crate::client::ClientError, request_id: &RequestId) -> CliError {
    use crate::bus::BusError;
    use crate::client::ClientError;
    let unknown = match &e {
        ClientError::Bus(BusError::Transport(_)) => true,
        ClientError::Bus(BusError::Remote { code, .. }) => code == "timeout",
        _ => false,
    };
    let mut error = remote_err(e);
    if unknown {
        error.error = error.error.context(format!(
            "the run may have started; run the same command with `--request-id {}` to get its answer without starting another",
            request_id.as_str()
        ));
    }
    error
}

/// Runs `stepgate run ...`.
pub async fn run_command(command: RunCommand) -> Result<(), CliError> {
    match command {
        RunCommand::Start {
            file,
            request_id,
            remote,
        } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| input(anyhow::anyhow!("{}: cannot read: {e}", file.display())))?;
            crate::workflow::Workflow::parse(&file.display().to_string(), &text).map_err(input)?;
            let client = Client::new(remote.transport().await?);
            let request_id = request_id.unwrap_or_else(RequestId::fresh);
            let reply = client
                .start_run_keyed(&remote.svid()?, &text, &request_id)
                .await
                .map_err(|e| outcome_unknown(e, &request_id))?;
            print(&reply, remote.json)
        }
        RunCommand::Status { run, remote } => {
            let client = Client::new(remote.transport().await?);
            print(&client.run(run).await.map_err(remote_err)?, remote.json)
        }
        RunCommand::Cancel {
            run,
            reason,
            remote,
        } => {
            let client = Client::new(remote.transport().await?);
            let revoked = client
                .cancel(run, &remote.svid()?, &reason)
                .await
                .map_err(remote_err)?;
            print(&json!({"run": run, "revoked": revoked}), remote.json)
        }
    }
}

/// Runs `stepgate review ...`.
pub async fn review_command(command: ReviewCommand) -> Result<(), CliError> {
    match command {
        ReviewCommand::List { remote } => {
            let reviewer = ReviewerClient::new(remote.transport().await?, String::new());
            let pending = reviewer.pending().await.map_err(remote_err)?;
            print(&pending.batches, remote.json)?;
            if pending.unreachable.is_empty() {
                return Ok(());
            }
            // The list is printed, but it is not complete: say so, and
            // fail so that a script does not take it for the whole truth.
            Err(env(anyhow::anyhow!(
                "the list is incomplete: engine(s) {} did not answer",
                pending.unreachable.join(", ")
            )))
        }
        ReviewCommand::Show { batch, remote } => {
            let reviewer = ReviewerClient::new(remote.transport().await?, String::new());
            print(
                &reviewer.batch(batch).await.map_err(remote_err)?,
                remote.json,
            )
        }
        ReviewCommand::Approve {
            batch,
            comment,
            remote,
        } => decide(batch, true, comment, remote).await,
        ReviewCommand::Deny {
            batch,
            comment,
            remote,
        } => decide(batch, false, comment, remote).await,
    }
}

async fn decide(
    batch: uuid::Uuid,
    approve: bool,
    comment: Option<String>,
    remote: Remote,
) -> Result<(), CliError> {
    let reviewer = ReviewerClient::new(remote.transport().await?, remote.svid()?);
    // Decide on exactly what the engine shows now: its binding digest.
    let view = reviewer.batch(batch).await.map_err(remote_err)?;
    let reply = reviewer
        .decide(batch, &view.binding, approve, comment.as_deref())
        .await
        .map_err(remote_err)?;
    print(&reply, remote.json)?;
    match reply {
        DecisionReply::Applied { .. } => Ok(()),
        DecisionReply::Refused { kind, reason } => {
            Err(no(anyhow::anyhow!("refused ({}): {reason}", kind.as_str())))
        }
    }
}

const DEV_KEY: &str = "dev-trust-domain.der";
const DEV_NAME: &str = "trust-domain.txt";

/// Runs `stepgate dev ...`.
pub fn dev_command(command: DevCommand) -> Result<(), CliError> {
    match command {
        DevCommand::Init { dir, trust_domain } => {
            std::fs::create_dir_all(&dir)
                .map_err(|e| env(anyhow::anyhow!("{}: {e}", dir.display())))?;
            let td =
                DevTrustDomain::generate(&trust_domain, &mut rand_core::OsRng).map_err(input)?;
            write_private(&dir.join(DEV_KEY), &td.to_pkcs8_der().map_err(no)?)?;
            std::fs::write(dir.join(DEV_NAME), &trust_domain).map_err(env)?;
            std::fs::write(dir.join("bundle.json"), td.bundle().to_json()).map_err(env)?;
            outln!("{}", dir.join("bundle.json").display())?;
            Ok(())
        }
        DevCommand::Svid {
            id,
            dir,
            ttl,
            audience,
        } => {
            let name = std::fs::read_to_string(dir.join(DEV_NAME)).map_err(|e| {
                input(anyhow::anyhow!(
                    "{}: not a dev trust domain (run `stepgate dev init`): {e}",
                    dir.display()
                ))
            })?;
            let der = std::fs::read(dir.join(DEV_KEY)).map_err(env)?;
            let td = DevTrustDomain::from_pkcs8_der(name.trim(), &der).map_err(input)?;
            let id = SpiffeId::parse(&id).map_err(|e| input(anyhow::anyhow!("`{id}`: {e}")))?;
            let now = crate::clock::Clock::now(&crate::clock::SystemClock) / 1000;
            outln!("{}", td.mint_svid(&id, &audience, now, ttl).map_err(input)?)?;
            Ok(())
        }
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    #[cfg(unix)]
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| env(anyhow::anyhow!("{}: {e}", path.display())))?;
        f.write_all(bytes).map_err(env)?;
        Ok(())
    }
    #[cfg(not(unix))]
    {
        std::fs::write(path, bytes).map_err(env)
    }
}
