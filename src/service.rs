//! The service: one task that owns the engine, the store and the key.
//!
//! Requests arrive on a channel; the task takes whatever is queued (up to
//! [`MAX_GROUP`] requests), runs each through the engine, appends all the
//! events they produced in one batch, flushes once, and only then answers
//! every caller and publishes the events to subscribers. That is group
//! commit: one disk flush per group, and no answer before its events are
//! durable. A single owner means no locks around the engine state.
//!
//! A timer asks the engine to expire due tokens, batches and runs.
//! Transports ([`crate::bus`]) sit in front of [`Handle::dispatch`].

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use crate::bus::Request;
use crate::bus::Response;
use crate::chain::Entry;
use crate::clock::Clock;
use crate::engine::{
    Batch, BatchStatus, Config, Engine, EngineError, Env, ReviewDecision, Run, RunStatus,
    StepStatus, TokenRequest, V7Ids,
};
use crate::event::{BatchItem, Millis};
use crate::identity::TrustBundle;
use crate::policy::{sha256_text, PolicySet};
use crate::review::Reviewers;
use crate::scope::ScopeSet;
use crate::store::{Store, StoreError};
use crate::token::{Jwks, KeyPair, TOKEN_TYP};
use crate::workflow::Workflow;

/// Most requests handled per group commit.
pub const MAX_GROUP: usize = 64;

/// Name of the signing key in the store.
pub const SIGNING_KEY: &str = "signing-key";

/// Why the service could not start or answer.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The service task is gone.
    #[error("the service is not running")]
    Closed,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The log could not be replayed into state.
    #[error("replaying the event log: {0}")]
    Replay(#[from] crate::engine::ApplyError),
    /// The signing key in the store is damaged.
    #[error("the signing key in the data directory is damaged")]
    BadKey,
    /// The engine refused the command.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The request was malformed.
    #[error("bad request: {0}")]
    BadRequest(String),
}

impl ServiceError {
    /// Machine-readable code for wire errors.
    pub fn code(&self) -> &'static str {
        match self {
            ServiceError::Closed => "unavailable",
            ServiceError::Store(_) | ServiceError::Replay(_) | ServiceError::BadKey => {
                "unavailable"
            }
            ServiceError::BadRequest(_) => "bad_request",
            ServiceError::Engine(e) => match e {
                EngineError::UnknownRun(_) => "unknown_run",
                EngineError::UnknownStep { .. } => "unknown_step",
                EngineError::UnknownBatch(_) => "unknown_batch",
                EngineError::Identity(_) => "bad_identity",
                EngineError::Forbidden(_) => "forbidden",
                EngineError::Conflict(_) | EngineError::RequestIdReused { .. } => "conflict",
                EngineError::Inconsistent(_) => "internal",
            },
        }
    }
}

/// What the service needs besides the store.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The policy in force.
    pub policy: PolicySet,
    /// Trusted identity issuers.
    pub trust: TrustBundle,
    /// Reviewer groups.
    pub reviewers: Reviewers,
    /// Engine settings.
    pub engine: Config,
    /// How often due expiries are checked. Default 1 s.
    pub tick: Duration,
}

/// A run as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunView {
    /// Run id.
    pub run: Uuid,
    /// Workflow name.
    pub workflow: String,
    /// Who started it.
    pub requester: String,
    /// Status.
    pub status: RunStatus,
    /// Deadline, ms.
    pub deadline: Millis,
    /// Step-ups made.
    pub stepups: u32,
    /// Step-up budget.
    pub budget: u32,
    /// Steps in topological order.
    pub steps: Vec<StepView>,
    /// Batch ids.
    pub batches: Vec<Uuid>,
}

/// A step as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepView {
    /// Step id.
    pub step: String,
    /// Status.
    pub status: StepStatus,
    /// Live token id.
    pub live_token: Option<Uuid>,
    /// Reviewing batch.
    pub batch: Option<Uuid>,
}

/// A batch as reviewers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchView {
    /// Batch id.
    pub batch: Uuid,
    /// Run id.
    pub run: Uuid,
    /// Workflow name.
    pub workflow: String,
    /// Who started the run.
    pub requester: String,
    /// Reviewer group.
    pub group: String,
    /// The steps, as shown.
    pub items: Vec<BatchItem>,
    /// Digest a decision must quote.
    pub binding: String,
    /// Expiry, ms.
    pub expires_at: Millis,
    /// Status.
    pub status: BatchStatus,
}

