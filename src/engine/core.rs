//! Engine commands: `(state, command, now) -> events`.
//!
//! Each command checks its input against the state, decides, and emits
//! events; every emitted event is applied at once, so later checks in the
//! same command see it. The caller (the service) appends the collected
//! events to the store and flushes before it answers. Nothing here does
//! I/O or reads a clock: time, ids, keys, the policy and the trust bundle
//! come in through [`Env`].

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::state::{
    ApplyError, Batch, BatchStatus, Run, RunStatus, State, StepStatus, TokenRecord, TokenStatus,
};
use crate::event::{Event, Millis, RevokeReason};
use crate::identity::{verify_svid, IdentityError, TrustBundle};
use crate::plan::preview;
use crate::policy::{sha256_text, Facts, Outcome, PolicySet};
use crate::request_id::RequestId;
use crate::review::{binding_digest, item_for, Reviewers};
use crate::scope::ScopeSet;
use crate::spiffe::SpiffeId;
use crate::token::{KeyPair, StepClaims, TokenError};
use crate::workflow::{Step, Workflow};

/// Engine settings. Defaults are deliberately short.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// `iss` of step tokens. Default `stepgate`.
    pub issuer: String,
    /// Audience agents' and reviewers' JWT-SVIDs must carry. Default `stepgate`.
    pub svid_audience: String,
    /// Token lifetime when the step's TTL is longer. Default 300 s.
    pub token_ttl_secs: i64,
    /// How long a batch waits for a decision. Default 900 s.
    pub batch_ttl_secs: i64,
    /// How long an approval may be used to get tokens. Default 900 s.
    pub approval_ttl_secs: i64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            issuer: "stepgate".into(),
            svid_audience: "stepgate".into(),
            token_ttl_secs: 300,
            batch_ttl_secs: 900,
            approval_ttl_secs: 900,
        }
    }
}

/// Signs step tokens. [`KeyPair`] is the implementation; the trait keeps
/// the core free of key storage.
pub trait Minter {
    /// The key id tokens will carry.
    fn kid(&self) -> &str;
    /// Signs the claims.
    fn mint(&self, claims: &StepClaims) -> Result<String, TokenError>;
}

impl Minter for KeyPair {
    fn kid(&self) -> &str {
        KeyPair::kid(self)
    }
    fn mint(&self, claims: &StepClaims) -> Result<String, TokenError> {
        crate::token::mint(self, claims)
    }
}

/// Source of fresh ids (run, batch, token).
pub trait Ids {
    /// A new id; `now` lets time-ordered ids use the engine clock.
    fn next_id(&mut self, now: Millis) -> Uuid;
}

/// UUID v7 ids from the engine clock and the OS random source.
#[derive(Debug, Default)]
pub struct V7Ids;

impl Ids for V7Ids {
    fn next_id(&mut self, now: Millis) -> Uuid {
        let ms = u64::try_from(now).unwrap_or(0);
        let ts = uuid::Timestamp::from_unix(
            uuid::NoContext,
            ms / 1000,
            u32::try_from((ms % 1000) * 1_000_000).unwrap_or(0),
        );
        Uuid::new_v7(ts)
    }
}

/// Counting ids for tests: 1, 2, 3... as UUIDs.
#[derive(Debug, Default)]
pub struct SeqIds(pub u128);

impl Ids for SeqIds {
    fn next_id(&mut self, _now: Millis) -> Uuid {
        self.0 += 1;
        Uuid::from_u128(self.0)
    }
}

/// What a command needs from outside the state.
#[allow(missing_debug_implementations)]
pub struct Env<'a> {
    /// Now, ms since the Unix epoch.
    pub now: Millis,
    /// The policy in force.
    pub policy: &'a PolicySet,
    /// Trusted identity issuers.
    pub trust: &'a TrustBundle,
    /// Reviewer groups.
    pub reviewers: &'a Reviewers,
    /// Token signer.
    pub minter: &'a dyn Minter,
    /// Id source.
    pub ids: &'a mut dyn Ids,
    /// Settings.
    pub config: &'a Config,
}

/// A command that changed nothing, and why.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No such run.
    #[error("unknown run {0}")]
    UnknownRun(Uuid),
    /// No such step in the run.
    #[error("run {run}: unknown step `{step}`")]
    UnknownStep {
        /// Run id.
        run: Uuid,
        /// Step id.
        step: String,
    },
    /// No such batch.
    #[error("unknown batch {0}")]
    UnknownBatch(Uuid),
    /// The caller's identity did not verify.
    #[error("identity: {0}")]
    Identity(#[from] IdentityError),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The request does not fit the run's state.
    #[error("{0}")]
    Conflict(String),
    /// A request id already started a run of another workflow.
    #[error("request id `{request_id}` already started run {run} of another workflow; nothing was started")]
    RequestIdReused {
        /// The key.
        request_id: String,
        /// The run it started.
        run: Uuid,
    },
    /// The engine's own state is inconsistent; a bug or a damaged log.
    #[error("inconsistent state: {0}")]
    Inconsistent(#[from] ApplyError),
}

/// Why a token request was refused before policy, as data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectKind {
    /// The JWT-SVID did not verify.
    BadIdentity,
    /// The identity is not the step's agent.
    WrongAgent,
    /// No scopes were asked for.
    NoScopes,
    /// Scopes beyond the step's were asked for.
    ScopeExcess,
    /// The stated intent is not the step's.
    IntentMismatch,
    /// The step's dependencies are not complete.
    StepNotReady,
    /// The step is already completed or failed.
    StepFinished,
    /// The step already holds a live token.
    TokenLive,
    /// The run is over.
    RunNotActive,
    /// The run is paused over its step-up budget.
    RunPaused,
}

