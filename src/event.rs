//! Events: every state change of the engine, as data.
//!
//! The engine's state is the fold of these events (see [`crate::engine`]);
//! the store appends them to a hash-chained log (see [`crate::store`]) and
//! audit replays them offline (see [`crate::audit`]). Events name tokens by
//! `jti` and digest only — a token or a rejected credential never appears
//! here. Times are milliseconds since the Unix epoch.
//!
//! Stored events are versioned by the log envelope; new optional fields
//! get `#[serde(default)]` so that old logs keep reading.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::policy::Outcome;
use crate::workflow::Risk;

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// One step of a review batch, exactly as the reviewer is shown it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchItem {
    /// Step id.
    pub step: String,
    /// The agent that will act.
    pub agent: String,
    /// The step's action.
    pub action: String,
    /// The step's resource (token audience).
    pub resource: String,
    /// The scopes the token may carry.
    pub scopes: Vec<String>,
    /// The intent text.
    pub intent: String,
    /// `sha256:<hex>` of the intent text.
    pub intent_digest: String,
    /// `sha256:<hex>` of the sorted, space-joined scopes.
    pub scope_digest: String,
    /// Risk class.
    pub risk: Risk,
    /// Policy ids that asked for the review.
    pub policy_ids: Vec<String>,
}

/// Why a live token stopped being valid early.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokeReason {
    /// Its step completed.
    StepCompleted,
    /// Its step failed.
    StepFailed,
    /// Its run was cancelled.
    RunCancelled,
    /// Its run passed its deadline.
    RunDeadline,
}

impl RevokeReason {
    /// Snake-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            RevokeReason::StepCompleted => "step_completed",
            RevokeReason::StepFailed => "step_failed",
            RevokeReason::RunCancelled => "run_cancelled",
            RevokeReason::RunDeadline => "run_deadline",
        }
    }
}

