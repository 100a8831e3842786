//! Engine state: the fold of the event log.
//!
//! [`State::apply`] is the only way state changes, live or on replay, so a
//! restarted engine and an auditor's replay see exactly what the running
//! engine saw.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event::{BatchItem, Event, Millis, RevokeReason};
use crate::policy::Outcome;
use crate::workflow::Workflow;

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Steps are being worked on.
    Active,
    /// Over its step-up budget; waiting for an operator.
    Paused,
    /// Every step completed.
    Completed,
    /// A step failed.
    Failed,
    /// Cancelled by a person or its deadline.
    Cancelled,
}

impl RunStatus {
    /// True once the run can change no more.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled
        )
    }
}

/// Where a step stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Dependencies not yet complete.
    Waiting,
    /// Its agent may ask for a token.
    Ready,
    /// Done.
    Completed,
    /// Failed.
    Failed,
}

/// One step of one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepState {
    /// Status.
    pub status: StepStatus,
    /// The step's live token, if any.
    pub live_token: Option<Uuid>,
    /// Every token issued for the step.
    pub tokens: Vec<Uuid>,
    /// The batch reviewing this step, if any.
    pub batch: Option<Uuid>,
    /// True once the step counted against the step-up budget.
    pub stepped_up: bool,
    /// The last policy outcome for the step.
    pub last_outcome: Option<Outcome>,
}

/// One run.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// Run id.
    pub id: Uuid,
    /// Who started it.
    pub requester: String,
    /// The workflow it runs.
    #[serde(skip)]
    pub workflow: Arc<Workflow>,
    /// Workflow name.
    pub workflow_name: String,
    /// Digest of the policy set at start.
    pub policy_digest: String,
    /// When it started.
    pub started_at: Millis,
    /// Its deadline.
    pub deadline: Millis,
    /// Step-ups allowed.
    pub budget: u32,
    /// Step-ups made.
    pub stepups: u32,
    /// Status.
    pub status: RunStatus,
    /// Steps by id.
    pub steps: BTreeMap<String, StepState>,
    /// Batches of this run, in opening order.
    pub batches: Vec<Uuid>,
}

/// Where a batch stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum BatchStatus {
    /// Waiting for a reviewer.
    Pending,
    /// Approved; tokens may be issued until `valid_until`.
    Approved {
        /// The reviewer.
        by: String,
        /// Approval expiry.
        valid_until: Millis,
    },
    /// Denied.
    Denied {
        /// The reviewer.
        by: String,
    },
    /// Expired undecided.
    Expired,
    /// Closed because its run ended.
    Withdrawn,
}

/// One review batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Batch {
    /// Batch id.
    pub id: Uuid,
    /// Run id.
    pub run: Uuid,
    /// Reviewer group.
    pub group: String,
    /// Steps shown to the reviewer.
    pub items: Vec<BatchItem>,
    /// Binding digest.
    pub binding: String,
    /// When it opened.
    pub opened_at: Millis,
    /// When it expires undecided.
    pub expires_at: Millis,
    /// Status.
    pub status: BatchStatus,
    /// The decision, once one was recorded; a retried decision is
    /// answered from it.
    pub verdict: Option<Verdict>,
}

/// A batch's recorded decision, as its `batch_decided` event says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// The reviewer.
    pub reviewer: String,
    /// True for approve.
    pub approved: bool,
    /// Until when the approval may be used (also set on a denial).
    pub valid_until: Millis,
}

/// Where a token stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum TokenStatus {
    /// Valid until `exp`.
    Live,
    /// Revoked.
    Revoked {
        /// Why.
        reason: RevokeReason,
        /// When.
        at: Millis,
    },
    /// Past `exp`.
    Expired {
        /// When it was noticed.
        at: Millis,
    },
}