/// RFC 7662 token introspection response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Introspection {
    /// True only for a token this engine issued that is neither expired
    /// nor revoked.
    pub active: bool,
    /// Space-separated scopes.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub scope: Option<String>,
    /// Subject (agent).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sub: Option<String>,
    /// Audience.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub aud: Option<String>,
    /// Issuer.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub iss: Option<String>,
    /// Expiry, seconds.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub exp: Option<i64>,
    /// Issued at, seconds.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub iat: Option<i64>,
    /// Token id.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub jti: Option<String>,
    /// Token type.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub token_type: Option<String>,
    /// Run id.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub run: Option<String>,
    /// Step id.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub step: Option<String>,
}

enum Cmd {
    Dispatch(Box<Request>, oneshot::Sender<Response>),
    EntriesFrom(u64, usize, oneshot::Sender<Result<Vec<Entry>, StoreError>>),
    Cursor(String, oneshot::Sender<Result<u64, StoreError>>),
    SetCursor(String, u64, oneshot::Sender<Result<(), StoreError>>),
    Shutdown(oneshot::Sender<()>),
}

/// A cheap, cloneable handle to the running service.
#[derive(Debug, Clone)]
pub struct Handle {
    tx: mpsc::Sender<Cmd>,
    events: broadcast::Sender<Entry>,
    kid: String,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cmd")
    }
}

impl Handle {
    /// Sends a request and waits for its answer.
    pub async fn dispatch(&self, request: Request) -> Response {
        let (tx, rx) = oneshot::channel();
        if self
            .tx
            .send(Cmd::Dispatch(Box::new(request), tx))
            .await
            .is_err()
        {
            return closed();
        }
        rx.await.unwrap_or_else(|_| closed())
    }

    /// Follows committed events, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Entry> {
        self.events.subscribe()
    }

    /// The signing key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Up to `limit` committed events from `seq` on.
    pub async fn entries_from(&self, seq: u64, limit: usize) -> Result<Vec<Entry>, ServiceError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::EntriesFrom(seq, limit, tx))
            .await
            .map_err(|_| ServiceError::Closed)?;
        Ok(rx.await.map_err(|_| ServiceError::Closed)??)
    }

    /// A named cursor (next sequence number to process) kept in the store.
    pub async fn cursor(&self, name: &str) -> Result<u64, ServiceError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Cursor(name.to_string(), tx))
            .await
            .map_err(|_| ServiceError::Closed)?;
        Ok(rx.await.map_err(|_| ServiceError::Closed)??)
    }

    /// Stores a named cursor.
    pub async fn set_cursor(&self, name: &str, seq: u64) -> Result<(), ServiceError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::SetCursor(name.to_string(), seq, tx))
            .await
            .map_err(|_| ServiceError::Closed)?;
        Ok(rx.await.map_err(|_| ServiceError::Closed)??)
    }

    /// Stops taking requests, answers those queued, flushes, and stops.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

fn closed() -> Response {
    Response::Error {
        code: "unavailable".into(),
        message: "the stepgate service is not running".into(),
    }
}

/// Starts the service on an opened store.
///
/// Loads (or creates, on first start) the signing key, replays the log
/// into engine state and spawns the owning task.
pub async fn start(
    store: Store,
    settings: Settings,
    clock: Arc<dyn Clock>,
) -> Result<Handle, ServiceError> {
    let key = load_or_create_key(&store)?;
    let mut engine = replay(&store)?;
    engine.key_created(clock.now(), key.kid())?;
    let fresh = engine.take_events();
    let mut store = store;
    if !fresh.is_empty() {
        store.append(clock.now(), fresh)?;
        store.flush().await?;
    }
    spawn(store, engine, key, settings, clock)
}

fn spawn(
    store: Store,
    engine: Engine,
    key: KeyPair,
    settings: Settings,
    clock: Arc<dyn Clock>,
) -> Result<Handle, ServiceError> {
    let (tx, rx) = mpsc::channel(1024);
    let (events, _) = broadcast::channel(4096);
    let kid = key.kid().to_string();
    info!(data = %store.dir().display(), events = store.len(), kid = %kid, "stepgate service started");
    let actor = Actor {
        store,
        engine,
        key,
        settings,
        clock,
        events: events.clone(),
        ids: V7Ids,
    };
    tokio::spawn(actor.run(rx));
    Ok(Handle { tx, events, kid })
}

