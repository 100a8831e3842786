//! Clients: what agents and reviewers call, over any [`Transport`].
//!
//! [`AgentClient`] asks for a step's token and, when the answer is
//! "pending review", waits for the batch's decision event — it does not
//! poll — then asks again. [`ReviewerClient`] lists and decides batches.
//! Both carry the caller's JWT-SVID and send it with every request.
//!
//! Retrying after a timeout is safe: [`Client::start_run`] sends a request
//! id, a repeated token request gets the step's live token again, and a
//! repeated completion, failure or decision answers its first outcome.

use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use crate::bus::{BusError, Request, Response, Transport};
use crate::engine::{DecisionReply, RunStartedReply, StepReply, TokenReply};
use crate::event::Event;
use crate::request_id::RequestId;
use crate::service::{BatchView, Introspection, RunView};
use crate::token::Jwks;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The transport or the service failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// No decision arrived in time.
    #[error("no review decision on batch {batch} within {secs} s")]
    ReviewTimeout {
        /// The batch.
        batch: Uuid,
        /// The wait, seconds.
        secs: u64,
    },
}

macro_rules! expect_reply {
    ($resp:expr, $variant:ident, $op:literal) => {
        match $resp {
            Response::$variant(v) => Ok(v),
            _ => Err(BusError::Unexpected($op).into()),
        }
    };
}

/// An agent's view of stepgate.
#[derive(Debug, Clone)]
pub struct AgentClient<T> {
    transport: T,
    svid: String,
}

impl<T: Transport> AgentClient<T> {
    /// A client presenting `svid` (the agent's JWT-SVID).
    pub fn new(transport: T, svid: String) -> Self {
        Self { transport, svid }
    }

    /// Replaces the JWT-SVID (they are short-lived too).
    pub fn set_svid(&mut self, svid: String) {
        self.svid = svid;
    }

    /// Asks once for a step's token.
    pub async fn request_token(
        &self,
        run: Uuid,
        step: &str,
        scopes: &[String],
        intent: Option<&str>,
    ) -> Result<TokenReply, ClientError> {
        let request = Request::StepToken {
            run,
            step: step.to_string(),
            svid: self.svid.clone(),
            scopes: scopes.to_vec(),
            intent: intent.map(str::to_string),
        };
        expect_reply!(self.transport.call(request).await?, Token, "step_token")
    }

    /// Asks for a step's token; while the answer is pending review, waits
    /// (up to `wait`) for the batch to be decided or closed, then asks
    /// again. Returns the first answer that is not pending.
    pub async fn token(
        &self,
        run: Uuid,
        step: &str,
        scopes: &[String],
        intent: Option<&str>,
        wait: Duration,
    ) -> Result<TokenReply, ClientError> {
        loop {
            // Subscribe before asking, so a decision that lands between
            // the answer and the wait is not missed.
            let events = self.transport.events();
            let reply = self.request_token(run, step, scopes, intent).await?;
            let TokenReply::Pending { batch, .. } = reply else {
                return Ok(reply);
            };
            await_batch(events, run, batch, wait).await?;
        }
    }

    /// Reports the step done; its token is revoked.
    pub async fn complete(
        &self,
        run: Uuid,
        step: &str,
        summary: &str,
    ) -> Result<StepReply, ClientError> {
        let request = Request::CompleteStep {
            run,
            step: step.to_string(),
            svid: self.svid.clone(),
            summary: summary.to_string(),
        };
        expect_reply!(self.transport.call(request).await?, Step, "complete_step")
    }

    /// Reports the step failed; the run fails.
    pub async fn fail(
        &self,
        run: Uuid,
        step: &str,
        reason: &str,
    ) -> Result<StepReply, ClientError> {
        let request = Request::FailStep {
            run,
            step: step.to_string(),
            svid: self.svid.clone(),
            reason: reason.to_string(),
        };
        expect_reply!(self.transport.call(request).await?, Step, "fail_step")
    }
}

/// Waits on `events` (subscribed before the pending answer arrived) until
/// `batch` of `run` is decided or closed, or `wait` passes.
pub async fn await_batch(
    mut events: tokio::sync::broadcast::Receiver<crate::chain::Entry>,
    run: Uuid,
    batch: Uuid,
    wait: Duration,
) -> Result<(), ClientError> {
    let closed = async {
        loop {
            match events.recv().await {
                Ok(entry) if closes(&entry.event, batch, run) => return true,
                Ok(_) | Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return false,
            }
        }
    };
    match tokio::time::timeout(wait, closed).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(BusError::Closed.into()),
        Err(_) => Err(ClientError::ReviewTimeout {
            batch,
            secs: wait.as_secs(),
        }),
    }
}