/// Every state change the engine records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A signing key was created; tokens name it by `kid`.
    KeyCreated {
        /// RFC 7638 thumbprint of the public key.
        kid: String,
    },
    /// A run of a workflow started.
    RunStarted {
        /// Run id.
        run: Uuid,
        /// Who started it (SPIFFE ID).
        requester: String,
        /// Workflow name.
        workflow: String,
        /// Workflow digest.
        workflow_digest: String,
        /// The validated workflow, canonical JSON; replay re-reads it.
        workflow_json: String,
        /// Digest of the policy set in force.
        policy_digest: String,
        /// When the run must be over.
        deadline: Millis,
        /// Step-ups allowed before the run pauses.
        stepup_budget: u32,
        /// The requester's idempotency key, when the request carried one;
        /// a second start with the same key answers this run. Absent in
        /// logs written before keys existed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
    },
    /// A step's dependencies completed; its agent may ask for a token.
    StepReady {
        /// Run id.
        run: Uuid,
        /// Step id.
        step: String,
    },
    /// An agent with a verified identity asked for its step's token.
    TokenRequested {
        /// Run id.
        run: Uuid,
        /// Step id.
        step: String,
        /// The verified agent identity.
        agent: String,
        /// Scopes asked for, sorted.
        scopes: Vec<String>,
        /// Digest of the identity document presented.
        svid_digest: String,
    },
    /// A request for a step's token was refused before policy ran.
    RequestRejected {
        /// Run id.
        run: Uuid,
        /// Step id.
        step: String,
        /// Who asked, when the identity verified.
        agent: Option<String>,
        /// Digest of the identity document presented.
        svid_digest: String,
        /// Machine-readable kind (e.g. `wrong_agent`, `scope_excess`).
        kind: String,
        /// One line for people.
        reason: String,
    },
    /// Policy decided a request.
    Decided {
        /// Run id.
        run: Uuid,
        /// Step id.
        step: String,
        /// The outcome.
        outcome: Outcome,
        /// Policies that decided.
        policy_ids: Vec<String>,
        /// Digest of the policy set.
        policy_digest: String,
        /// Evaluation errors (non-empty means deny).
        errors: Vec<String>,
        /// Why, in words.
        reason: String,
        /// Scopes decided on, sorted.
        scopes: Vec<String>,
    },
    /// A review batch opened.
    BatchOpened {
        /// Batch id.
        batch: Uuid,
        /// Run id.
        run: Uuid,
        /// Reviewer group that must decide.
        group: String,
        /// The steps under review, in topological order.
        items: Vec<BatchItem>,
        /// Digest binding the decision to exactly these items.
        binding: String,
        /// When the batch expires undecided.
        expires_at: Millis,
    },
    /// A reviewer decided a batch.
    BatchDecided {
        /// Batch id.
        batch: Uuid,
        /// Run id.
        run: Uuid,
        /// True for approve.
        approved: bool,
        /// The reviewer's verified identity.
        reviewer: String,
        /// The binding digest the reviewer saw.
        binding: String,
        /// Optional words from the reviewer.
        comment: Option<String>,
        /// Until when the approval may be used.
        valid_until: Millis,
    },
    /// A batch expired undecided (or its approval lapsed unused).
    BatchExpired {
        /// Batch id.
        batch: Uuid,
        /// Run id.
        run: Uuid,
    },
    /// A batch was closed undecided because its run ended.
    BatchWithdrawn {
        /// Batch id.
        batch: Uuid,
        /// Run id.
        run: Uuid,
        /// Why.
        reason: String,
    },
    /// A review decision was refused; the batch is unchanged.
    DecisionRefused {
        /// Batch id.
        batch: Uuid,
        /// Run id.
        run: Uuid,
        /// The reviewer, when the identity verified.
        reviewer: Option<String>,
        /// Machine-readable kind (e.g. `self_approval`, `already_decided`).
        kind: String,
        /// One line for people.
        reason: String,
    },
    /// A token was signed. The token itself is never stored.
    TokenIssued {
        /// Run id.
        run: Uuid,
        /// Step id.
        step: String,
        /// Token id.
        jti: Uuid,
        /// `sha256:<hex>` of the token.
        digest: String,
        /// Signing key id.
        kid: String,
        /// The agent (token subject).
        sub: String,
        /// The audience.
        aud: String,
        /// Scopes carried, sorted.
        scopes: Vec<String>,
        /// Issued at.
        iat: Millis,
        /// Expires at.
        exp: Millis,
        /// The approving batch, for stepped-up tokens.
        approval: Option<Uuid>,
    },
    /// A live token was handed out again to its own agent, who asked for
    /// it with the same scopes (a retry after a lost reply). The token is
    /// re-signed from its `token_issued` facts, byte for byte the same;
    /// nothing else changes.
    TokenRedelivered {
        /// Run id.
        run: Uuid,
        /// Step id.
        step: String,
        /// Token id.
        jti: Uuid,
        /// The verified agent identity that asked again.
        agent: String,
        /// Digest of the identity document presented.
        svid_digest: String,
    },
    /// A token was revoked before it expired.
    TokenRevoked {
        /// Run id.
        run: Uuid,
        /// Step id.
        step: String,
        /// Token id.
        jti: Uuid,
        /// Why.
        reason: RevokeReason,
    },
    /// A token reached its `exp` while its step was still open.
    TokenExpired {
        /// Run id.
        run: Uuid,
        /// Step id.
        step: String,
        /// Token id.
        jti: Uuid,
    },
    /// An agent reported its step done.
    StepCompleted {
        /// Run id.
        run: Uuid,
        /// Step id.
        step: String,
        /// Short summary from the agent.
        summary: String,
    },
    /// An agent reported its step failed, or the step was denied.
    StepFailed {
        /// Run id.
        run: Uuid,
        /// Step id.
        step: String,
        /// Why.
        reason: String,
    },
    /// The run made more step-ups than its budget allows.
    RunPaused {
        /// Run id.
        run: Uuid,
        /// Why.
        reason: String,
    },
    /// An operator let a paused run go on.
    RunResumed {
        /// Run id.
        run: Uuid,
        /// Who resumed it.
        by: String,
        /// Extra step-ups granted.
        extra_budget: u32,
    },
    /// Every step completed.
    RunCompleted {
        /// Run id.
        run: Uuid,
    },
    /// A step failed, so the run cannot complete.
    RunFailed {
        /// Run id.
        run: Uuid,
        /// The step that failed.
        step: String,
    },
    /// The run was cancelled (by a person or by its deadline).
    RunCancelled {
        /// Run id.
        run: Uuid,
        /// Who cancelled it (`deadline` for the deadline).
        by: String,
        /// Why.
        reason: String,
    },
}

