//! Audit: offline replay of a data directory.
//!
//! Works on a copy of the data directory with no network: it re-checks
//! the hash chain record by record, replays the events into engine state,
//! and answers what an auditor asks — did the chain hold, what happened
//! in a run, who approved what, which tokens were live when, did every
//! stepped-up token carry an approval of its own step, and was a token
//! handed out again (a retried request) only to its own agent while live.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use uuid::Uuid;

use crate::chain::{ChainError, Entry, Verifier};
use crate::engine::{BatchStatus, Engine, State, TokenRecord};
use crate::event::{Event, Millis};
use crate::policy::Outcome;
use crate::store::{RawLog, StoreError};

/// Why an audit could not complete.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The data directory could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The chain is broken or a record does not decode; the first bad
    /// record is named.
    #[error("`{tree}` tree: {0}", tree = crate::store::LOG_TREE)]
    Chain(#[from] ChainError),
    /// The events do not replay into a consistent state.
    #[error("replay: {0}")]
    Replay(#[from] crate::engine::ApplyError),
}

/// The result of a clean verification.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Events checked.
    pub events: u64,
    /// Hex hash of the last record; compare with a copy kept elsewhere.
    pub head: String,
    /// Runs in the log.
    pub runs: usize,
    /// Tokens issued.
    pub tokens: usize,
    /// Batches opened.
    pub batches: usize,
    /// Problems found in what the events say (not in the chain).
    pub findings: Vec<String>,
}

/// Reads and verifies every record of the log in `dir`.
pub fn read_verified(dir: &Path) -> Result<Vec<Entry>, AuditError> {
    let raw = RawLog::open(dir)?;
    let mut verifier = Verifier::new();
    let mut entries = vec![];
    for record in raw.records() {
        let (seq, bytes) = record?;
        entries.push(verifier.check(seq, &bytes)?);
    }
    Ok(entries)
}

/// Verifies the chain and the rules the events must keep.
pub fn verify(dir: &Path) -> Result<VerifyReport, AuditError> {
    let entries = read_verified(dir)?;
    let engine = Engine::replay(entries.iter().map(|e| (e.at, &e.event)))?;
    let state = engine.state();
    Ok(VerifyReport {
        events: entries.len() as u64,
        head: entries
            .last()
            .map(|e| e.hash.clone())
            .unwrap_or_else(|| "0".repeat(64)),
        runs: state.runs.len(),
        tokens: state.tokens.len(),
        batches: state.batches.len(),
        findings: findings(&entries, state),
    })
}

/// Rules every log must keep; a finding means the log describes
/// something the engine must never do.
fn findings(entries: &[Entry], state: &State) -> Vec<String> {
    let mut out = vec![];
    let mut last_outcome: BTreeMap<(Uuid, String), Outcome> = BTreeMap::new();
    for entry in entries {
        match &entry.event {
            Event::Decided {
                run, step, outcome, ..
            } => {
                last_outcome.insert((*run, step.clone()), outcome.clone());
            }
            Event::TokenIssued {
                run,
                step,
                jti,
                approval,
                ..
            } => {
                let outcome = last_outcome.get(&(*run, step.clone()));
                match (outcome, approval) {
                    (Some(Outcome::Allow), None) => {}
                    (Some(Outcome::StepUp { .. }), Some(batch)) => {
                        if let Some(problem) = approval_problem(state, *batch, step, entry.at) {
                            out.push(format!("seq {}: token {jti}: {problem}", entry.seq));
                        }
                    }
                    (Some(Outcome::StepUp { .. }), None) => out.push(format!(
                        "seq {}: token {jti} for stepped-up step `{step}` has no approval",
                        entry.seq
                    )),
                    (Some(Outcome::Deny), _) => out.push(format!(
                        "seq {}: token {jti} issued after a deny for step `{step}`",
                        entry.seq
                    )),
                    (None, _) => out.push(format!(
                        "seq {}: token {jti} issued with no decision for step `{step}`",
                        entry.seq
                    )),
                    (Some(Outcome::Allow), Some(_)) => {}
                }
            }
            Event::TokenRedelivered { jti, agent, .. } => {
                if let Some(problem) = redelivery_problem(state, *jti, agent, entry.at) {
                    out.push(format!("seq {}: token {jti}: {problem}", entry.seq));
                }
            }
            _ => {}
        }
    }
    out
}

/// What is wrong with handing token `jti` to `agent` again at `at`: only
/// its own subject may get it, and only while it is usable.
fn redelivery_problem(state: &State, jti: Uuid, agent: &str, at: Millis) -> Option<String> {
    let Some(token) = state.tokens.get(&jti) else {
        return Some("redelivered but never issued".into());
    };
    if token.sub != agent {
        return Some(format!(
            "issued to {} but redelivered to {agent}",
            token.sub
        ));
    }
    if at < token.iat || at >= token.ended_at() {
        return Some("redelivered while it was not live".into());
    }
    None
}

fn approval_problem(state: &State, batch: Uuid, step: &str, at: Millis) -> Option<String> {
    let Some(b) = state.batches.get(&batch) else {
        return Some(format!("names unknown batch {batch}"));
    };
    if !b.items.iter().any(|i| i.step == step) {
        return Some(format!("batch {batch} did not show step `{step}`"));
    }
    match &b.status {
        BatchStatus::Approved { valid_until, .. } if at < *valid_until => None,
        BatchStatus::Approved { .. } => {
            Some(format!("issued after the approval of batch {batch} lapsed"))
        }
        _ => Some(format!("batch {batch} was never approved")),
    }
}

