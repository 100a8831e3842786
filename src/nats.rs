//! NATS: the engine as a service other processes reach.
//!
//! Request-reply subjects under one versioned prefix carry the
//! [`crate::bus`] contract. A request's payload is the request's fields as
//! a map, msgpack by default, JSON when the `Content-Type` header is
//! `application/json`; the reply uses the same encoding. Engines listen in
//! one queue group, so several processes can serve one NATS account; a
//! request about a run or batch reaches the engine that owns it through the
//! directory described in [`crate::cluster`].
//!
//! | subject | request | reply |
//! |---|---|---|
//! | `stepgate.v1.run.start` | `svid`, `workflow`, `request_id?` | `run_started` |
//! | `stepgate.v1.run.status` | `run` | `run` |
//! | `stepgate.v1.run.cancel` | `run`, `svid`, `reason` | `cancelled` |
//! | `stepgate.v1.run.resume` | `run`, `svid`, `extra_budget` | `resumed` |
//! | `stepgate.v1.step.token` | `run`, `step`, `svid`, `scopes`, `intent?` | `token` |
//! | `stepgate.v1.step.complete` | `run`, `step`, `svid`, `summary?` | `step` |
//! | `stepgate.v1.step.fail` | `run`, `step`, `svid`, `reason` | `step` |
//! | `stepgate.v1.review.pending` | — | `batches` |
//! | `stepgate.v1.review.get` | `batch` | `batches` |
//! | `stepgate.v1.review.decide` | `batch`, `svid`, `approve`, `binding`, `comment?` | `decision` |
//! | `stepgate.v1.token.introspect` | `token` | `introspection` (RFC 7662) |
//! | `stepgate.v1.jwks` | — | `jwks` |
//! | `stepgate.v1.health` | — | `health` |
//! | `stepgate.v1.engine.<kid>.<route>` | as `<route>` | as `<route>`, answered by that engine only |
//!
//! A subject outside this table has no responder. `review.pending` lists
//! the batches of every live engine (engines that do not answer are named
//! in `unreachable`), and `jwks` holds the keys of every engine.
//!
//! A reply that reaches the client after its request timed out is dropped
//! by the client, so the client cannot tell whether the engine acted.
//! These requests are safe to send again, and the repeat appends at most
//! one `token_redelivered` event:
//!
//! - `run.start` with the same `request_id` and workflow answers the run
//!   the first request started (the same key with another workflow is a
//!   `conflict` error); the library client always sends a key;
//! - `step.token` by the step's agent with the same scopes, while the
//!   step's token is live, answers that token again, byte for byte, and
//!   logs `token_redelivered`;
//! - `step.complete`, `step.fail` and `review.decide` repeated by the same
//!   caller with the same outcome answer as the first time.
//!
//! Reads (`run.status`, `review.*`, `token.introspect`, `jwks`, `health`)
//! change nothing. `run.cancel` and `run.resume` repeated answer a
//! `conflict` error and change nothing.
//!
//! Committed events are published, as JSON, to JetStream stream
//! [`EVENTS_STREAM`] on `stepgate.v1.events.<group>.<name>` (for example
//! `stepgate.v1.events.batch.opened`, `stepgate.v1.events.token.revoked`),
//! with the message id `<kid>:<seq>` so a publish retried after a lost
//! acknowledgement is stored once. A publisher task follows the log with a
//! cursor kept in the data directory, so events committed while NATS was
//! down are published when it is back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::{HeaderMap, Message, RequestErrorKind};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{broadcast, Semaphore};
use tracing::{debug, error, info, warn};

use crate::bus::{BusError, Request, Response, Transport};
use crate::chain::Entry;
use crate::cluster::{
    engine_subject, route_of, Cluster, HeartbeatError, Owned, Route, FORWARD_TIMEOUT,
    GATHER_TIMEOUT, HEARTBEAT,
};
use crate::engine::TokenReply;
use crate::event::Event;
use crate::service::Handle;
use crate::text::MAX_NESTING;
use crate::token::Jwks;

/// Subject prefix of the v1 contract.
pub const PREFIX: &str = "stepgate.v1";

/// Queue group engines share.
pub const QUEUE_GROUP: &str = "stepgate-engines";

/// JetStream stream holding published events.
pub const EVENTS_STREAM: &str = "STEPGATE_EVENTS";

/// Largest request payload accepted, in bytes.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;

/// Requests handled at once; more wait for a slot.
pub const MAX_IN_FLIGHT: usize = 256;

/// Content type of JSON payloads.
pub const JSON: &str = "application/json";