impl RejectKind {
    /// Snake-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectKind::BadIdentity => "bad_identity",
            RejectKind::WrongAgent => "wrong_agent",
            RejectKind::NoScopes => "no_scopes",
            RejectKind::ScopeExcess => "scope_excess",
            RejectKind::IntentMismatch => "intent_mismatch",
            RejectKind::StepNotReady => "step_not_ready",
            RejectKind::StepFinished => "step_finished",
            RejectKind::TokenLive => "token_live",
            RejectKind::RunNotActive => "run_not_active",
            RejectKind::RunPaused => "run_paused",
        }
    }
}

/// Why a review decision was refused, as data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefuseKind {
    /// The reviewer's JWT-SVID did not verify.
    BadIdentity,
    /// The reviewer is not in the batch's group.
    NotInGroup,
    /// The reviewer started the run.
    SelfApproval,
    /// The reviewer is one of the batch's agents.
    AgentOfBatch,
    /// The batch was already decided (or closed).
    AlreadyDecided,
    /// The batch expired.
    Expired,
    /// The decision quotes another binding than the batch's.
    BindingMismatch,
    /// The run is over.
    RunEnded,
}

impl RefuseKind {
    /// Snake-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            RefuseKind::BadIdentity => "bad_identity",
            RefuseKind::NotInGroup => "not_in_group",
            RefuseKind::SelfApproval => "self_approval",
            RefuseKind::AgentOfBatch => "agent_of_batch",
            RefuseKind::AlreadyDecided => "already_decided",
            RefuseKind::Expired => "expired",
            RefuseKind::BindingMismatch => "binding_mismatch",
            RefuseKind::RunEnded => "run_ended",
        }
    }
}

/// A new run. A start repeated with the same request id answers the
/// run it started, with its batches and ready steps as they are at the
/// time of the repeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunStartedReply {
    /// Run id.
    pub run: Uuid,
    /// Batches of the run, in opening order.
    pub batches: Vec<Uuid>,
    /// Steps ready now, in topological order.
    pub ready: Vec<String>,
}

/// The answer to a token request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum TokenReply {
    /// Here is the token.
    Issued {
        /// The signed JWT.
        token: String,
        /// Its id.
        jti: Uuid,
        /// Expiry, ms.
        exp: Millis,
        /// Scopes carried.
        scopes: Vec<String>,
        /// Approving batch for stepped-up tokens.
        approval: Option<Uuid>,
    },
    /// A reviewer must approve the batch first.
    Pending {
        /// The batch.
        batch: Uuid,
        /// Its reviewer group.
        group: String,
    },
    /// Policy or review said no.
    Denied {
        /// Why.
        reason: String,
        /// Policies that decided.
        policy_ids: Vec<String>,
    },
    /// The request was refused before policy.
    Rejected {
        /// Why, as data.
        kind: RejectKind,
        /// Why, in words.
        reason: String,
    },
    /// The run is paused (over its step-up budget).
    Paused {
        /// Why.
        reason: String,
    },
}

/// The answer to a review decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum DecisionReply {
    /// The decision was recorded.
    Applied {
        /// Batch id.
        batch: Uuid,
        /// True for approve.
        approved: bool,
        /// Approval expiry, ms.
        valid_until: Millis,
    },
    /// The decision was refused; the batch is unchanged.
    Refused {
        /// Why, as data.
        kind: RefuseKind,
        /// Why, in words.
        reason: String,
    },
}

/// The answer to a step completion or failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepReply {
    /// Steps that became ready.
    pub ready: Vec<String>,
    /// The run's status after.
    pub run_status: RunStatus,
    /// Tokens revoked.
    pub revoked: Vec<Uuid>,
}

/// A token request from an agent.
#[derive(Debug, Clone)]
pub struct TokenRequest<'a> {
    /// Run id.
    pub run: Uuid,
    /// Step id.
    pub step: &'a str,
    /// The agent's JWT-SVID.
    pub svid: &'a str,
    /// Scopes asked for.
    pub scopes: &'a ScopeSet,
    /// The intent the agent states, if any; must be the step's.
    pub intent: Option<&'a str>,
}

/// A review decision.
#[derive(Debug, Clone)]
pub struct ReviewDecision<'a> {
    /// Batch id.
    pub batch: Uuid,
    /// The reviewer's JWT-SVID.
    pub svid: &'a str,
    /// True for approve.
    pub approve: bool,
    /// The binding digest the reviewer was shown.
    pub binding: &'a str,
    /// Optional words.
    pub comment: Option<&'a str>,
}

/// The state machine: state plus the events emitted since the last
/// [`Engine::take_events`].
#[derive(Debug, Default)]
pub struct Engine {
    state: State,
    pending: Vec<Event>,
}

impl Engine {
    /// An engine with no history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds an engine from `(at, event)` pairs in log order.
    pub fn replay<'e>(
        events: impl IntoIterator<Item = (Millis, &'e Event)>,
    ) -> Result<Self, ApplyError> {
        let mut state = State::default();
        for (at, event) in events {
            state.apply(at, event)?;
        }
        Ok(Self {
            state,
            pending: vec![],
        })
    }

