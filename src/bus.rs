//! The bus: the request/response contract between stepgate and the
//! agents, reviewers and resource servers that talk to it, and the
//! transports that carry it.
//!
//! [`Request`] and [`Response`] are the wire messages; every transport
//! carries exactly these. [`InProcess`] is the embedded transport: it
//! hands requests straight to the service task in the same process.
//! Clients ([`crate::client`]) are written against [`Transport`], so they
//! work unchanged over any transport.

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::chain::Entry;
use crate::engine::{DecisionReply, RunStartedReply, StepReply, TokenReply};
use crate::request_id::RequestId;
use crate::service::{BatchView, Handle, Introspection, RunView, ServiceError};
use crate::token::Jwks;

/// Version of the wire contract; transports put it in their subject or
/// header names.
pub const PROTOCOL_VERSION: &str = "v1";

/// Every request stepgate answers. Unknown fields are refused: a
/// misspelt optional field must not silently skip a check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Start a run of a workflow (YAML or JSON text).
    StartRun {
        /// The requester's JWT-SVID.
        svid: String,
        /// Workflow document.
        workflow: String,
        /// Idempotency key chosen by the requester (optional): a start
        /// repeated with the same key answers the run the first one
        /// started and starts nothing.
        #[serde(default)]
        request_id: Option<RequestId>,
    },
    /// Ask for a step's token.
    StepToken {
        /// Run id.
        run: Uuid,
        /// Step id.
        step: String,
        /// The agent's JWT-SVID.
        svid: String,
        /// Scopes asked for.
        scopes: Vec<String>,
        /// The intent the agent states (optional; must match the step's).
        #[serde(default)]
        intent: Option<String>,
    },
    /// Report a step done.
    CompleteStep {
        /// Run id.
        run: Uuid,
        /// Step id.
        step: String,
        /// The agent's JWT-SVID.
        svid: String,
        /// Short summary.
        #[serde(default)]
        summary: String,
    },
    /// Report a step failed.
    FailStep {
        /// Run id.
        run: Uuid,
        /// Step id.
        step: String,
        /// The agent's JWT-SVID.
        svid: String,
        /// Why.
        reason: String,
    },
    /// Cancel a run.
    CancelRun {
        /// Run id.
        run: Uuid,
        /// The canceller's JWT-SVID.
        svid: String,
        /// Why.
        reason: String,
    },
    /// Resume a paused run.
    ResumeRun {
        /// Run id.
        run: Uuid,
        /// A reviewer's JWT-SVID.
        svid: String,
        /// Extra step-ups granted.
        extra_budget: u32,
    },
    /// Decide a review batch.
    DecideBatch {
        /// Batch id.
        batch: Uuid,
        /// The reviewer's JWT-SVID.
        svid: String,
        /// True for approve.
        approve: bool,
        /// The binding digest shown with the batch.
        binding: String,
        /// Optional words.
        #[serde(default)]
        comment: Option<String>,
    },
    /// RFC 7662 introspection of a step token.
    Introspect {
        /// The token.
        token: String,
    },
    /// The signing keys.
    Jwks {},
    /// A run's status.
    RunStatus {
        /// Run id.
        run: Uuid,
    },
    /// Batches waiting for a decision.
    PendingBatches {},
    /// One batch.
    Batch {
        /// Batch id.
        batch: Uuid,
    },
    /// Liveness and readiness.
    Health {},
}

impl Request {
    /// The operation's name, as it appears in the `op` tag.
    pub fn op(&self) -> &'static str {
        match self {
            Request::StartRun { .. } => "start_run",
            Request::StepToken { .. } => "step_token",
            Request::CompleteStep { .. } => "complete_step",
            Request::FailStep { .. } => "fail_step",
            Request::CancelRun { .. } => "cancel_run",
            Request::ResumeRun { .. } => "resume_run",
            Request::DecideBatch { .. } => "decide_batch",
            Request::Introspect { .. } => "introspect",
            Request::Jwks {} => "jwks",
            Request::RunStatus { .. } => "run_status",
            Request::PendingBatches {} => "pending_batches",
            Request::Batch { .. } => "batch",
            Request::Health {} => "health",
        }
    }
}

/// Every answer stepgate gives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Response {
    /// A run started.
    RunStarted(RunStartedReply),
    /// The answer to a token request.
    Token(TokenReply),
    /// The answer to a completion or failure.
    Step(StepReply),
    /// Tokens revoked by a cancellation.
    Cancelled {
        /// Revoked token ids.
        revoked: Vec<Uuid>,
    },
    /// The run resumed.
    Resumed,
    /// The answer to a decision.
    Decision(DecisionReply),
    /// Introspection result.
    Introspection(Introspection),
    /// The JWKS.
    Jwks(Jwks),
    /// A run's status.
    Run(Box<RunView>),
    /// Batches.
    Batches {
        /// The batches.
        batches: Vec<BatchView>,
        /// Engines whose batches are missing because they did not answer
        /// (key ids); empty when the list is complete.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        unreachable: Vec<String>,
    },
    /// The service is up.
    Health {
        /// True when the store is open and the log replayed.
        ready: bool,
        /// Events in the log.
        events: u64,
        /// Signing key id.
        kid: String,
    },
    /// A request that changed nothing, and why.
    Error {
        /// Machine-readable code (`unknown_run`, `forbidden`, ...).
        code: String,
        /// One line for people.
        message: String,
    },
}

/// Why a call over a transport failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The service is gone (shut down or crashed).
    #[error("the stepgate service is not running")]
    Closed,
    /// The service answered with an error.
    #[error("{code}: {message}")]
    Remote {
        /// Machine-readable code.
        code: String,
        /// Message.
        message: String,
    },
    /// The answer was not the kind the request expects.
    #[error("unexpected reply to `{0}`")]
    Unexpected(&'static str),
    /// A transport-level failure (timeout, encoding, connection).
    #[error("transport: {0}")]
    Transport(String),
}

impl From<ServiceError> for BusError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Closed => BusError::Closed,
            other => BusError::Remote {
                code: other.code().to_string(),
                message: other.to_string(),
            },
        }
    }
}

/// A way to reach a stepgate service.
pub trait Transport: Send + Sync {
    /// Sends one request and waits for its response.
    fn call(
        &self,
        request: Request,
    ) -> impl std::future::Future<Output = Result<Response, BusError>> + Send;

    /// Follows committed events (batch decisions, revocations, ...).
    fn events(&self) -> broadcast::Receiver<Entry>;
}

/// The embedded transport: requests go straight to the service task.
#[derive(Debug, Clone)]
pub struct InProcess {
    handle: Handle,
}

impl InProcess {
    /// A transport over a running service.
    pub fn new(handle: Handle) -> Self {
        Self { handle }
    }
}

impl Transport for InProcess {
    async fn call(&self, request: Request) -> Result<Response, BusError> {
        match self.handle.dispatch(request).await {
            Response::Error { code, message } => Err(BusError::Remote { code, message }),
            other => Ok(other),
        }
    }

    fn events(&self) -> broadcast::Receiver<Entry> {
        self.handle.subscribe()
    }
}