/// One issued token, by id and digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenRecord {
    /// Token id.
    pub jti: Uuid,
    /// Run id.
    pub run: Uuid,
    /// Step id.
    pub step: String,
    /// Token digest.
    pub digest: String,
    /// Signing key id.
    pub kid: String,
    /// Subject.
    pub sub: String,
    /// Audience.
    pub aud: String,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Issued at.
    pub iat: Millis,
    /// Expires at.
    pub exp: Millis,
    /// Approving batch.
    pub approval: Option<Uuid>,
    /// Status.
    pub status: TokenStatus,
}

impl TokenRecord {
    /// True when live at `now`: not revoked, not expired.
    pub fn is_live_at(&self, now: Millis) -> bool {
        self.status == TokenStatus::Live && now < self.exp
    }

    /// When the token stopped being usable (revocation, or `exp`).
    pub fn ended_at(&self) -> Millis {
        match self.status {
            TokenStatus::Revoked { at, .. } => at.min(self.exp),
            TokenStatus::Live | TokenStatus::Expired { .. } => self.exp,
        }
    }
}

/// A state change that does not fit the state: the log is inconsistent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The event names a run that does not exist.
    #[error("event `{kind}` names unknown run {run}")]
    UnknownRun {
        /// Event kind.
        kind: &'static str,
        /// Run id.
        run: Uuid,
    },
    /// The event names a step or batch or token that does not exist.
    #[error("event `{kind}` names unknown {what} `{id}`")]
    Unknown {
        /// Event kind.
        kind: &'static str,
        /// `step`, `batch` or `token`.
        what: &'static str,
        /// The id.
        id: String,
    },
    /// A stored workflow did not parse.
    #[error("run {run}: stored workflow does not parse: {message}")]
    Workflow {
        /// Run id.
        run: Uuid,
        /// Parser message.
        message: String,
    },
    /// A run id was started twice.
    #[error("run {0} started twice")]
    DuplicateRun(Uuid),
    /// One requester used one request id for two runs.
    #[error("run {run}: request id `{request_id}` of `{requester}` already started run {first}")]
    DuplicateRequest {
        /// The second run.
        run: Uuid,
        /// The run the key started first.
        first: Uuid,
        /// Who started both.
        requester: String,
        /// The key.
        request_id: String,
    },
}

/// Everything the engine knows: runs, batches, tokens, keys.
#[derive(Debug, Clone, Default)]
pub struct State {
    /// Runs by id.
    pub runs: BTreeMap<Uuid, Run>,
    /// Batches by id.
    pub batches: BTreeMap<Uuid, Batch>,
    /// Tokens by jti.
    pub tokens: BTreeMap<Uuid, TokenRecord>,
    /// Signing key ids, in creation order.
    pub kids: Vec<String>,
    /// Token ids by token digest, for introspection.
    pub by_digest: BTreeMap<String, Uuid>,
    /// Runs by (requester, request id), for idempotent starts.
    pub runs_by_request: BTreeMap<(String, String), Uuid>,
}