/// Subject suffix → request op, the routing table of the contract.
pub const ROUTES: &[(&str, &str)] = &[
    ("run.start", "start_run"),
    ("run.status", "run_status"),
    ("run.cancel", "cancel_run"),
    ("run.resume", "resume_run"),
    ("step.token", "step_token"),
    ("step.complete", "complete_step"),
    ("step.fail", "fail_step"),
    ("review.pending", "pending_batches"),
    ("review.get", "batch"),
    ("review.decide", "decide_batch"),
    ("token.introspect", "introspect"),
    ("jwks", "jwks"),
    ("health", "health"),
];

/// Why NATS setup failed.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// Could not connect.
    #[error("cannot connect to NATS at `{url}`: {reason}")]
    Connect {
        /// The server URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// Subscribing or stream setup failed.
    #[error("nats: {0}")]
    Setup(String),
}

/// The subject a request goes to.
pub fn subject_of(request: &Request) -> String {
    let op = request.op();
    let suffix = ROUTES
        .iter()
        .find(|(_, o)| *o == op)
        .map(|(s, _)| *s)
        .unwrap_or("health");
    format!("{PREFIX}.{suffix}")
}

/// The events subject of one event: `stepgate.v1.events.<group>.<name>`
/// from the event type, e.g. `batch_opened` → `batch.opened`,
/// `token_revoked` → `token.revoked`, `decided` → `step.decided`.
pub fn event_subject(event: &Event) -> String {
    let kind = event.kind();
    let (group, name) = kind.split_once('_').unwrap_or(("step", kind));
    format!("{PREFIX}.events.{group}.{name}")
}

fn is_json(headers: Option<&HeaderMap>) -> bool {
    headers
        .and_then(|h| h.get("Content-Type"))
        .is_some_and(|v| v.as_str().eq_ignore_ascii_case(JSON))
}

/// Decodes the payload of a request routed to `op`.
///
/// The op comes from the subject, never from the payload: a payload's own
/// `op` field is overwritten.
pub fn decode_request(op: &str, payload: &[u8], json: bool) -> Result<Request, String> {
    if json {
        let mut value: serde_json::Value = if payload.is_empty() {
            serde_json::Value::Object(Default::default())
        } else {
            serde_json::from_slice(payload).map_err(|e| format!("payload is not JSON: {e}"))?
        };
        let map = value
            .as_object_mut()
            .ok_or("payload must be a JSON object")?;
        map.insert("op".into(), serde_json::Value::String(op.into()));
        serde_json::from_value(value).map_err(|e| format!("payload does not fit `{op}`: {e}"))
    } else {
        let value: rmpv::Value = if payload.is_empty() {
            rmpv::Value::Map(vec![])
        } else {
            read_msgpack(payload).map_err(|e| format!("payload is not msgpack: {e}"))?
        };
        let rmpv::Value::Map(mut entries) = value else {
            return Err("payload must be a msgpack map".into());
        };
        entries.retain(|(k, _)| k.as_str() != Some("op"));
        entries.push((rmpv::Value::from("op"), rmpv::Value::from(op)));
        rmpv::ext::from_value(rmpv::Value::Map(entries))
            .map_err(|e| format!("payload does not fit `{op}`: {e}"))
    }
}

/// Reads one msgpack value nested at most [`MAX_NESTING`] deep: the
/// decoder recurses per level, so a deeper payload is refused before it
/// can exhaust the stack.
fn read_msgpack(payload: &[u8]) -> Result<rmpv::Value, String> {
    let mut reader = payload;
    rmpv::decode::read_value_with_max_depth(&mut reader, MAX_NESTING).map_err(|e| match e {
        rmpv::decode::Error::DepthLimitExceeded => {
            format!("nested deeper than {MAX_NESTING} levels")
        }
        other => other.to_string(),
    })
}

/// Encodes a request's fields (without the op, which the subject carries).
pub fn encode_request(request: &Request, json: bool) -> Result<Vec<u8>, String> {
    if json {
        let mut value = serde_json::to_value(request).map_err(|e| e.to_string())?;
        if let Some(map) = value.as_object_mut() {
            map.remove("op");
        }
        serde_json::to_vec(&value).map_err(|e| e.to_string())
    } else {
        rmp_serde::to_vec_named(request).map_err(|e| e.to_string())
    }
}

