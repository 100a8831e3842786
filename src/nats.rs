//! NATS: the engine as a service other processes reach.
//!
//! Request-reply subjects under one versioned prefix carry the
//! [`crate::bus`] contract. A request's payload is the request's fields as
//! a map, msgpack by default, JSON when the `Content-Type` header is
//! `application/json`; the reply uses the same encoding. Engines listen in
//! one queue group, so several processes can serve one NATS account.
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
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::{HeaderMap, Message};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{broadcast, Semaphore};
use tracing::{debug, info, warn};

use crate::bus::{BusError, Request, Response, Transport};
use crate::chain::Entry;
use crate::event::Event;
use crate::service::Handle;

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
            rmp_serde::from_slice(payload).map_err(|e| format!("payload is not msgpack: {e}"))?
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
        rmp_serde::from_slice(payload).map_err(|e| e.to_string())
    }
}

/// Connects with stepgate's settings: retries the first connection and
/// reconnects forever, so a NATS restart is ridden out.
pub async fn connect(
    url: &str,
    request_timeout: Duration,
) -> Result<async_nats::Client, NatsError> {
    async_nats::ConnectOptions::new()
        .name("stepgate")
        .request_timeout(Some(request_timeout))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connect(url)
        .await
        .map_err(|e| NatsError::Connect {
            url: url.to_string(),
            reason: e.to_string(),
        })
}

/// Serves the engine behind `handle` on NATS until `shutdown` resolves,
/// then stops taking requests and waits for those in flight.
pub async fn serve(
    client: async_nats::Client,
    handle: Handle,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), NatsError> {
    let subject = format!("{PREFIX}.>");
    let mut requests = client
        .queue_subscribe(subject.clone(), QUEUE_GROUP.to_string())
        .await
        .map_err(|e| NatsError::Setup(e.to_string()))?;
    client
        .flush()
        .await
        .map_err(|e| NatsError::Setup(e.to_string()))?;
    info!(subject = %subject, queue = QUEUE_GROUP, "serving on NATS");
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let events_prefix = format!("{PREFIX}.events.");
    tokio::pin!(shutdown);
    loop {
        let message = tokio::select! {
            _ = &mut shutdown => break,
            next = requests.next() => match next {
                Some(message) => message,
                None => break,
            },
        };
        if message.subject.as_str().starts_with(&events_prefix) {
            continue;
        }
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let (client, handle) = (client.clone(), handle.clone());
        tokio::spawn(async move {
            answer(&client, &handle, message).await;
            drop(permit);
        });
    }
    // Stop taking requests, then wait until every slot is free again.
    let _ = requests.unsubscribe().await;
    let all = u32::try_from(MAX_IN_FLIGHT).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(all).await;
    Ok(())
}

async fn answer(client: &async_nats::Client, handle: &Handle, message: Message) {
    let subject = message.subject.to_string();
    let Some(reply) = message.reply.clone() else {
        warn!(subject = %subject, "request without a reply subject dropped");
        return;
    };
    let json = is_json(message.headers.as_ref());
    let response = respond(handle, &subject, &message.payload, json).await;
    let mut headers = HeaderMap::new();
    if json {
        headers.insert("Content-Type", JSON);
    }
    let payload = Bytes::from(encode_response(&response, json));
    if let Err(e) = client.publish_with_headers(reply, headers, payload).await {
        warn!(subject = %subject, error = %e, "could not send a reply");
    }
}

async fn respond(handle: &Handle, subject: &str, payload: &[u8], json: bool) -> Response {
    let error = |code: &str, message: String| Response::Error {
        code: code.into(),
        message,
    };
    if payload.len() > MAX_REQUEST_BYTES {
        return error(
            "too_large",
            format!(
                "payload is {} bytes; at most {MAX_REQUEST_BYTES} are accepted",
                payload.len()
            ),
        );
    }
    let suffix = subject.strip_prefix(&format!("{PREFIX}.")).unwrap_or("");
    let Some((_, op)) = ROUTES.iter().find(|(s, _)| *s == suffix) else {
        return error(
            "unknown_subject",
            format!("no request is served on `{subject}`"),
        );
    };
    match decode_request(op, payload, json) {
        Ok(request) => {
            debug!(subject, op, "request");
            handle.dispatch(request).await
        }
        Err(message) => error("bad_request", message),
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
pub async fn publish_events(js: jetstream::Context, handle: Handle, kid: String) {
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
            match publish_one(&js, &kid, &entry).await {
                Ok(()) => {
                    cursor = entry.seq + 1;
                    backoff = Duration::from_millis(100);
                }
                Err(e) => {
                    warn!(seq = entry.seq, error = %e, "publishing an event failed; retrying");
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

async fn publish_one(js: &jetstream::Context, kid: &str, entry: &Entry) -> Result<(), String> {
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
        let client = connect(url, request_timeout).await?;
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