impl State {
    /// Applies one event recorded at `at`.
    pub fn apply(&mut self, at: Millis, event: &Event) -> Result<(), ApplyError> {
        use Event::*;
        let kind = event.kind();
        match event {
            KeyCreated { kid } => self.kids.push(kid.clone()),
            RunStarted { .. } => self.start_run(at, event)?,
            StepReady { run, step } => self.step_mut(kind, run, step)?.status = StepStatus::Ready,
            TokenRequested { .. } | RequestRejected { .. } => {}
            Decided {
                run, step, outcome, ..
            } => self.decided(kind, run, step, outcome)?,
            BatchOpened {
                batch,
                run,
                group,
                items,
                binding,
                expires_at,
            } => {
                let record = Batch {
                    id: *batch,
                    run: *run,
                    group: group.clone(),
                    items: items.clone(),
                    binding: binding.clone(),
                    opened_at: at,
                    expires_at: *expires_at,
                    status: BatchStatus::Pending,
                    verdict: None,
                };
                let r = self.run_mut(kind, run)?;
                r.batches.push(*batch);
                for item in items {
                    if let Some(s) = r.steps.get_mut(&item.step) {
                        s.batch = Some(*batch);
                    }
                }
                self.batches.insert(*batch, record);
            }
            BatchDecided {
                batch,
                approved,
                reviewer,
                valid_until,
                ..
            } => {
                let b = self.batch_mut(kind, batch)?;
                b.verdict = Some(Verdict {
                    reviewer: reviewer.clone(),
                    approved: *approved,
                    valid_until: *valid_until,
                });
                b.status = if *approved {
                    BatchStatus::Approved {
                        by: reviewer.clone(),
                        valid_until: *valid_until,
                    }
                } else {
                    BatchStatus::Denied {
                        by: reviewer.clone(),
                    }
                };
            }
            BatchExpired { batch, .. } => {
                self.batch_mut(kind, batch)?.status = BatchStatus::Expired
            }
            BatchWithdrawn { batch, .. } => {
                self.batch_mut(kind, batch)?.status = BatchStatus::Withdrawn
            }
            DecisionRefused { .. } => {}
            TokenIssued {
                run,
                step,
                jti,
                digest,
                kid,
                sub,
                aud,
                scopes,
                iat,
                exp,
                approval,
            } => {
                let s = self.step_mut(kind, run, step)?;
                s.live_token = Some(*jti);
                s.tokens.push(*jti);
                let record = TokenRecord {
                    jti: *jti,
                    run: *run,
                    step: step.clone(),
                    digest: digest.clone(),
                    kid: kid.clone(),
                    sub: sub.clone(),
                    aud: aud.clone(),
                    scopes: scopes.clone(),
                    iat: *iat,
                    exp: *exp,
                    approval: *approval,
                    status: TokenStatus::Live,
                };
                self.tokens.insert(*jti, record);
                self.by_digest.insert(digest.clone(), *jti);
            }
            TokenRedelivered { jti, .. } => {
                // Nothing changes; the token must be one the log issued.
                self.token_mut(kind, jti)?;
            }
            TokenRevoked {
                run,
                step,
                jti,
                reason,
            } => {
                self.token_mut(kind, jti)?.status = TokenStatus::Revoked {
                    reason: *reason,
                    at,
                };
                self.clear_live(kind, run, step, jti)?;
            }
            TokenExpired { run, step, jti } => {
                self.token_mut(kind, jti)?.status = TokenStatus::Expired { at };
                self.clear_live(kind, run, step, jti)?;
            }
            StepCompleted { run, step, .. } => {
                self.step_mut(kind, run, step)?.status = StepStatus::Completed
            }
            StepFailed { run, step, .. } => {
                self.step_mut(kind, run, step)?.status = StepStatus::Failed
            }
            RunPaused { run, .. } => self.run_mut(kind, run)?.status = RunStatus::Paused,
            RunResumed {
                run, extra_budget, ..
            } => {
                let r = self.run_mut(kind, run)?;
                r.status = RunStatus::Active;
                r.budget = r.budget.saturating_add(*extra_budget);
            }
            RunCompleted { run } => self.run_mut(kind, run)?.status = RunStatus::Completed,
            RunFailed { run, .. } => self.run_mut(kind, run)?.status = RunStatus::Failed,
            RunCancelled { run, .. } => self.run_mut(kind, run)?.status = RunStatus::Cancelled,
        }
        Ok(())
    }