/// Encodes a response.
pub fn encode_response(response: &Response, json: bool) -> Vec<u8> {
    let encoded = if json {
        serde_json::to_vec(response).map_err(|e| e.to_string())
    } else {
        rmp_serde::to_vec_named(response).map_err(|e| e.to_string())
    };
    encoded.unwrap_or_else(|e| {
        let fallback = Response::Error {
            code: "internal".into(),
            message: format!("cannot encode the reply: {e}"),
        };
        serde_json::to_vec(&fallback).unwrap_or_default()
    })
}

/// Decodes a response.
pub fn decode_response(payload: &[u8], json: bool) -> Result<Response, String> {
    if json {
        serde_json::from_slice(payload).map_err(|e| e.to_string())
    } else {
        let value = read_msgpack(payload).map_err(|e| e.to_string())?;
        rmpv::ext::from_value(value).map_err(|e| e.to_string())
    }
}

/// Connects an engine: retries the first connection (a service may start
/// before its NATS server) and reconnects forever, so a NATS restart is
/// ridden out.
pub async fn connect(
    url: &str,
    request_timeout: Duration,
) -> Result<async_nats::Client, NatsError> {
    info!(url, "connecting to NATS");
    options(request_timeout)
        .retry_on_initial_connect()
        .connect(url)
        .await
        .map_err(|e| NatsError::Connect {
            url: url.to_string(),
            reason: e.to_string(),
        })
}

/// Connects a client: the first connection fails at once when the server
/// cannot be reached (a command must not hang); after that it reconnects
/// forever, as an engine does.
pub async fn connect_client(
    url: &str,
    request_timeout: Duration,
) -> Result<async_nats::Client, NatsError> {
    options(request_timeout)
        .connect(url)
        .await
        .map_err(|e| NatsError::Connect {
            url: url.to_string(),
            reason: e.to_string(),
        })
}

fn options(request_timeout: Duration) -> async_nats::ConnectOptions {
    async_nats::ConnectOptions::new()
        .name("stepgate")
        .request_timeout(Some(request_timeout))
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None)
}

/// What an answering task needs.
struct Ctx {
    client: async_nats::Client,
    handle: Handle,
    cluster: Arc<Cluster>,
    // Per owner, so an owner that hangs holds its own slots only. A std
    // mutex: held for a map lookup, never across an await.
    forwards: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// Forwarded requests waiting for one other engine at once; more are
/// refused at once.
pub const MAX_FORWARDS: usize = 32;

/// Owners whose forward slots are tracked; the map is emptied beyond it.
const MAX_OWNERS_TRACKED: usize = 1024;

impl Ctx {
    fn forward_slots(&self, kid: &str) -> Option<Arc<Semaphore>> {
        let mut map = self.forwards.lock().ok()?;
        if map.len() >= MAX_OWNERS_TRACKED && !map.contains_key(kid) {
            map.clear();
        }
        let slots = map
            .entry(kid.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(MAX_FORWARDS)));
        Some(slots.clone())
    }
}

type Incoming = futures::stream::Map<async_nats::Subscriber, fn(Message) -> (Message, bool)>;

fn shared(message: Message) -> (Message, bool) {
    (message, false)
}

fn direct(message: Message) -> (Message, bool) {
    (message, true)
}

/// The engine on NATS, subscribed: requests sent from the moment
/// [`Server::start`] returns are answered once [`Server::serve`] runs.
///
/// Each route is a queue subscription shared by every engine on the
/// account; a request about a run or batch that another engine owns is
/// forwarded to it, once (see [`crate::cluster`]).
pub struct Server {
    ctx: Arc<Ctx>,
    requests: futures::stream::SelectAll<Incoming>,
    publisher: tokio::task::JoinHandle<()>,
    alive: tokio::task::JoinHandle<()>,
    twin: tokio::sync::oneshot::Receiver<HeartbeatError>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("engine", &self.ctx.cluster.kid())
            .finish()
    }
}