fn load_or_create_key(store: &Store) -> Result<KeyPair, ServiceError> {
    if let Some(bytes) = store.key(SIGNING_KEY)? {
        let secret: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| ServiceError::BadKey)?;
        return Ok(KeyPair::from_secret_bytes(secret));
    }
    let key = KeyPair::generate(&mut rand_core::OsRng);
    store.put_key(SIGNING_KEY, &key.secret_bytes())?;
    info!(kid = %key.kid(), "created a new signing key");
    Ok(key)
}

/// Rebuilds the engine from the store's verified log.
pub fn replay(store: &Store) -> Result<Engine, ServiceError> {
    let entries: Vec<Entry> = store.entries().collect::<Result<_, _>>()?;
    Ok(Engine::replay(entries.iter().map(|e| (e.at, &e.event)))?)
}

struct Actor {
    store: Store,
    engine: Engine,
    key: KeyPair,
    settings: Settings,
    clock: Arc<dyn Clock>,
    events: broadcast::Sender<Entry>,
    ids: V7Ids,
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let mut ticker = tokio::time::interval(self.settings.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The shutdown ack is sent only after the store is dropped, so the
        // caller may reopen the data directory at once.
        let mut done: Option<oneshot::Sender<()>> = None;
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    None => break,
                    Some(Cmd::Shutdown(ack)) => {
                        self.drain(&mut rx).await;
                        done = Some(ack);
                        break;
                    }
                    Some(other @ (Cmd::EntriesFrom(..) | Cmd::Cursor(..) | Cmd::SetCursor(..))) => self.side(other),
                    Some(Cmd::Dispatch(req, reply)) => {
                        let mut group = vec![(req, reply)];
                        let mut shutdown = None;
                        while group.len() < MAX_GROUP {
                            match rx.try_recv() {
                                Ok(Cmd::Dispatch(r, t)) => group.push((r, t)),
                                Ok(Cmd::Shutdown(ack)) => { shutdown = Some(ack); break; }
                                Ok(other) => self.side(other),
                                Err(_) => break,
                            }
                        }
                        self.process(group).await;
                        if let Some(ack) = shutdown {
                            self.drain(&mut rx).await;
                            done = Some(ack);
                            break;
                        }
                    }
                },
                _ = ticker.tick() => self.tick().await,
            }
        }
        if let Err(e) = self.store.flush().await {
            error!(error = %e, "final flush failed");
        }
        drop(self);
        info!("stepgate service stopped");
        if let Some(ack) = done {
            let _ = ack.send(());
        }
    }

    /// Answers everything already queued, then stops taking requests.
    async fn drain(&mut self, rx: &mut mpsc::Receiver<Cmd>) {
        rx.close();
        let mut group = vec![];
        while let Some(cmd) = rx.recv().await {
            match cmd {
                Cmd::Dispatch(r, t) => group.push((r, t)),
                Cmd::Shutdown(ack) => {
                    let _ = ack.send(());
                }
                other => self.side(other),
            }
        }
        if !group.is_empty() {
            self.process(group).await;
        }
    }

    /// Commands that read or write beside the log.
    fn side(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::EntriesFrom(seq, limit, reply) => {
                let _ = reply.send(self.store.read_from(seq, limit));
            }
            Cmd::Cursor(name, reply) => {
                let _ = reply.send(self.read_cursor(&name));
            }
            Cmd::SetCursor(name, seq, reply) => {
                let _ = reply.send(
                    self.store
                        .put_key(&format!("cursor:{name}"), &seq.to_be_bytes()),
                );
            }
            Cmd::Dispatch(..) | Cmd::Shutdown(_) => {}
        }
    }

    fn read_cursor(&self, name: &str) -> Result<u64, StoreError> {
        let bytes = self.store.key(&format!("cursor:{name}"))?;
        Ok(bytes
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0))
    }

    async fn tick(&mut self) {
        let now = self.clock.now();
        match self.engine.tick(now) {
            Ok(false) => {}
            Ok(true) => {
                let events = self.engine.take_events();
                if let Some(entries) = self.commit(now, events).await {
                    self.publish(entries);
                }
            }
            Err(e) => error!(error = %e, "expiry sweep failed"),
        }
    }

    async fn process(&mut self, group: Vec<(Box<Request>, oneshot::Sender<Response>)>) {
        let now = self.clock.now();
        let mut answers = Vec::with_capacity(group.len());
        let mut events = vec![];
        for (request, reply) in group {
            let response = self.handle(*request, now);
            events.extend(self.engine.take_events());
            answers.push((reply, response));
        }
        let committed = if events.is_empty() {
            Some(vec![])
        } else {
            self.commit(now, events).await
        };
        match committed {
            Some(entries) => {
                for (reply, response) in answers {
                    let _ = reply.send(response);
                }
                self.publish(entries);
            }
            None => {
                for (reply, _) in answers {
                    let message = "the event store failed; nothing was decided".to_string();
                    let _ = reply.send(Response::Error {
                        code: "unavailable".into(),
                        message,
                    });
                }
            }
        }
    }

    /// Appends and flushes; on failure rebuilds the engine from the store
    /// so state never runs ahead of the log.
    async fn commit(
        &mut self,
        now: Millis,
        events: Vec<crate::event::Event>,
    ) -> Option<Vec<Entry>> {
        let result = match self.store.append(now, events) {
            Ok(entries) => self.store.flush().await.map(|_| entries),
            Err(e) => Err(e),
        };
        match result {
            Ok(entries) => Some(entries),
            Err(e) => {
                error!(error = %e, "event store failed; rebuilding state from the log");
                match replay(&self.store) {
                    Ok(engine) => self.engine = engine,
                    Err(e) => error!(error = %e, "replay after a store failure failed"),
                }
                None
            }
        }
    }

    fn publish(&self, entries: Vec<Entry>) {
        for entry in entries {
            // No subscriber is fine: events are on disk either way.
            let _ = self.events.send(entry);
        }
    }

    fn handle(&mut self, request: Request, now: Millis) -> Response {
        let op = request.op();
        let result = self.execute(request, now);
        match result {
            Ok(response) => {
                debug!(op, "handled");
                response
            }
            Err(e) => {
                debug!(op, code = e.code(), error = %e, "refused");
                Response::Error {
                    code: e.code().to_string(),
                    message: e.to_string(),
                }
            }
        }
    }

    fn execute(&mut self, request: Request, now: Millis) -> Result<Response, ServiceError> {
        let settings = &self.settings;
        let mut env = Env {
            now,
            policy: &settings.policy,
            trust: &settings.trust,
            reviewers: &settings.reviewers,
            minter: &self.key,
            ids: &mut self.ids,
            config: &settings.engine,
        };
        let engine = &mut self.engine;
        Ok(match request {
            Request::StartRun {
                svid,
                workflow,
                request_id,
            } => {
                let workflow = Workflow::parse("<request>", &workflow)
                    .map_err(|e| ServiceError::BadRequest(e.to_string()))?;
                let runs_before = engine.state().runs.len();
                let reply = engine.start_run(&mut env, &svid, &workflow, request_id.as_ref())?;
                if engine.state().runs.len() > runs_before {
                    info!(run = %reply.run, workflow = %workflow.name, batches = reply.batches.len(), "run started");
                } else {
                    debug!(run = %reply.run, request_id = ?request_id, "start repeated; answered the run it started");
                }
                Response::RunStarted(reply)
            }
            Request::StepToken {
                run,
                step,
                svid,
                scopes,
                intent,
            } => {
                let scopes = ScopeSet::parse(&scopes)
                    .map_err(|e| ServiceError::BadRequest(e.to_string()))?;
                let req = TokenRequest {
                    run,
                    step: &step,
                    svid: &svid,
                    scopes: &scopes,
                    intent: intent.as_deref(),
                };
                let reply = engine.request_token(&mut env, &req)?;
                Response::Token(reply)
            }
            Request::CompleteStep {
                run,
                step,
                svid,
                summary,
            } => Response::Step(engine.complete_step(&mut env, run, &step, &svid, &summary)?),
            Request::FailStep {
                run,
                step,
                svid,
                reason,
            } => Response::Step(engine.fail_step(&mut env, run, &step, &svid, &reason)?),
            Request::CancelRun { run, svid, reason } => {
                let revoked = engine.cancel_run(&mut env, run, &svid, &reason)?;
                warn!(run = %run, revoked = revoked.len(), "run cancelled");
                Response::Cancelled { revoked }
            }
            Request::ResumeRun {
                run,
                svid,
                extra_budget,
            } => {
                engine.resume_run(&mut env, run, &svid, extra_budget)?;
                Response::Resumed
            }
            Request::DecideBatch {
                batch,
                svid,
                approve,
                binding,
                comment,
            } => {
                let d = ReviewDecision {
                    batch,
                    svid: &svid,
                    approve,
                    binding: &binding,
                    comment: comment.as_deref(),
                };
                Response::Decision(engine.decide_batch(&mut env, &d)?)
            }
            Request::Introspect { token } => {
                Response::Introspection(introspect(engine, &settings.engine.issuer, &token, now))
            }
            Request::Jwks {} => Response::Jwks(Jwks {
                keys: vec![self.key.public_jwk()],
            }),
            Request::Health {} => Response::Health {
                ready: true,
                events: self.store.len(),
                kid: self.key.kid().to_string(),
            },
            Request::RunStatus { run } => {
                let r = engine
                    .state()
                    .runs
                    .get(&run)
                    .ok_or(EngineError::UnknownRun(run))?;
                Response::Run(Box::new(run_view(r)))
            }
            Request::PendingBatches {} => {
                let state = engine.state();
                let batches = state
                    .batches
                    .values()
                    .filter(|b| b.status == BatchStatus::Pending && b.expires_at > now)
                    .filter_map(|b| state.runs.get(&b.run).map(|r| batch_view(b, r)))
                    .collect();
                Response::Batches {
                    batches,
                    unreachable: vec![],
                }
            }
            Request::Batch { batch } => {
                let state = engine.state();
                let b = state
                    .batches
                    .get(&batch)
                    .ok_or(EngineError::UnknownBatch(batch))?;
                let r = state
                    .runs
                    .get(&b.run)
                    .ok_or(EngineError::UnknownRun(b.run))?;
                Response::Batches {
                    batches: vec![batch_view(b, r)],
                    unreachable: vec![],
                }
            }
        })
    }
}

