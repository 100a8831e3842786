//! The `stepgate` binary; everything lives in the library.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STEPGATE_LOG")
        .unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let cli = stepgate::cli::Cli::parse();
    match stepgate::cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away: say nothing, as a process ended by SIGPIPE.
        Err(e) if e.is_closed_stdout() => ExitCode::from(e.code),
        Err(e) => {
            // A closed stderr must not turn into a panic either.
            let _ = writeln!(std::io::stderr(), "error: {}", one_message(&e.error));
            ExitCode::from(e.code)
        }
    }
}

/// The error and its causes on one line, each cause once: many messages
/// already quote their cause, and saying it twice helps nobody.
fn one_message(error: &anyhow::Error) -> String {
    let mut message = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !message.contains(&cause) {
            message.push_str(": ");
            message.push_str(&cause);
        }
    }
    message
}