impl Server {
    /// Creates the events stream, joins the other engines, starts
    /// publishing committed events and subscribes to every route.
    pub async fn start(client: async_nats::Client, handle: Handle) -> Result<Self, NatsError> {
        let js = jetstream::new(client.clone());
        ensure_stream(&js).await?;
        let jwk = match handle.dispatch(Request::Jwks {}).await {
            Response::Jwks(jwks) => jwks.keys.into_iter().next(),
            _ => None,
        }
        .ok_or_else(|| NatsError::Setup("the engine has no signing key".into()))?;
        let cluster = Arc::new(Cluster::join(&js, jwk).await?);
        // Without this engine's mark the buckets are new or were lost:
        // write the routing entries before serving, so that no keyed start
        // is taken fresh while its first run is known only to this log.
        let healed = !cluster.entries_intact().await;
        if healed {
            heal_directory(&handle, &cluster).await;
        }
        let requests = subscribe_all(&client, cluster.kid()).await?;
        let publisher = tokio::spawn(publish_events(js, handle.clone(), cluster.clone()));
        let (twin_tx, twin) = tokio::sync::oneshot::channel();
        let alive = tokio::spawn(keep_alive(handle.clone(), cluster.clone(), twin_tx, healed));
        info!(prefix = PREFIX, queue = QUEUE_GROUP, engine = %cluster.kid(), "serving on NATS");
        let ctx = Arc::new(Ctx {
            client,
            handle,
            cluster,
            forwards: Mutex::new(HashMap::new()),
        });
        Ok(Self {
            ctx,
            requests,
            publisher,
            alive,
            twin,
        })
    }

    /// Answers requests until `shutdown` resolves; then stops taking
    /// requests, waits for those in flight and tells the other engines
    /// that this one stopped. Stops the same way, with an error, when
    /// another process turns out to serve with this engine's key.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), NatsError> {
        let Self {
            ctx,
            mut requests,
            publisher,
            alive,
            mut twin,
        } = self;
        let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let mut outcome = Ok(());
        let mut twin_done = false;
        tokio::pin!(shutdown);
        loop {
            let (message, direct) = tokio::select! {
                _ = &mut shutdown => break,
                // A oneshot must not be polled once it has completed.
                reported = &mut twin, if !twin_done => {
                    twin_done = true;
                    match reported {
                        Ok(e) => {
                            error!(error = %e, "stopping: this engine's key is in use elsewhere");
                            outcome = Err(NatsError::Setup(e.to_string()));
                            break;
                        }
                        Err(_) => {
                            error!("the heartbeat task ended; other engines will take this one for gone");
                            continue;
                        }
                    }
                }
                next = requests.next() => match next {
                    Some(incoming) => incoming,
                    None => break,
                },
            };
            let Ok(permit) = slots.clone().acquire_owned().await else {
                break;
            };
            let ctx = ctx.clone();
            tokio::spawn(async move {
                answer(&ctx, message, direct).await;
                drop(permit);
            });
        }
        // Stop taking requests (dropping a subscriber unsubscribes), then
        // wait until every slot is free again.
        drop(requests);
        let _ = ctx.client.flush().await;
        let all = u32::try_from(MAX_IN_FLIGHT).unwrap_or(u32::MAX);
        let _ = slots.acquire_many(all).await;
        alive.abort();
        // The record is the twin's now; leave it alone.
        if outcome.is_ok() {
            if let Err(e) = ctx.cluster.heartbeat(false).await {
                warn!(error = %e, "could not tell the other engines that this one stopped");
            }
        }
        publisher.abort();
        let _ = ctx.client.flush().await;
        outcome
    }
}

/// Refreshes this engine's record every [`HEARTBEAT`] and keeps the
/// routing entries whole: writes them all at start, and again whenever the
/// buckets lost them (a NATS server that lost its store). Reports a twin
/// (another process writing this engine's record) and stops.
async fn keep_alive(
    handle: Handle,
    cluster: Arc<Cluster>,
    twin: tokio::sync::oneshot::Sender<HeartbeatError>,
    healed: bool,
) {
    if !healed {
        heal_directory(&handle, &cluster).await;
    }
    let mut pause = HEARTBEAT;
    loop {
        tokio::time::sleep(pause).await;
        match cluster.heartbeat(true).await {
            Ok(()) => pause = HEARTBEAT,
            Err(e @ HeartbeatError::Twin { .. }) => {
                let _ = twin.send(e);
                return;
            }
            Err(e) => {
                // Retry soon: requests wait for a fresh lease.
                warn!(error = %e, "engine heartbeat failed; declaring the buckets again");
                cluster.declare_buckets().await;
                pause = Duration::from_secs(1);
                continue;
            }
        }
        if !cluster.entries_intact().await {
            warn!("routing entries were lost; writing them again");
            cluster.forget();
            heal_directory(&handle, &cluster).await;
        }
    }
}