/// One line of a timeline.
#[derive(Debug, Clone, Serialize)]
pub struct Line {
    /// Sequence number.
    pub seq: u64,
    /// When, ms.
    pub at: Millis,
    /// Run, if any.
    pub run: Option<Uuid>,
    /// Event type.
    pub kind: &'static str,
    /// What happened, in words.
    pub text: String,
    /// The event itself.
    pub event: Event,
}

/// What happened, optionally in one run only.
pub fn timeline(entries: &[Entry], run: Option<Uuid>) -> Vec<Line> {
    entries
        .iter()
        .filter(|e| run.is_none() || e.event.run() == run)
        .map(|e| Line {
            seq: e.seq,
            at: e.at,
            run: e.event.run(),
            kind: e.event.kind(),
            text: describe(&e.event),
            event: e.event.clone(),
        })
        .collect()
}

/// One event in words.
pub fn describe(event: &Event) -> String {
    use Event::*;
    match event {
        KeyCreated { kid } => format!("signing key {kid} created"),
        RunStarted {
            workflow,
            requester,
            stepup_budget,
            ..
        } => {
            format!("run of `{workflow}` started by {requester} (step-up budget {stepup_budget})")
        }
        StepReady { step, .. } => format!("step `{step}` ready"),
        TokenRequested {
            step,
            agent,
            scopes,
            ..
        } => format!("step `{step}`: {agent} asked for [{}]", scopes.join(" ")),
        RequestRejected {
            step, kind, reason, ..
        } => format!("step `{step}`: request rejected ({kind}): {reason}"),
        Decided {
            step,
            outcome,
            reason,
            ..
        } => format!("step `{step}`: policy says {} — {reason}", outcome.label()),
        BatchOpened {
            batch,
            group,
            items,
            ..
        } => {
            let steps: Vec<&str> = items.iter().map(|i| i.step.as_str()).collect();
            format!("batch {batch} opened for `{group}`: {}", steps.join(", "))
        }
        BatchDecided {
            batch,
            approved,
            reviewer,
            ..
        } => {
            format!(
                "batch {batch} {} by {reviewer}",
                if *approved { "approved" } else { "denied" }
            )
        }
        BatchExpired { batch, .. } => format!("batch {batch} expired undecided"),
        BatchWithdrawn { batch, reason, .. } => format!("batch {batch} withdrawn: {reason}"),
        DecisionRefused {
            batch,
            kind,
            reason,
            ..
        } => format!("decision on batch {batch} refused ({kind}): {reason}"),
        TokenIssued {
            step,
            jti,
            scopes,
            exp,
            approval,
            aud,
            ..
        } => {
            let approval = approval
                .map(|b| format!(", approved in batch {b}"))
                .unwrap_or_default();
            format!(
                "step `{step}`: token {jti} issued for {aud} [{}] until {}{approval}",
                scopes.join(" "),
                fmt_time(*exp)
            )
        }
        TokenRedelivered {
            step, jti, agent, ..
        } => format!("step `{step}`: token {jti} handed out again to {agent} (a retried request)"),
        TokenRevoked {
            step, jti, reason, ..
        } => format!("step `{step}`: token {jti} revoked ({})", reason.as_str()),
        TokenExpired { step, jti, .. } => format!("step `{step}`: token {jti} expired"),
        StepCompleted { step, summary, .. } => format!("step `{step}` completed: {summary}"),
        StepFailed { step, reason, .. } => format!("step `{step}` failed: {reason}"),
        RunPaused { reason, .. } => format!("run paused: {reason}"),
        RunResumed {
            by, extra_budget, ..
        } => format!("run resumed by {by} (+{extra_budget} step-ups)"),
        RunCompleted { .. } => "run completed".to_string(),
        RunFailed { step, .. } => format!("run failed at step `{step}`"),
        RunCancelled { by, reason, .. } => format!("run cancelled by {by}: {reason}"),
    }
}

/// Tokens that were usable at `at`, optionally only those carrying `scope`.
pub fn live_tokens<'s>(state: &'s State, at: Millis, scope: Option<&str>) -> Vec<&'s TokenRecord> {
    state
        .tokens
        .values()
        .filter(|t| t.iat <= at && at < t.ended_at())
        .filter(|t| scope.is_none_or(|s| t.scopes.iter().any(|x| x == s)))
        .collect()
}

/// `YYYY-MM-DDTHH:MM:SSZ` for ms since the epoch (UTC, proleptic Gregorian).
pub fn fmt_time(ms: Millis) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's method.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Parses `YYYY-MM-DDTHH:MM:SSZ` (or ms since the epoch) into ms.
pub fn parse_time(s: &str) -> Option<Millis> {
    if let Ok(ms) = s.parse::<i64>() {
        return Some(ms);
    }
    let b = s.as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r).and_then(|x| x.parse::<i64>().ok());
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss) = (n(11..13)?, n(14..16)?, n(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 59 {
        return None;
    }
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400) + hh * 3600 + mm * 60 + ss) * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_formats_round_trip() {
        assert_eq!(fmt_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(fmt_time(1_796_400_000_000), "2026-12-04T16:00:00Z");
        assert_eq!(parse_time("2026-12-04T16:00:00Z"), Some(1_796_400_000_000));
        assert_eq!(
            parse_time("2024-02-29T23:59:59Z").map(fmt_time).as_deref(),
            Some("2024-02-29T23:59:59Z")
        );
        assert_eq!(parse_time("2026-13-01T00:00:00Z"), None);
        assert_eq!(parse_time("yesterday"), None);
    }
}