    /// The current state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Takes the events emitted since the last call, in order.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.pending)
    }

    /// Drops emitted events and restores `state`; used when the store
    /// could not persist them.
    pub fn reset(&mut self, state: State) {
        self.state = state;
        self.pending.clear();
    }

    fn emit(&mut self, now: Millis, event: Event) -> Result<(), EngineError> {
        self.state.apply(now, &event)?;
        self.pending.push(event);
        Ok(())
    }

    /// Records a new signing key.
    pub fn key_created(&mut self, now: Millis, kid: &str) -> Result<(), EngineError> {
        if self.state.kids.iter().any(|k| k == kid) {
            return Ok(());
        }
        self.emit(
            now,
            Event::KeyCreated {
                kid: kid.to_string(),
            },
        )
    }

    /// Starts a run of `workflow` for the holder of `svid`, opening the
    /// review batches the plan calls for.
    ///
    /// With a `request_id` the start is idempotent per requester: when the
    /// same requester already started a run with that key, nothing is
    /// appended and the answer names that run (its batches and ready steps
    /// as they are now). The same key with another workflow is
    /// [`EngineError::RequestIdReused`].
    pub fn start_run(
        &mut self,
        env: &mut Env<'_>,
        svid: &str,
        workflow: &Workflow,
        request_id: Option<&RequestId>,
    ) -> Result<RunStartedReply, EngineError> {
        let requester =
            verify_svid(svid, env.trust, &env.config.svid_audience, env.now / 1000)?.spiffe_id;
        if let Some(key) = request_id {
            if let Some(reply) = self.started_before(&requester, key, workflow)? {
                return Ok(reply);
            }
        }
        self.open_run(env, &requester, workflow, request_id)
    }

    /// The answer to a start `requester` already made with `key`, if any.
    fn started_before(
        &self,
        requester: &SpiffeId,
        key: &RequestId,
        workflow: &Workflow,
    ) -> Result<Option<RunStartedReply>, EngineError> {
        let Some(run) = self.state.run_by_request(requester.as_str(), key.as_str()) else {
            return Ok(None);
        };
        if run.workflow.digest() != workflow.digest() {
            return Err(EngineError::RequestIdReused {
                request_id: key.to_string(),
                run: run.id,
            });
        }
        Ok(Some(RunStartedReply {
            run: run.id,
            batches: run.batches.clone(),
            ready: ready_steps(run),
        }))
    }

    /// Records a new run, its batches and its first ready steps.
    fn open_run(
        &mut self,
        env: &mut Env<'_>,
        requester: &SpiffeId,
        workflow: &Workflow,
        request_id: Option<&RequestId>,
    ) -> Result<RunStartedReply, EngineError> {
        let now = env.now;
        let run = env.ids.next_id(now);
        let deadline_ms = i64::try_from(workflow.deadline_secs).unwrap_or(i64::MAX / 2_000) * 1000;
        self.emit(
            now,
            Event::RunStarted {
                run,
                requester: requester.to_string(),
                workflow: workflow.name.clone(),
                workflow_digest: workflow.digest().to_string(),
                workflow_json: workflow.to_canonical_json(),
                policy_digest: env.policy.digest().to_string(),
                deadline: now.saturating_add(deadline_ms),
                stepup_budget: workflow.stepup_budget,
                request_id: request_id.map(ToString::to_string),
            },
        )?;

        let (_, planned) = preview(workflow, env.policy, &run.to_string(), now / 1000);
        let mut batches = vec![];
        for planned_batch in planned {
            let items: Vec<_> = planned_batch
                .steps
                .iter()
                .filter_map(|s| {
                    workflow
                        .step(&s.step)
                        .map(|step| item_for(step, &s.policy_ids))
                })
                .collect();
            let batch = env.ids.next_id(now);
            let binding = binding_digest(&batch, &run, &planned_batch.group, &items);
            let expires_at = now + env.config.batch_ttl_secs * 1000;
            self.emit(
                now,
                Event::BatchOpened {
                    batch,
                    run,
                    group: planned_batch.group,
                    items,
                    binding,
                    expires_at,
                },
            )?;
            batches.push(batch);
        }

        let ready: Vec<String> = workflow
            .topo_order()
            .filter(|s| s.depends_on.is_empty())
            .map(|s| s.id.clone())
            .collect();
        for step in &ready {
            self.emit(
                now,
                Event::StepReady {
                    run,
                    step: step.clone(),
                },
            )?;
        }
        Ok(RunStartedReply {
            run,
            batches,
            ready,
        })
    }

    /// Answers an agent's request for its step's token.
    pub fn request_token(
        &mut self,
        env: &mut Env<'_>,
        req: &TokenRequest<'_>,
    ) -> Result<TokenReply, EngineError> {
        let now = env.now;
        let workflow = self.run(req.run)?.workflow.clone();
        let step = step_of(&workflow, req.run, req.step)?;
        let svid_digest = sha256_text(req.svid);

        // Identity first: nothing about the run is revealed to a caller
        // whose identity does not verify.
        let agent = match verify_svid(req.svid, env.trust, &env.config.svid_audience, now / 1000) {
            Ok(v) => v.spiffe_id,
            Err(e) => {
                return self.reject(
                    now,
                    req,
                    None,
                    &svid_digest,
                    RejectKind::BadIdentity,
                    format!("identity: {e}"),
                );
            }
        };
        if let Some((kind, reason)) = self.precheck(req, &agent, step) {
            // Every other precheck passed: the step's own agent asks for a
            // step that holds a live token. A retry gets the same token.
            if kind == RejectKind::TokenLive {
                if let Some(reply) = self.redeliver(env, req, &agent, &svid_digest)? {
                    return Ok(reply);
                }
            }
            return self.reject(now, req, Some(&agent), &svid_digest, kind, reason);
        }

        self.emit(
            now,
            Event::TokenRequested {
                run: req.run,
                step: step.id.clone(),
                agent: agent.to_string(),
                scopes: req.scopes.to_strings(),
                svid_digest,
            },
        )?;
        let decision = {
            let run = self.run(req.run)?;
            // Step-ups of *other* steps: a step asking again after its
            // approval must not count against itself.
            let own = run.steps.get(&step.id).is_some_and(|s| s.stepped_up);
            let so_far = run.stepups - u32::from(own);
            let run_id = req.run.to_string();
            let facts = Facts::for_step(
                &workflow,
                step,
                &run_id,
                &agent,
                req.scopes,
                so_far,
                now / 1000,
            );
            env.policy.decide(&facts)
        };
        self.emit(
            now,
            Event::Decided {
                run: req.run,
                step: step.id.clone(),
                outcome: decision.outcome.clone(),
                policy_ids: decision.policy_ids.clone(),
                policy_digest: decision.policy_digest.clone(),
                errors: decision.errors.clone(),
                reason: decision.reason.clone(),
                scopes: req.scopes.to_strings(),
            },
        )?;

        match decision.outcome {
            Outcome::Deny => Ok(TokenReply::Denied {
                reason: decision.reason,
                policy_ids: decision.policy_ids,
            }),
            Outcome::Allow => self.issue(env, req, &agent, None, None),
            Outcome::StepUp { group } => {
                self.step_up(env, req, &agent, &group, &decision.policy_ids)
            }
        }
    }

    /// Hands the step's live token out again when `agent` asks with
    /// exactly the scopes it carries.
    ///
    /// The token itself is never stored: it is re-signed from its
    /// `token_issued` facts (Ed25519 signatures are deterministic) and
    /// returned only when the result matches the recorded digest under the
    /// same key id. `None` means the request stays a `token_live` reject:
    /// other scopes, a lapsed token, a changed issuer or a new key.
    fn redeliver(
        &mut self,
        env: &Env<'_>,
        req: &TokenRequest<'_>,
        agent: &SpiffeId,
        svid_digest: &str,
    ) -> Result<Option<TokenReply>, EngineError> {
        let Some(record) = self.live_token(req.run, req.step, env.now).cloned() else {
            return Ok(None);
        };
        let same_holder = record.sub == agent.as_str() && record.scopes == req.scopes.to_strings();
        if !same_holder || record.kid != env.minter.kid() {
            return Ok(None);
        }
        let workflow = self.run(req.run)?.workflow.clone();
        let step = step_of(&workflow, req.run, req.step)?;
        let claims = Grant::of_record(&record, &workflow, step).claims(&env.config.issuer);
        let Ok(token) = env.minter.mint(&claims) else {
            return Ok(None);
        };
        if sha256_text(&token) != record.digest {
            return Ok(None);
        }
        self.emit(
            env.now,
            Event::TokenRedelivered {
                run: req.run,
                step: record.step.clone(),
                jti: record.jti,
                agent: agent.to_string(),
                svid_digest: svid_digest.to_string(),
            },
        )?;
        Ok(Some(TokenReply::Issued {
            token,
            jti: record.jti,
            exp: record.exp,
            scopes: record.scopes,
            approval: record.approval,
        }))
    }

    /// The step's token, when it is live at `now`.
    fn live_token(&self, run: Uuid, step: &str, now: Millis) -> Option<&TokenRecord> {
        let jti = self.state.runs.get(&run)?.steps.get(step)?.live_token?;
        self.state.tokens.get(&jti).filter(|t| t.is_live_at(now))
    }

    /// Checks that need no policy: agent, scopes, intent, step and run state.
    fn precheck(
        &self,
        req: &TokenRequest<'_>,
        agent: &SpiffeId,
        step: &crate::workflow::Step,
    ) -> Option<(RejectKind, String)> {
        let run = self.state.runs.get(&req.run)?;
        let state = run.steps.get(&step.id)?;
        if run.status == RunStatus::Paused {
            return Some((
                RejectKind::RunPaused,
                format!("run {} is paused over its step-up budget", run.id),
            ));
        }
        if run.status != RunStatus::Active {
            let status = serde_json::to_string(&run.status).unwrap_or_default();
            return Some((
                RejectKind::RunNotActive,
                format!("run {} is {}", run.id, status.trim_matches('"')),
            ));
        }
        if *agent != step.agent {
            return Some((
                RejectKind::WrongAgent,
                format!(
                    "step `{}` is performed by `{}`, not `{agent}`",
                    step.id, step.agent
                ),
            ));
        }
        match state.status {
            StepStatus::Waiting => {
                return Some((
                    RejectKind::StepNotReady,
                    format!(
                        "step `{}` waits for {}",
                        step.id,
                        step.depends_on.join(", ")
                    ),
                ));
            }
            StepStatus::Completed | StepStatus::Failed => {
                return Some((
                    RejectKind::StepFinished,
                    format!("step `{}` is already finished", step.id),
                ));
            }
            StepStatus::Ready => {}
        }
        if req.scopes.is_empty() {
            return Some((
                RejectKind::NoScopes,
                "no scopes asked for; name the scopes the action needs".into(),
            ));
        }
        let excess = req.scopes.excess_over(&step.scopes);
        if !excess.is_empty() {
            let names: Vec<String> = excess.iter().map(|s| format!("`{s}`")).collect();
            return Some((
                RejectKind::ScopeExcess,
                format!(
                    "step `{}` does not declare {}; nothing was issued",
                    step.id,
                    names.join(", ")
                ),
            ));
        }
        if req.intent.is_some_and(|i| i.trim() != step.intent) {
            return Some((
                RejectKind::IntentMismatch,
                format!(
                    "the stated intent is not the intent declared for step `{}`",
                    step.id
                ),
            ));
        }
        if let Some(jti) = state.live_token {
            if self
                .state
                .tokens
                .get(&jti)
                .is_some_and(|t| t.status == TokenStatus::Live)
            {
                return Some((
                    RejectKind::TokenLive,
                    format!(
                        "step `{}` already holds live token {jti}; only a request with its scopes gets it again",
                        step.id
                    ),
                ));
            }
        }
        None
    }

    fn reject(
        &mut self,
        now: Millis,
        req: &TokenRequest<'_>,
        agent: Option<&SpiffeId>,
        svid_digest: &str,
        kind: RejectKind,
        reason: String,
    ) -> Result<TokenReply, EngineError> {
        self.emit(
            now,
            Event::RequestRejected {
                run: req.run,
                step: req.step.to_string(),
                agent: agent.map(ToString::to_string),
                svid_digest: svid_digest.to_string(),
                kind: kind.as_str().to_string(),
                reason: reason.clone(),
            },
        )?;
        Ok(TokenReply::Rejected { kind, reason })
    }

    fn step_up(
        &mut self,
        env: &mut Env<'_>,
        req: &TokenRequest<'_>,
        agent: &SpiffeId,
        group: &str,
        policy_ids: &[String],
    ) -> Result<TokenReply, EngineError> {
        let now = env.now;
        let run = self.run(req.run)?;
        if run.stepups > run.budget || run.status == RunStatus::Paused {
            let reason = format!(
                "run made {} step-ups; its budget is {}",
                run.stepups, run.budget
            );
            if run.status != RunStatus::Paused {
                self.emit(
                    now,
                    Event::RunPaused {
                        run: req.run,
                        reason: reason.clone(),
                    },
                )?;
            }
            return Ok(TokenReply::Paused { reason });
        }
        let batch_id = match run.steps.get(req.step).and_then(|s| s.batch) {
            Some(id) => id,
            None => self.open_single_batch(env, req, group, policy_ids)?,
        };
        let batch = self
            .state
            .batches
            .get(&batch_id)
            .ok_or(EngineError::UnknownBatch(batch_id))?
            .clone();
        match batch.status {
            BatchStatus::Pending => Ok(TokenReply::Pending {
                batch: batch_id,
                group: batch.group,
            }),
            BatchStatus::Approved { valid_until, .. } if valid_until > now => {
                self.issue(env, req, agent, Some(batch_id), Some(valid_until))
            }
            BatchStatus::Approved { .. } => Ok(TokenReply::Denied {
                reason: format!("the approval of batch {batch_id} has lapsed"),
                policy_ids: policy_ids.to_vec(),
            }),
            BatchStatus::Denied { by } => Ok(TokenReply::Denied {
                reason: format!("batch {batch_id} was denied by {by}"),
                policy_ids: policy_ids.to_vec(),
            }),
            BatchStatus::Expired | BatchStatus::Withdrawn => Ok(TokenReply::Denied {
                reason: format!("batch {batch_id} closed undecided"),
                policy_ids: policy_ids.to_vec(),
            }),
        }
    }

    /// A step-up the plan did not foresee (the policy changed its mind at
    /// run time) gets a batch of its own.
    fn open_single_batch(
        &mut self,
        env: &mut Env<'_>,
        req: &TokenRequest<'_>,
        group: &str,
        policy_ids: &[String],
    ) -> Result<Uuid, EngineError> {
        let now = env.now;
        let workflow = self.run(req.run)?.workflow.clone();
        let step = step_of(&workflow, req.run, req.step)?;
        let batch = env.ids.next_id(now);
        let items = vec![item_for(step, policy_ids)];
        let binding = binding_digest(&batch, &req.run, group, &items);
        let expires_at = now + env.config.batch_ttl_secs * 1000;
        self.emit(
            now,
            Event::BatchOpened {
                batch,
                run: req.run,
                group: group.to_string(),
                items,
                binding,
                expires_at,
            },
        )?;
        Ok(batch)
    }

    fn issue(
        &mut self,
        env: &mut Env<'_>,
        req: &TokenRequest<'_>,
        agent: &SpiffeId,
        approval: Option<Uuid>,
        approval_until: Option<Millis>,
    ) -> Result<TokenReply, EngineError> {
        let now = env.now;
        let run = self.run(req.run)?;
        let workflow = run.workflow.clone();
        let step = step_of(&workflow, req.run, req.step)?;

        // exp is the earliest of: step TTL, the default token TTL, the
        // approval's expiry and the run's deadline — in whole seconds.
        let step_ttl = i64::try_from(step.ttl_secs).unwrap_or(i64::MAX / 2_000) * 1000;
        let mut exp = (now + step_ttl)
            .min(now + env.config.token_ttl_secs * 1000)
            .min(run.deadline);
        if let Some(until) = approval_until {
            exp = exp.min(until);
        }
        let (iat_s, exp_s) = (now / 1000, exp / 1000);
        if exp_s <= iat_s {
            return Ok(TokenReply::Denied {
                reason: "no time is left before the run's deadline or the approval's expiry".into(),
                policy_ids: vec![],
            });
        }
        let jti = env.ids.next_id(now);
        let scopes = req.scopes.to_strings();
        let grant = Grant {
            run: req.run,
            workflow: &workflow,
            step,
            jti,
            sub: agent.as_str(),
            aud: &step.resource,
            scopes: &scopes,
            iat_s,
            exp_s,
            approval,
        };
        let token = match env.minter.mint(&grant.claims(&env.config.issuer)) {
            Ok(t) => t,
            Err(e) => {
                return Ok(TokenReply::Denied {
                    reason: format!("signing failed: {e}"),
                    policy_ids: vec![],
                })
            }
        };
        self.emit(
            now,
            Event::TokenIssued {
                run: req.run,
                step: step.id.clone(),
                jti,
                digest: sha256_text(&token),
                kid: env.minter.kid().to_string(),
                sub: agent.to_string(),
                aud: step.resource.clone(),
                scopes: scopes.clone(),
                iat: iat_s * 1000,
                exp: exp_s * 1000,
                approval,
            },
        )?;
        Ok(TokenReply::Issued {
            token,
            jti,
            exp: exp_s * 1000,
            scopes,
            approval,
        })
    }

    /// Records a reviewer's decision on a batch.
    ///
    /// A decision the same reviewer already made on the batch, with the
    /// same verdict and binding, is answered as it was the first time
    /// (`applied`, the same `valid_until`) and appends nothing; the first
    /// comment stays on record. Any other decision on a decided batch is
    /// refused as `already_decided`.
    pub fn decide_batch(
        &mut self,
        env: &mut Env<'_>,
        d: &ReviewDecision<'_>,
    ) -> Result<DecisionReply, EngineError> {
        let now = env.now;
        let batch = self
            .state
            .batches
            .get(&d.batch)
            .ok_or(EngineError::UnknownBatch(d.batch))?
            .clone();
        let reviewer = match verify_svid(d.svid, env.trust, &env.config.svid_audience, now / 1000) {
            Ok(v) => v.spiffe_id,
            Err(e) => {
                return self.refuse(
                    now,
                    &batch,
                    None,
                    RefuseKind::BadIdentity,
                    format!("identity: {e}"),
                )
            }
        };
        if let Some(reply) = decided_before(&batch, &reviewer, d) {
            return Ok(reply);
        }
        let run = self.run(batch.run)?;
        let check = if batch.status != BatchStatus::Pending {
            let status = serde_json::to_value(&batch.status).ok();
            let state = status
                .as_ref()
                .and_then(|v| v.get("state"))
                .and_then(|v| v.as_str())
                .unwrap_or("closed");
            Some((
                RefuseKind::AlreadyDecided,
                format!("batch {} is already {state}", batch.id),
            ))
        } else if run.status.is_final() {
            Some((RefuseKind::RunEnded, format!("run {} has ended", run.id)))
        } else if now >= batch.expires_at {
            Some((RefuseKind::Expired, format!("batch {} expired", batch.id)))
        } else if !env.reviewers.is_member(&batch.group, &reviewer) {
            Some((
                RefuseKind::NotInGroup,
                format!("`{reviewer}` is not in reviewer group `{}`", batch.group),
            ))
        } else if run.requester == reviewer.as_str() {
            Some((
                RefuseKind::SelfApproval,
                format!("`{reviewer}` started run {} and may not review it", run.id),
            ))
        } else if batch.items.iter().any(|i| i.agent == reviewer.as_str()) {
            Some((
                RefuseKind::AgentOfBatch,
                format!("`{reviewer}` is an agent of this batch"),
            ))
        } else if d.binding != batch.binding {
            Some((
                RefuseKind::BindingMismatch,
                "the decision quotes a different binding than the batch shows".to_string(),
            ))
        } else {
            None
        };
        if let Some((kind, reason)) = check {
            return self.refuse(now, &batch, Some(&reviewer), kind, reason);
        }

        let valid_until = (now + env.config.approval_ttl_secs * 1000).min(run.deadline);
        self.emit(
            now,
            Event::BatchDecided {
                batch: batch.id,
                run: batch.run,
                approved: d.approve,
                reviewer: reviewer.to_string(),
                binding: batch.binding.clone(),
                comment: d.comment.map(|c| c.chars().take(1000).collect()),
                valid_until,
            },
        )?;
        Ok(DecisionReply::Applied {
            batch: batch.id,
            approved: d.approve,
            valid_until,
        })
    }

    fn refuse(
        &mut self,
        now: Millis,
        batch: &Batch,
        reviewer: Option<&SpiffeId>,
        kind: RefuseKind,
        reason: String,
    ) -> Result<DecisionReply, EngineError> {
        self.emit(
            now,
            Event::DecisionRefused {
                batch: batch.id,
                run: batch.run,
                reviewer: reviewer.map(ToString::to_string),
                kind: kind.as_str().to_string(),
                reason: reason.clone(),
            },
        )?;
        Ok(DecisionReply::Refused { kind, reason })
    }

    /// The step's agent reports it done: its token is revoked and the
    /// steps that waited on it become ready.
    ///
    /// Repeated by the step's agent after the step completed, it appends
    /// nothing and answers again: the step's revoked token, the steps that
    /// depend on it and are ready now, and the run's status now. The first
    /// summary stays on record.
    pub fn complete_step(
        &mut self,
        env: &mut Env<'_>,
        run: Uuid,
        step: &str,
        svid: &str,
        summary: &str,
    ) -> Result<StepReply, EngineError> {
        let now = env.now;
        if let Some(reply) = self.check_step_owner(env, run, step, svid, StepStatus::Completed)? {
            return Ok(reply);
        }
        let revoked = self.revoke_step(now, run, step, RevokeReason::StepCompleted)?;
        self.emit(
            now,
            Event::StepCompleted {
                run,
                step: step.to_string(),
                summary: summary.chars().take(500).collect(),
            },
        )?;

        let r = self.run(run)?;
        let workflow = r.workflow.clone();
        let done = |id: &str| {
            r.steps
                .get(id)
                .is_some_and(|s| s.status == StepStatus::Completed)
        };
        let ready: Vec<String> = workflow
            .topo_order()
            .filter(|s| {
                r.steps
                    .get(&s.id)
                    .is_some_and(|st| st.status == StepStatus::Waiting)
            })
            .filter(|s| s.depends_on.iter().all(|d| done(d)))
            .map(|s| s.id.clone())
            .collect();
        let all_done = workflow.steps().iter().all(|s| done(&s.id));
        for id in &ready {
            self.emit(
                now,
                Event::StepReady {
                    run,
                    step: id.clone(),
                },
            )?;
        }
        if all_done {
            self.close_batches(now, run, "run completed")?;
            self.emit(now, Event::RunCompleted { run })?;
        }
        Ok(StepReply {
            ready,
            run_status: self.run(run)?.status,
            revoked,
        })
    }

    /// The step's agent reports it failed: the run fails and every live
    /// token of it is revoked.
    ///
    /// Repeated by the step's agent after the step failed, it appends
    /// nothing and answers the tokens the failure revoked and the run's
    /// status. The first reason stays on record.
    pub fn fail_step(
        &mut self,
        env: &mut Env<'_>,
        run: Uuid,
        step: &str,
        svid: &str,
        reason: &str,
    ) -> Result<StepReply, EngineError> {
        let now = env.now;
        if let Some(reply) = self.check_step_owner(env, run, step, svid, StepStatus::Failed)? {
            return Ok(reply);
        }
        let mut revoked = self.revoke_step(now, run, step, RevokeReason::StepFailed)?;
        self.emit(
            now,
            Event::StepFailed {
                run,
                step: step.to_string(),
                reason: reason.chars().take(500).collect(),
            },
        )?;
        revoked.extend(self.revoke_run(now, run, RevokeReason::StepFailed)?);
        self.close_batches(now, run, "run failed")?;
        self.emit(
            now,
            Event::RunFailed {
                run,
                step: step.to_string(),
            },
        )?;
        Ok(StepReply {
            ready: vec![],
            run_status: RunStatus::Failed,
            revoked,
        })
    }

    /// Checks that the holder of `svid` may end `step` with `outcome`
    /// (`Completed` or `Failed`). `Some` is the answer to a repeat: the
    /// step already ended that way.
    fn check_step_owner(
        &self,
        env: &Env<'_>,
        run: Uuid,
        step: &str,
        svid: &str,
        outcome: StepStatus,
    ) -> Result<Option<StepReply>, EngineError> {
        let agent =
            verify_svid(svid, env.trust, &env.config.svid_audience, env.now / 1000)?.spiffe_id;
        let r = self.run(run)?;
        let declared = step_of(&r.workflow, run, step)?;
        if declared.agent != agent {
            return Err(EngineError::Forbidden(format!(
                "step `{step}` is performed by `{}`, not `{agent}`",
                declared.agent
            )));
        }
        let state = r.steps.get(step).ok_or_else(|| EngineError::UnknownStep {
            run,
            step: step.to_string(),
        })?;
        if state.status == outcome {
            return Ok(Some(self.ended_before(r, step, outcome)));
        }
        if r.status.is_final() {
            return Err(EngineError::Conflict(format!("run {run} has ended")));
        }
        if state.status != StepStatus::Ready {
            return Err(EngineError::Conflict(format!(
                "step `{step}` is not in progress"
            )));
        }
        // Completing needs a token (the work was authorized); failing does not:
        // a denied step fails without one.
        if outcome == StepStatus::Completed && state.tokens.is_empty() {
            return Err(EngineError::Conflict(format!(
                "step `{step}` never received a token"
            )));
        }
        Ok(None)
    }

    /// The answer to a completion or failure of `step` repeated after the
    /// step ended with `outcome`, rebuilt from the state.
    fn ended_before(&self, r: &Run, step: &str, outcome: StepStatus) -> StepReply {
        if outcome == StepStatus::Failed {
            // The failed step's tokens first, then the rest of the run's,
            // as the failure revoked them.
            let others = r.steps.keys().filter(|s| s.as_str() != step);
            let order = std::iter::once(step).chain(others.map(String::as_str));
            return StepReply {
                ready: vec![],
                run_status: r.status,
                revoked: self.revoked_in(r, order, RevokeReason::StepFailed),
            };
        }
        let ready = ready_steps(r)
            .into_iter()
            .filter(|id| {
                r.workflow
                    .step(id)
                    .is_some_and(|s| s.depends_on.iter().any(|d| d == step))
            })
            .collect();
        StepReply {
            ready,
            run_status: r.status,
            revoked: self.revoked_in(r, [step], RevokeReason::StepCompleted),
        }
    }

    /// Tokens of `steps` of `r` revoked for `reason`, step by step in
    /// issue order.
    fn revoked_in<'s>(
        &self,
        r: &Run,
        steps: impl IntoIterator<Item = &'s str>,
        reason: RevokeReason,
    ) -> Vec<Uuid> {
        let revoked_for = |jti: &&Uuid| {
            self.state.tokens.get(*jti).is_some_and(
                |t| matches!(t.status, TokenStatus::Revoked { reason: why, .. } if why == reason),
            )
        };
        steps
            .into_iter()
            .filter_map(|s| r.steps.get(s))
            .flat_map(|s| s.tokens.iter().filter(revoked_for).copied())
            .collect()
    }

    /// Cancels a run: revokes every live token and closes its batches.
    /// The requester or any reviewer may cancel.
    pub fn cancel_run(
        &mut self,
        env: &mut Env<'_>,
        run: Uuid,
        svid: &str,
        reason: &str,
    ) -> Result<Vec<Uuid>, EngineError> {
        let now = env.now;
        let who = verify_svid(svid, env.trust, &env.config.svid_audience, now / 1000)?.spiffe_id;
        let r = self.run(run)?;
        if r.requester != who.as_str() && !env.reviewers.is_reviewer(&who) {
            return Err(EngineError::Forbidden(format!(
                "`{who}` neither started run {run} nor reviews"
            )));
        }
        if r.status.is_final() {
            return Err(EngineError::Conflict(format!(
                "run {run} has already ended"
            )));
        }
        let revoked = self.revoke_run(now, run, RevokeReason::RunCancelled)?;
        self.close_batches(now, run, "run cancelled")?;
        self.emit(
            now,
            Event::RunCancelled {
                run,
                by: who.to_string(),
                reason: reason.chars().take(500).collect(),
            },
        )?;
        Ok(revoked)
    }

    /// Lets a paused run go on with `extra` more step-ups. Reviewers only.
    pub fn resume_run(
        &mut self,
        env: &mut Env<'_>,
        run: Uuid,
        svid: &str,
        extra: u32,
    ) -> Result<(), EngineError> {
        let now = env.now;
        let who = verify_svid(svid, env.trust, &env.config.svid_audience, now / 1000)?.spiffe_id;
        if !env.reviewers.is_reviewer(&who) {
            return Err(EngineError::Forbidden(format!("`{who}` is not a reviewer")));
        }
        let r = self.run(run)?;
        if r.requester == who.as_str() {
            return Err(EngineError::Forbidden(format!(
                "`{who}` started run {run} and may not resume it"
            )));
        }
        if r.status != RunStatus::Paused {
            return Err(EngineError::Conflict(format!("run {run} is not paused")));
        }
        self.emit(
            now,
            Event::RunResumed {
                run,
                by: who.to_string(),
                extra_budget: extra,
            },
        )
    }

    /// Expires what is due at `now`: tokens past `exp`, undecided batches,
    /// runs past their deadline. Returns true when it emitted anything.
    pub fn tick(&mut self, now: Millis) -> Result<bool, EngineError> {
        let before = self.pending.len();
        let expired: Vec<(Uuid, String, Uuid)> = self
            .state
            .tokens
            .values()
            .filter(|t| t.status == TokenStatus::Live && t.exp <= now)
            .map(|t| (t.run, t.step.clone(), t.jti))
            .collect();
        for (run, step, jti) in expired {
            self.emit(now, Event::TokenExpired { run, step, jti })?;
        }
        let due: Vec<(Uuid, Uuid)> = self
            .state
            .batches
            .values()
            .filter(|b| b.status == BatchStatus::Pending && b.expires_at <= now)
            .map(|b| (b.id, b.run))
            .collect();
        for (batch, run) in due {
            self.emit(now, Event::BatchExpired { batch, run })?;
        }
        let late: Vec<Uuid> = self
            .state
            .runs
            .values()
            .filter(|r| !r.status.is_final() && r.deadline <= now)
            .map(|r| r.id)
            .collect();
        for run in late {
            self.revoke_run(now, run, RevokeReason::RunDeadline)?;
            self.close_batches(now, run, "run deadline passed")?;
            self.emit(
                now,
                Event::RunCancelled {
                    run,
                    by: "deadline".into(),
                    reason: "the run's deadline passed".into(),
                },
            )?;
        }
        Ok(self.pending.len() > before)
    }

    fn revoke_step(
        &mut self,
        now: Millis,
        run: Uuid,
        step: &str,
        reason: RevokeReason,
    ) -> Result<Vec<Uuid>, EngineError> {
        let live = self.run(run)?.steps.get(step).and_then(|s| s.live_token);
        let live = live.filter(|jti| {
            self.state
                .tokens
                .get(jti)
                .is_some_and(|t| t.status == TokenStatus::Live)
        });
        match live {
            Some(jti) => {
                self.emit(
                    now,
                    Event::TokenRevoked {
                        run,
                        step: step.to_string(),
                        jti,
                        reason,
                    },
                )?;
                Ok(vec![jti])
            }
            None => Ok(vec![]),
        }
    }

    fn revoke_run(
        &mut self,
        now: Millis,
        run: Uuid,
        reason: RevokeReason,
    ) -> Result<Vec<Uuid>, EngineError> {
        let steps: Vec<String> = self.run(run)?.steps.keys().cloned().collect();
        let mut revoked = vec![];
        for step in steps {
            revoked.extend(self.revoke_step(now, run, &step, reason)?);
        }
        Ok(revoked)
    }

    fn close_batches(&mut self, now: Millis, run: Uuid, reason: &str) -> Result<(), EngineError> {
        let open: Vec<Uuid> = self
            .run(run)?
            .batches
            .iter()
            .filter(|b| {
                self.state
                    .batches
                    .get(b)
                    .is_some_and(|b| b.status == BatchStatus::Pending)
            })
            .copied()
            .collect();
        for batch in open {
            self.emit(
                now,
                Event::BatchWithdrawn {
                    batch,
                    run,
                    reason: reason.to_string(),
                },
            )?;
        }
        Ok(())
    }

    fn run(&self, run: Uuid) -> Result<&super::state::Run, EngineError> {
        self.state
            .runs
            .get(&run)
            .ok_or(EngineError::UnknownRun(run))
    }
}