/// Writes the directory entries of everything in this engine's log again:
/// a bucket that lost or garbled entries (a NATS store lost, an entry
/// overwritten) routes to this engine again.
async fn heal_directory(handle: &Handle, cluster: &Cluster) {
    let mut seq = 0;
    let mut written = 0;
    loop {
        let Ok(page) = handle.entries_from(seq, 1024).await else {
            return;
        };
        let Some(last) = page.last() else {
            break;
        };
        seq = last.seq + 1;
        let owned: Vec<Owned> = page
            .iter()
            .flat_map(|e| Owned::introduced_by(&e.event))
            .collect();
        written += owned.len() - cluster.claim_all(owned).await;
    }
    if let Err(e) = cluster.mark_entries_written().await {
        warn!(error = %e, "routing entries written, but not marked; writing them again soon");
    }
    info!(
        entries = written,
        "directory entries of this engine written"
    );
}

/// Subscribes to every route in the queue group, and to this engine's own
/// subject for forwarded requests.
async fn subscribe_all(
    client: &async_nats::Client,
    kid: &str,
) -> Result<futures::stream::SelectAll<Incoming>, NatsError> {
    let setup = |e: async_nats::SubscribeError| NatsError::Setup(e.to_string());
    let mut all = futures::stream::SelectAll::new();
    for (suffix, _) in ROUTES {
        let sub = client
            .queue_subscribe(format!("{PREFIX}.{suffix}"), QUEUE_GROUP.to_string())
            .await
            .map_err(setup)?;
        all.push(sub.map(shared as fn(Message) -> (Message, bool)));
    }
    let own = client
        .subscribe(format!("{}.>", engine_subject(kid)))
        .await
        .map_err(setup)?;
    all.push(own.map(direct as fn(Message) -> (Message, bool)));
    client
        .flush()
        .await
        .map_err(|e| NatsError::Setup(e.to_string()))?;
    Ok(all)
}

/// A reply: made here, or relayed from the engine that owns the request.
enum Answer {
    Here(Response),
    Relayed(Message),
}

async fn answer(ctx: &Ctx, message: Message, direct: bool) {
    let subject = message.subject.to_string();
    let Some(reply) = message.reply.clone() else {
        warn!(subject = %subject, "request without a reply subject dropped");
        return;
    };
    let json = is_json(message.headers.as_ref());
    let (headers, payload) = match respond(ctx, &message, direct, json).await {
        Answer::Here(response) => {
            let mut headers = HeaderMap::new();
            if json {
                headers.insert("Content-Type", JSON);
            }
            (headers, Bytes::from(encode_response(&response, json)))
        }
        Answer::Relayed(owner) => (owner.headers.unwrap_or_default(), owner.payload),
    };
    if let Err(e) = ctx
        .client
        .publish_with_headers(reply, headers, payload)
        .await
    {
        warn!(subject = %subject, error = %e, "could not send a reply");
    }
}

fn error(code: &str, message: String) -> Response {
    Response::Error {
        code: code.into(),
        message,
    }
}

/// The route suffix of a subject: `stepgate.v1.<suffix>`, or
/// `stepgate.v1.engine.<kid>.<suffix>` when forwarded to this engine.
fn suffix_of<'a>(subject: &'a str, kid: &str, direct: bool) -> &'a str {
    let prefix = if direct {
        format!("{}.", engine_subject(kid))
    } else {
        format!("{PREFIX}.")
    };
    subject.strip_prefix(&prefix).unwrap_or("")
}

async fn respond(ctx: &Ctx, message: &Message, direct: bool, json: bool) -> Answer {
    let payload = &message.payload;
    if payload.len() > MAX_REQUEST_BYTES {
        return Answer::Here(error(
            "too_large",
            format!(
                "payload is {} bytes; at most {MAX_REQUEST_BYTES} are accepted",
                payload.len()
            ),
        ));
    }
    let subject = message.subject.as_str();
    let suffix = suffix_of(subject, ctx.cluster.kid(), direct);
    let Some((_, op)) = ROUTES.iter().find(|(s, _)| *s == suffix) else {
        return Answer::Here(error(
            "unknown_subject",
            format!("no request is served on `{subject}`"),
        ));
    };
    let request = match decode_request(op, payload, json) {
        Ok(request) => request,
        Err(message) => return Answer::Here(error("bad_request", message)),
    };
    debug!(subject, op, direct, "request");
    if !ctx.cluster.lease_fresh() {
        return Answer::Here(stale_lease(ctx, request).await);
    }
    if direct {
        return Answer::Here(direct_answer(ctx, request).await);
    }
    route(ctx, suffix, message, request).await
}