/// Introspects by digest: a token is known only if this engine issued it.
fn introspect(engine: &Engine, issuer: &str, token: &str, now: Millis) -> Introspection {
    let state = engine.state();
    let Some(record) = state
        .by_digest
        .get(&sha256_text(token))
        .and_then(|jti| state.tokens.get(jti))
    else {
        return Introspection::default();
    };
    if !record.is_live_at(now) {
        return Introspection::default();
    }
    Introspection {
        active: true,
        scope: Some(record.scopes.join(" ")),
        sub: Some(record.sub.clone()),
        aud: Some(record.aud.clone()),
        iss: Some(issuer.to_string()),
        exp: Some(record.exp / 1000),
        iat: Some(record.iat / 1000),
        jti: Some(record.jti.to_string()),
        token_type: Some(TOKEN_TYP.to_string()),
        run: Some(record.run.to_string()),
        step: Some(record.step.clone()),
    }
}

/// A run's client view.
pub fn run_view(r: &Run) -> RunView {
    let steps = r
        .workflow
        .topo_order()
        .filter_map(|s| {
            r.steps.get(&s.id).map(|st| StepView {
                step: s.id.clone(),
                status: st.status,
                live_token: st.live_token,
                batch: st.batch,
            })
        })
        .collect();
    RunView {
        run: r.id,
        workflow: r.workflow_name.clone(),
        requester: r.requester.clone(),
        status: r.status,
        deadline: r.deadline,
        stepups: r.stepups,
        budget: r.budget,
        steps,
        batches: r.batches.clone(),
    }
}

/// A batch's reviewer view.
pub fn batch_view(b: &Batch, r: &Run) -> BatchView {
    BatchView {
        batch: b.id,
        run: b.run,
        workflow: r.workflow_name.clone(),
        requester: r.requester.clone(),
        group: b.group.clone(),
        items: b.items.clone(),
        binding: b.binding.clone(),
        expires_at: b.expires_at,
        status: b.status.clone(),
    }
}