    fn start_run(&mut self, at: Millis, event: &Event) -> Result<(), ApplyError> {
        let Event::RunStarted {
            run,
            requester,
            workflow,
            workflow_json,
            policy_digest,
            deadline,
            stepup_budget,
            request_id,
            ..
        } = event
        else {
            return Ok(());
        };
        if self.runs.contains_key(run) {
            return Err(ApplyError::DuplicateRun(*run));
        }
        let key = request_id.as_ref().map(|k| (requester.clone(), k.clone()));
        if let Some(first) = key.as_ref().and_then(|k| self.runs_by_request.get(k)) {
            return Err(ApplyError::DuplicateRequest {
                run: *run,
                first: *first,
                requester: requester.clone(),
                request_id: request_id.clone().unwrap_or_default(),
            });
        }
        let parsed = Workflow::parse("<stored workflow>", workflow_json).map_err(|e| {
            ApplyError::Workflow {
                run: *run,
                message: e.to_string(),
            }
        })?;
        let steps = parsed
            .steps()
            .iter()
            .map(|s| {
                let state = StepState {
                    status: StepStatus::Waiting,
                    live_token: None,
                    tokens: vec![],
                    batch: None,
                    stepped_up: false,
                    last_outcome: None,
                };
                (s.id.clone(), state)
            })
            .collect();
        let record = Run {
            id: *run,
            requester: requester.clone(),
            workflow: Arc::new(parsed),
            workflow_name: workflow.clone(),
            policy_digest: policy_digest.clone(),
            started_at: at,
            deadline: *deadline,
            budget: *stepup_budget,
            stepups: 0,
            status: RunStatus::Active,
            steps,
            batches: vec![],
        };
        self.runs.insert(*run, record);
        if let Some(key) = key {
            self.runs_by_request.insert(key, *run);
        }
        Ok(())
    }

    /// The run `requester` started with `request_id`, if any.
    pub fn run_by_request(&self, requester: &str, request_id: &str) -> Option<&Run> {
        let key = (requester.to_string(), request_id.to_string());
        self.runs_by_request
            .get(&key)
            .and_then(|run| self.runs.get(run))
    }

    fn decided(
        &mut self,
        kind: &'static str,
        run: &Uuid,
        step: &str,
        outcome: &Outcome,
    ) -> Result<(), ApplyError> {
        let r = self.run_mut(kind, run)?;
        let s = r
            .steps
            .get_mut(step)
            .ok_or_else(|| unknown(kind, "step", step))?;
        s.last_outcome = Some(outcome.clone());
        if matches!(outcome, Outcome::StepUp { .. }) && !s.stepped_up {
            s.stepped_up = true;
            r.stepups += 1;
        }
        Ok(())
    }

    fn clear_live(
        &mut self,
        kind: &'static str,
        run: &Uuid,
        step: &str,
        jti: &Uuid,
    ) -> Result<(), ApplyError> {
        let s = self.step_mut(kind, run, step)?;
        if s.live_token == Some(*jti) {
            s.live_token = None;
        }
        Ok(())
    }

    fn run_mut(&mut self, kind: &'static str, run: &Uuid) -> Result<&mut Run, ApplyError> {
        self.runs
            .get_mut(run)
            .ok_or(ApplyError::UnknownRun { kind, run: *run })
    }

    fn step_mut(
        &mut self,
        kind: &'static str,
        run: &Uuid,
        step: &str,
    ) -> Result<&mut StepState, ApplyError> {
        self.run_mut(kind, run)?
            .steps
            .get_mut(step)
            .ok_or_else(|| unknown(kind, "step", step))
    }

    fn batch_mut(&mut self, kind: &'static str, batch: &Uuid) -> Result<&mut Batch, ApplyError> {
        self.batches
            .get_mut(batch)
            .ok_or_else(|| unknown(kind, "batch", &batch.to_string()))
    }

    fn token_mut(
        &mut self,
        kind: &'static str,
        jti: &Uuid,
    ) -> Result<&mut TokenRecord, ApplyError> {
        self.tokens
            .get_mut(jti)
            .ok_or_else(|| unknown(kind, "token", &jti.to_string()))
    }
}

fn unknown(kind: &'static str, what: &'static str, id: &str) -> ApplyError {
    ApplyError::Unknown {
        kind,
        what,
        id: id.to_string(),
    }
}