impl Event {
    /// The run the event belongs to, if any.
    pub fn run(&self) -> Option<Uuid> {
        use Event::*;
        match self {
            KeyCreated { .. } => None,
            RunStarted { run, .. }
            | StepReady { run, .. }
            | TokenRequested { run, .. }
            | RequestRejected { run, .. }
            | Decided { run, .. }
            | BatchOpened { run, .. }
            | BatchDecided { run, .. }
            | BatchExpired { run, .. }
            | BatchWithdrawn { run, .. }
            | DecisionRefused { run, .. }
            | TokenIssued { run, .. }
            | TokenRedelivered { run, .. }
            | TokenRevoked { run, .. }
            | TokenExpired { run, .. }
            | StepCompleted { run, .. }
            | StepFailed { run, .. }
            | RunPaused { run, .. }
            | RunResumed { run, .. }
            | RunCompleted { run }
            | RunFailed { run, .. }
            | RunCancelled { run, .. } => Some(*run),
        }
    }

    /// The snake-case name of the event type.
    pub fn kind(&self) -> &'static str {
        use Event::*;
        match self {
            KeyCreated { .. } => "key_created",
            RunStarted { .. } => "run_started",
            StepReady { .. } => "step_ready",
            TokenRequested { .. } => "token_requested",
            RequestRejected { .. } => "request_rejected",
            Decided { .. } => "decided",
            BatchOpened { .. } => "batch_opened",
            BatchDecided { .. } => "batch_decided",
            BatchExpired { .. } => "batch_expired",
            BatchWithdrawn { .. } => "batch_withdrawn",
            DecisionRefused { .. } => "decision_refused",
            TokenIssued { .. } => "token_issued",
            TokenRedelivered { .. } => "token_redelivered",
            TokenRevoked { .. } => "token_revoked",
            TokenExpired { .. } => "token_expired",
            StepCompleted { .. } => "step_completed",
            StepFailed { .. } => "step_failed",
            RunPaused { .. } => "run_paused",
            RunResumed { .. } => "run_resumed",
            RunCompleted { .. } => "run_completed",
            RunFailed { .. } => "run_failed",
            RunCancelled { .. } => "run_cancelled",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `run_started` event as logs held it before request ids existed.
    fn old_run_started() -> serde_json::Value {
        serde_json::json!({
            "type": "run_started",
            "run": "0193a5b2-7c1e-7d3a-9f00-000000000001",
            "requester": "spiffe://dev.stepgate.local/human/dana",
            "workflow": "release-pipeline",
            "workflow_digest": "sha256:00",
            "workflow_json": "{}",
            "policy_digest": "sha256:01",
            "deadline": 1_796_402_700_000_i64,
            "stepup_budget": 2
        })
    }

    #[test]
    fn an_old_run_started_without_request_id_still_decodes() {
        // The log stores msgpack maps; audit entries are JSON.
        let bytes = rmp_serde::to_vec_named(&old_run_started()).unwrap();
        let from_log: Event = rmp_serde::from_slice(&bytes).unwrap();
        let from_json: Event = serde_json::from_value(old_run_started()).unwrap();
        assert_eq!(from_log, from_json);
        match from_log {
            Event::RunStarted {
                request_id,
                stepup_budget,
                ..
            } => {
                assert_eq!(request_id, None);
                assert_eq!(stepup_budget, 2);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_run_started_without_a_key_is_written_in_the_old_shape() {
        let event: Event = serde_json::from_value(old_run_started()).unwrap();
        assert_eq!(serde_json::to_value(&event).unwrap(), old_run_started());
        let mut with_key = old_run_started();
        with_key["request_id"] = serde_json::json!("retry-1");
        let keyed: Event = serde_json::from_value(with_key).unwrap();
        assert!(matches!(
            &keyed,
            Event::RunStarted { request_id: Some(k), .. } if k == "retry-1"
        ));
        let bytes = rmp_serde::to_vec_named(&keyed).unwrap();
        assert_eq!(rmp_serde::from_slice::<Event>(&bytes).unwrap(), keyed);
    }
}