/// True when `event` ends the wait on `batch` of `run`.
fn closes(event: &Event, batch: Uuid, run: Uuid) -> bool {
    match event {
        Event::BatchDecided { batch: b, .. }
        | Event::BatchExpired { batch: b, .. }
        | Event::BatchWithdrawn { batch: b, .. } => *b == batch,
        Event::RunCancelled { run: r, .. }
        | Event::RunFailed { run: r, .. }
        | Event::RunPaused { run: r, .. } => *r == run,
        _ => false,
    }
}

/// Calls that need no particular role.
#[derive(Debug, Clone)]
pub struct Client<T> {
    transport: T,
}

impl<T: Transport> Client<T> {
    /// A client over `transport`.
    pub fn new(transport: T) -> Self {
        Self { transport }
    }

    /// Starts a run of the workflow text as the holder of `svid`, with a
    /// fresh request id (UUID v7). Use [`Client::start_run_keyed`] to be
    /// able to retry a start whose answer was lost.
    pub async fn start_run(
        &self,
        svid: &str,
        workflow: &str,
    ) -> Result<RunStartedReply, ClientError> {
        self.start_run_keyed(svid, workflow, &RequestId::fresh())
            .await
    }

    /// Starts a run with the caller's own request id. Sending the same
    /// workflow again with the same id (after a timeout, say) answers the
    /// run the first request started and starts nothing new; the same id
    /// with another workflow is a `conflict` error.
    pub async fn start_run_keyed(
        &self,
        svid: &str,
        workflow: &str,
        request_id: &RequestId,
    ) -> Result<RunStartedReply, ClientError> {
        let request = Request::StartRun {
            svid: svid.to_string(),
            workflow: workflow.to_string(),
            request_id: Some(request_id.clone()),
        };
        expect_reply!(self.transport.call(request).await?, RunStarted, "start_run")
    }

    /// A run's status.
    pub async fn run(&self, run: Uuid) -> Result<RunView, ClientError> {
        expect_reply!(
            self.transport.call(Request::RunStatus { run }).await?,
            Run,
            "run_status"
        )
        .map(|b| *b)
    }

    /// Cancels a run as the holder of `svid`.
    pub async fn cancel(
        &self,
        run: Uuid,
        svid: &str,
        reason: &str,
    ) -> Result<Vec<Uuid>, ClientError> {
        let request = Request::CancelRun {
            run,
            svid: svid.to_string(),
            reason: reason.to_string(),
        };
        match self.transport.call(request).await? {
            Response::Cancelled { revoked } => Ok(revoked),
            _ => Err(BusError::Unexpected("cancel_run").into()),
        }
    }

    /// The signing keys.
    pub async fn jwks(&self) -> Result<Jwks, ClientError> {
        expect_reply!(self.transport.call(Request::Jwks {}).await?, Jwks, "jwks")
    }

    /// RFC 7662 introspection.
    pub async fn introspect(&self, token: &str) -> Result<Introspection, ClientError> {
        let request = Request::Introspect {
            token: token.to_string(),
        };
        expect_reply!(
            self.transport.call(request).await?,
            Introspection,
            "introspect"
        )
    }
}

/// A reviewer's view of stepgate.
#[derive(Debug, Clone)]
pub struct ReviewerClient<T> {
    transport: T,
    svid: String,
}

/// The pending batches a reviewer can see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Batches waiting for a decision.
    pub batches: Vec<BatchView>,
    /// Engines (key ids) that did not answer; their batches are missing.
    pub unreachable: Vec<String>,
}

impl<T: Transport> ReviewerClient<T> {
    /// A client presenting `svid` (the reviewer's JWT-SVID).
    pub fn new(transport: T, svid: String) -> Self {
        Self { transport, svid }
    }

    /// Batches waiting for a decision, on every engine that answered.
    pub async fn pending(&self) -> Result<Pending, ClientError> {
        match self.transport.call(Request::PendingBatches {}).await? {
            Response::Batches {
                batches,
                unreachable,
            } => Ok(Pending {
                batches,
                unreachable,
            }),
            _ => Err(BusError::Unexpected("pending_batches").into()),
        }
    }

    /// One batch.
    pub async fn batch(&self, batch: Uuid) -> Result<BatchView, ClientError> {
        match self.transport.call(Request::Batch { batch }).await? {
            Response::Batches { mut batches, .. } if batches.len() == 1 => Ok(batches.remove(0)),
            _ => Err(BusError::Unexpected("batch").into()),
        }
    }

    /// Decides `batch`, quoting the binding digest that was shown.
    pub async fn decide(
        &self,
        batch: Uuid,
        binding: &str,
        approve: bool,
        comment: Option<&str>,
    ) -> Result<DecisionReply, ClientError> {
        let request = Request::DecideBatch {
            batch,
            svid: self.svid.clone(),
            approve,
            binding: binding.to_string(),
            comment: comment.map(str::to_string),
        };
        expect_reply!(
            self.transport.call(request).await?,
            Decision,
            "decide_batch"
        )
    }
}
