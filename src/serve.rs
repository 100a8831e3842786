//! `stepgate serve`: the engine on NATS, with graceful shutdown.
//!
//! Settings come from a YAML config file and flags; a flag overrides the
//! file. On SIGINT or SIGTERM the server stops taking requests, lets the
//! ones in flight finish, flushes the log and exits.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde::Deserialize;
use tracing::info;

use crate::cli::{env, input, CliError};
use crate::clock::SystemClock;
use crate::engine::Config;
use crate::identity::TrustBundle;
use crate::policy::PolicySet;
use crate::review::Reviewers;
use crate::service::{self, Settings};
use crate::store::Store;

/// Arguments of `stepgate serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// YAML config file; flags override its values.
    #[arg(long)]
    config: Option<PathBuf>,
    /// NATS server URL.
    #[arg(long)]
    nats: Option<String>,
    /// Data directory (event log and keys).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Cedar policy file.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Trust bundle of the workload identities the engine accepts.
    #[arg(long)]
    trust_bundle: Option<PathBuf>,
    /// Reviewer groups file.
    #[arg(long)]
    reviewers: Option<PathBuf>,
}

/// The config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    nats: Option<String>,
    data: Option<PathBuf>,
    policy: Option<PathBuf>,
    trust_bundle: Option<PathBuf>,
    reviewers: Option<PathBuf>,
    issuer: Option<String>,
    token_ttl_secs: Option<i64>,
    batch_ttl_secs: Option<i64>,
    approval_ttl_secs: Option<i64>,
}

fn required<T>(value: Option<T>, flag: &str) -> Result<T, CliError> {
    value.ok_or_else(|| {
        input(anyhow::anyhow!(
            "missing `--{flag}` (or `{}` in the config file)",
            flag.replace('-', "_")
        ))
    })
}

fn load_config(path: Option<&Path>) -> Result<ConfigFile, CliError> {
    let Some(path) = path else {
        return Ok(ConfigFile::default());
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| input(anyhow::anyhow!("{}: cannot read: {e}", path.display())))?;
    serde_yaml::from_str(&text).map_err(|e| input(anyhow::anyhow!("{}: {e}", path.display())))
}

/// Runs the server.
pub async fn run(args: ServeArgs) -> Result<(), CliError> {
    let file = load_config(args.config.as_deref())?;
    let url = required(args.nats.or(file.nats), "nats")?;
    let data = required(args.data.or(file.data), "data")?;
    let policy_path = required(args.policy.or(file.policy), "policy")?;
    let bundle_path = required(args.trust_bundle.or(file.trust_bundle), "trust-bundle")?;
    let reviewers_path = required(args.reviewers.or(file.reviewers), "reviewers")?;

    let policy = PolicySet::load(&policy_path, []).map_err(input)?;
    let trust = TrustBundle::load(&bundle_path).map_err(input)?;
    let reviewers = Reviewers::load(&reviewers_path).map_err(input)?;
    let defaults = Config::default();
    let engine = Config {
        issuer: file.issuer.unwrap_or(defaults.issuer),
        svid_audience: defaults.svid_audience,
        token_ttl_secs: bounded(
            file.token_ttl_secs,
            defaults.token_ttl_secs,
            "token_ttl_secs",
        )?,
        batch_ttl_secs: bounded(
            file.batch_ttl_secs,
            defaults.batch_ttl_secs,
            "batch_ttl_secs",
        )?,
        approval_ttl_secs: bounded(
            file.approval_ttl_secs,
            defaults.approval_ttl_secs,
            "approval_ttl_secs",
        )?,
    };

    std::fs::create_dir_all(&data)
        .map_err(|e| env(anyhow::anyhow!("{}: cannot create: {e}", data.display())))?;
    let store = Store::open(&data).map_err(env)?;
    let settings = Settings {
        policy,
        trust,
        reviewers,
        engine,
        tick: Duration::from_secs(1),
    };
    let handle = service::start(store, settings, Arc::new(SystemClock))
        .await
        .map_err(env)?;

    let client = crate::nats::connect(&url, Duration::from_secs(10))
        .await
        .map_err(env)?;
    let server = crate::nats::Server::start(client, handle.clone())
        .await
        .map_err(env)?;
    // A service keeps serving when nobody reads its stdout.
    let _ = crate::outln!(
        "stepgate serving on {url} (data {}, engine {})",
        data.display(),
        handle.kid()
    );
    let served = server.serve(shutdown_signal()).await;
    info!("shutting down: no new requests; finishing those in flight");
    handle.shutdown().await;
    info!("stopped");
    served.map_err(env)
}

fn bounded(value: Option<i64>, default: i64, name: &str) -> Result<i64, CliError> {
    match value {
        None => Ok(default),
        Some(v) if (10..=3600).contains(&v) => Ok(v),
        Some(v) => Err(input(anyhow::anyhow!(
            "config `{name}`: {v} is out of range; must be between 10 and 3600 seconds"
        ))),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