/// The declared step `step` of `run`'s workflow.
fn step_of<'w>(
    workflow: &'w Workflow,
    run: Uuid,
    step: &str,
) -> Result<&'w crate::workflow::Step, EngineError> {
    workflow.step(step).ok_or_else(|| EngineError::UnknownStep {
        run,
        step: step.to_string(),
    })
}

/// The steps of `run` that are ready now, in topological order.
fn ready_steps(run: &Run) -> Vec<String> {
    run.workflow
        .topo_order()
        .filter(|s| {
            run.steps
                .get(&s.id)
                .is_some_and(|st| st.status == StepStatus::Ready)
        })
        .map(|s| s.id.clone())
        .collect()
}

/// Everything a step token says, before it is signed. Issuing builds it
/// from the request; redelivery rebuilds it from the `token_issued` facts,
/// so both paths sign exactly the same claims.
struct Grant<'a> {
    run: Uuid,
    workflow: &'a Workflow,
    step: &'a Step,
    jti: Uuid,
    sub: &'a str,
    aud: &'a str,
    /// Sorted, as [`ScopeSet::to_strings`] gives them.
    scopes: &'a [String],
    iat_s: i64,
    exp_s: i64,
    approval: Option<Uuid>,
}

impl<'a> Grant<'a> {
    /// The grant a recorded token was signed from. The record holds times
    /// in ms, always whole seconds.
    fn of_record(record: &'a TokenRecord, workflow: &'a Workflow, step: &'a Step) -> Self {
        Self {
            run: record.run,
            workflow,
            step,
            jti: record.jti,
            sub: &record.sub,
            aud: &record.aud,
            scopes: &record.scopes,
            iat_s: record.iat / 1000,
            exp_s: record.exp / 1000,
            approval: record.approval,
        }
    }