/// The answer while this engine has not confirmed, for a while, that its
/// key is still its own (it was paused, or cut off from NATS): a copy of
/// its data directory may be serving, so it changes nothing until the next
/// heartbeat confirms or ends it. Health says not ready.
async fn stale_lease(ctx: &Ctx, request: Request) -> Response {
    if let Request::Health {} = request {
        return match ctx.handle.dispatch(request).await {
            Response::Health { events, kid, .. } => Response::Health {
                ready: false,
                events,
                kid,
            },
            other => other,
        };
    }
    error(
        "unavailable",
        format!(
            "engine `{}` is confirming that its key is still its own (it was paused or cut off from NATS); try again in a few seconds",
            ctx.cluster.kid()
        ),
    )
}

/// Answers a request sent to this engine's own subject: here, except a
/// keyed run start whose key another engine took first, which only that
/// engine may answer.
async fn direct_answer(ctx: &Ctx, request: Request) -> Response {
    let Route::First(owned) = route_of(&request) else {
        return local(ctx, request).await;
    };
    match ctx.cluster.take(owned).await {
        Ok(kid) if kid == ctx.cluster.kid() => local(ctx, request).await,
        Ok(kid) => error(
            "conflict",
            format!("{owned} is served by engine `{kid}`; send it to `{PREFIX}.run.start`"),
        ),
        Err(e) => error(
            "unavailable",
            format!("{e}; nothing was started: try again"),
        ),
    }
}

/// Answers here, or forwards to the engine that owns the request.
async fn route(ctx: &Ctx, suffix: &str, message: &Message, request: Request) -> Answer {
    let cluster = &ctx.cluster;
    match route_of(&request) {
        Route::Owner(owned) => match cluster.owner(owned).await {
            Some(kid) if kid != cluster.kid() => {
                forward(ctx, &kid, suffix, message, &owned.to_string()).await
            }
            _ => Answer::Here(local(ctx, request).await),
        },
        Route::First(owned) => match cluster.take(owned).await {
            Ok(kid) if kid != cluster.kid() => {
                forward(ctx, &kid, suffix, message, &owned.to_string()).await
            }
            Ok(_) => Answer::Here(local(ctx, request).await),
            // Starting here could start the run twice: refuse instead.
            Err(e) => Answer::Here(error(
                "unavailable",
                format!("{e}; nothing was started: try again"),
            )),
        },
        Route::Signer(kid) if cluster.is_peer(&kid).await => {
            forward(ctx, &kid, suffix, message, "the token").await
        }
        Route::Everyone => Answer::Here(gather(ctx).await),
        Route::Keys => Answer::Here(Response::Jwks(Jwks {
            keys: cluster.keys().await,
        })),
        Route::Any | Route::Signer(_) => Answer::Here(local(ctx, request).await),
    }
}

/// Answers with this engine's state, and records in the directory any run
/// or batch the answer makes known before the answer leaves.
async fn local(ctx: &Ctx, request: Request) -> Response {
    let response = ctx.handle.dispatch(request).await;
    for owned in introduced(&response) {
        claim_soon(&ctx.cluster, owned).await;
    }
    response
}