    /// The JWT claims, with `iss` from the engine's settings.
    fn claims(&self, issuer: &str) -> StepClaims {
        StepClaims {
            iss: issuer.to_string(),
            sub: self.sub.to_string(),
            aud: self.aud.to_string(),
            scope: self.scopes.join(" "),
            exp: self.exp_s,
            iat: self.iat_s,
            nbf: self.iat_s,
            jti: self.jti.to_string(),
            run: self.run.to_string(),
            step: self.step.id.clone(),
            wf: self.workflow.digest().to_string(),
            intent: sha256_text(&self.step.intent),
            approval: self.approval.map(|b| b.to_string()),
            act: None,
            cnf: None,
        }
    }
}

/// The first answer to a decision `reviewer` already made on `batch` with
/// the same verdict and binding, if that is what `d` repeats.
fn decided_before(
    batch: &Batch,
    reviewer: &SpiffeId,
    d: &ReviewDecision<'_>,
) -> Option<DecisionReply> {
    let verdict = batch.verdict.as_ref()?;
    let same = verdict.reviewer == reviewer.as_str()
        && verdict.approved == d.approve
        && d.binding == batch.binding;
    same.then_some(DecisionReply::Applied {
        batch: batch.id,
        approved: verdict.approved,
        valid_until: verdict.valid_until,
    })
}