/// Claims `owned`, trying three times; after that the event publisher,
/// which claims before it publishes, keeps trying.
async fn claim_soon(cluster: &Cluster, owned: Owned) {
    for attempt in 1..=3 {
        match cluster.claim(owned).await {
            Ok(()) => return,
            Err(e) if attempt == 3 => {
                warn!(error = %e, "other engines cannot route to this engine until the publisher records it");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Runs and batches an answer tells the requester about.
fn introduced(response: &Response) -> Vec<Owned> {
    match response {
        Response::RunStarted(started) => std::iter::once(Owned::Run(started.run))
            .chain(started.batches.iter().map(|b| Owned::Batch(*b)))
            .collect(),
        Response::Token(TokenReply::Pending { batch, .. }) => vec![Owned::Batch(*batch)],
        _ => vec![],
    }
}

/// Relays a request, unchanged, to the engine that owns it.
///
/// Forwards hold a slot of their own, so requests waiting on an owner that
/// hangs cannot take every slot from the requests this engine answers.
async fn forward(ctx: &Ctx, kid: &str, suffix: &str, message: &Message, what: &str) -> Answer {
    let slot = ctx
        .forward_slots(kid)
        .and_then(|s| s.try_acquire_owned().ok());
    let Some(_slot) = slot else {
        return Answer::Here(error(
            "unavailable",
            format!(
                "{what} is served by engine `{kid}`, which already has {MAX_FORWARDS} requests waiting: try again"
            ),
        ));
    };
    let subject = format!("{}.{suffix}", engine_subject(kid));
    let mut request = async_nats::Request::new()
        .payload(message.payload.clone())
        .timeout(Some(FORWARD_TIMEOUT));
    if let Some(headers) = message.headers.clone() {
        request = request.headers(headers);
    }
    debug!(engine = kid, %what, "forwarding to the owning engine");
    match ctx.client.send_request(subject, request).await {
        Ok(reply) => Answer::Relayed(reply),
        Err(e) => {
            let (code, why) = match e.kind() {
                RequestErrorKind::NoResponders => {
                    ("unavailable", "which is not connected".to_string())
                }
                // The owner may yet act on it: say so, and say it with a
                // code of its own, since "changed nothing" is not known.
                RequestErrorKind::TimedOut => (
                    "timeout",
                    format!(
                        "which did not answer within {} s; the request may still take effect there",
                        FORWARD_TIMEOUT.as_secs()
                    ),
                ),
                _ => ("unavailable", format!("which cannot be reached: {e}")),
            };
            warn!(engine = kid, %what, %why, "owning engine unavailable");
            Answer::Here(error(
                code,
                format!("{what} is served by engine `{kid}`, {why}"),
            ))
        }
    }
}

/// Pending batches of every live engine, merged; engines that did not
/// answer are named in `unreachable`.
async fn gather(ctx: &Ctx) -> Response {
    let peers = ctx.cluster.peers().await;
    let asks = peers.iter().map(|kid| ask_peer(ctx, kid));
    let (mine, theirs) = futures::join!(
        local(ctx, Request::PendingBatches {}),
        futures::future::join_all(asks)
    );
    let Response::Batches { mut batches, .. } = mine else {
        return mine;
    };
    let mut unreachable = vec![];
    for (kid, answer) in peers.into_iter().zip(theirs) {
        match answer {
            Some(Response::Batches { batches: more, .. }) => batches.extend(more),
            _ => unreachable.push(kid),
        }
    }
    batches.sort_by_key(|b| (b.expires_at, b.batch));
    Response::Batches {
        batches,
        unreachable,
    }
}

/// Asks one engine for its own pending batches.
async fn ask_peer(ctx: &Ctx, kid: &str) -> Option<Response> {
    let payload = encode_request(&Request::PendingBatches {}, false).ok()?;
    let request = async_nats::Request::new()
        .payload(Bytes::from(payload))
        .timeout(Some(FORWARD_TIMEOUT));
    let subject = format!("{}.review.pending", engine_subject(kid));
    let request = request.timeout(Some(GATHER_TIMEOUT));
    match ctx.client.send_request(subject, request).await {
        Ok(reply) => decode_response(&reply.payload, is_json(reply.headers.as_ref())).ok(),
        Err(e) => {
            warn!(engine = kid, error = %e, "engine did not list its pending batches");
            None
        }
    }
}

/// Creates or updates the events stream. File storage; limits: 30 days,
/// 1 GiB, duplicate window 1 hour.
pub async fn ensure_stream(js: &jetstream::Context) -> Result<(), NatsError> {
    let config = stream::Config {
        name: EVENTS_STREAM.to_string(),
        subjects: vec![format!("{PREFIX}.events.>")],
        storage: stream::StorageType::File,
        max_age: Duration::from_secs(30 * 24 * 3600),
        max_bytes: 1 << 30,
        duplicate_window: Duration::from_secs(3600),
        discard: stream::DiscardPolicy::Old,
        ..Default::default()
    };
    js.create_or_update_stream(config)
        .await
        .map_err(|e| NatsError::Setup(e.to_string()))?;
    Ok(())
}

/// Publishes committed events to JetStream in log order, from the cursor
/// stored in the data directory; retries until each is acknowledged.
pub async fn publish_events(js: jetstream::Context, handle: Handle, cluster: Arc<Cluster>) {
    let mut wake = handle.subscribe();
    let mut cursor = handle.cursor("nats-events").await.unwrap_or(0);
    let mut backoff = Duration::from_millis(100);
    loop {
        let batch = match handle.entries_from(cursor, 256).await {
            Ok(batch) => batch,
            Err(_) => return, // the service stopped
        };
        if batch.is_empty() {
            // Wait for the next commit (or a periodic recheck).
            let _ = tokio::time::timeout(Duration::from_secs(1), wake.recv()).await;
            continue;
        }
        for entry in batch {
            match publish_one(&js, &cluster, &entry).await {
                Ok(()) => {
                    cursor = entry.seq + 1;
                    backoff = Duration::from_millis(100);
                }
                Err(e) => {
                    warn!(seq = entry.seq, error = %e, "publishing an event failed; retrying");
                    // A NATS server that lost its store comes back without
                    // the stream: declare it again before the retry.
                    if let Err(e) = ensure_stream(&js).await {
                        warn!(error = %e, "events stream not declared; retrying");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    break;
                }
            }
        }
        if handle.set_cursor("nats-events", cursor).await.is_err() {
            return;
        }
    }
}

/// Publishes one event; a run or batch it introduces is first recorded in
/// the directory, so whoever reads the event can reach its owner.
async fn publish_one(
    js: &jetstream::Context,
    cluster: &Cluster,
    entry: &Entry,
) -> Result<(), String> {
    for owned in Owned::introduced_by(&entry.event) {
        cluster.claim(owned).await?;
    }
    let kid = cluster.kid();
    let payload = serde_json::to_vec(entry).map_err(|e| e.to_string())?;
    let mut headers = HeaderMap::new();
    headers.insert("Content-Type", JSON);
    let message = jetstream::message::PublishMessage::build()
        .payload(Bytes::from(payload))
        .headers(headers)
        .message_id(format!("{kid}:{}", entry.seq));
    let ack = js
        .send_publish(event_subject(&entry.event), message)
        .await
        .map_err(|e| e.to_string())?;
    ack.await.map_err(|e| e.to_string())?;
    Ok(())
}

/// A client-side transport over NATS.
#[derive(Debug, Clone)]
pub struct NatsTransport {
    client: async_nats::Client,
    events: broadcast::Sender<Entry>,
    json: bool,
}

impl NatsTransport {
    /// Connects and starts following events (core subscription, so live
    /// events only; use a JetStream consumer to read history).
    pub async fn connect(url: &str, request_timeout: Duration) -> Result<Self, NatsError> {
        let client = connect_client(url, request_timeout).await?;
        let mut sub = client
            .subscribe(format!("{PREFIX}.events.>"))
            .await
            .map_err(|e| NatsError::Setup(e.to_string()))?;
        client
            .flush()
            .await
            .map_err(|e| NatsError::Setup(e.to_string()))?;
        let (events, _) = broadcast::channel(4096);
        let tx = events.clone();
        tokio::spawn(async move {
            while let Some(message) = sub.next().await {
                if let Ok(entry) = serde_json::from_slice::<Entry>(&message.payload) {
                    let _ = tx.send(entry);
                }
            }
        });
        Ok(Self {
            client,
            events,
            json: false,
        })
    }

    /// Sends JSON instead of msgpack.
    pub fn with_json(mut self, json: bool) -> Self {
        self.json = json;
        self
    }

    /// The underlying client.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }
}

impl Transport for NatsTransport {
    async fn call(&self, request: Request) -> Result<Response, BusError> {
        let payload = encode_request(&request, self.json).map_err(BusError::Transport)?;
        let mut headers = HeaderMap::new();
        if self.json {
            headers.insert("Content-Type", JSON);
        }
        let message = self
            .client
            .request_with_headers(subject_of(&request), headers, Bytes::from(payload))
            .await
            .map_err(|e| BusError::Transport(e.to_string()))?;
        let json = is_json(message.headers.as_ref());
        match decode_response(&message.payload, json).map_err(BusError::Transport)? {
            Response::Error { code, message } => Err(BusError::Remote { code, message }),
            other => Ok(other),
        }
    }

    fn events(&self) -> broadcast::Receiver<Entry> {
        self.events.subscribe()
    }
}

/// Routes as a map, for docs and schema checks.
pub fn routes() -> HashMap<String, &'static str> {
    ROUTES
        .iter()
        .map(|(s, op)| (format!("{PREFIX}.{s}"), *op))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msgpack_nested_deeper_than_the_limit_is_refused_without_recursing() {
        let deep = [vec![0x91u8; 100_000], vec![0xc0]].concat();
        assert_eq!(
            decode_request("health", &deep, false),
            Err("payload is not msgpack: nested deeper than 32 levels".to_string())
        );
        assert_eq!(
            decode_response(&deep, false),
            Err("nested deeper than 32 levels".to_string())
        );
        // Shallow nesting decodes, and is then judged on its shape.
        let shallow = [vec![0x91u8; 3], vec![0xc0]].concat();
        assert_eq!(
            decode_request("health", &shallow, false),
            Err("payload must be a msgpack map".to_string())
        );
    }

    #[test]
    fn a_response_round_trips_through_msgpack() {
        let response = Response::Batches {
            batches: vec![],
            unreachable: vec!["k1".into()],
        };
        let bytes = encode_response(&response, false);
        assert_eq!(decode_response(&bytes, false), Ok(response));
    }
}
