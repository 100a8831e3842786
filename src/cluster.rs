//! Several engines on one NATS account: who owns which run.
//!
//! Every engine keeps its own sled log, so a run lives on the engine that
//! started it. Engines share the request subjects in one queue group, and
//! any of them may receive a request about any run. This module is how the
//! receiver finds the owner:
//!
//! - the **directory** (JetStream key-value bucket [`DIRECTORY_BUCKET`])
//!   maps `run.<id>` and `batch.<id>` to the owner's key id. An owner
//!   writes an entry before it answers the request that made the id known,
//!   so no client can learn an id the directory does not yet hold, and
//!   writes its entries again from its log when it starts, so a lost or
//!   damaged bucket heals;
//! - the **request keys** (bucket [`REQUESTS_BUCKET`], 24 hours) map the
//!   idempotency key of a run start to the engine that took it first, so a
//!   repeated start reaches the engine that can answer it;
//! - the **engine records** (bucket [`ENGINES_BUCKET`]) hold each engine's
//!   public key and a heartbeat. They serve the JWKS of the whole account
//!   (a token signed by any engine verifies with it) and name the engines
//!   asked when reviewers list pending batches;
//! - each engine also listens on its own subject,
//!   `stepgate.v1.engine.<kid>.<route>`, where a receiver forwards a
//!   request it does not own. Requests arriving there are always answered
//!   locally, so a request is forwarded at most once.
//!
//! Ownership never changes, so lookups are cached. An engine's key id is
//! its identity: the RFC 7638 thumbprint of its signing key, stable for the
//! life of its data directory. Two engines serving copies of one data
//! directory would share it; [`Cluster::join`] refuses to start the second.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};
use uuid::Uuid;

use sha2::{Digest, Sha256};

use crate::bus::Request;
use crate::clock::{Clock, SystemClock};
use crate::event::Event;
use crate::nats::{NatsError, PREFIX};
use crate::text;
use crate::token::Jwk;

/// Bucket mapping runs and batches to their owning engine.
pub const DIRECTORY_BUCKET: &str = "STEPGATE_DIRECTORY";

/// Bucket of engine records (public key, heartbeat).
pub const ENGINES_BUCKET: &str = "STEPGATE_ENGINES";

/// Bucket mapping run-start idempotency keys to the engine that took them.
pub const REQUESTS_BUCKET: &str = "STEPGATE_REQUESTS";

/// How often an engine refreshes its record.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// How long a confirmed heartbeat lets an engine answer requests. Shorter
/// than the watch in [`Cluster::join`] (two heartbeats and a second).
pub const LEASE: Duration = Duration::from_secs(10);

/// How long a receiver waits for the owner of a forwarded request.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a receiver waits for each engine's pending batches.
pub const GATHER_TIMEOUT: Duration = Duration::from_secs(2);

/// How long an engine record (and so its public key) outlives the engine's
/// last heartbeat: longer than any token it can have signed. Also how long
/// a run-start key routes repeats across engines.
const RETENTION: Duration = Duration::from_secs(24 * 3600);

/// Cached owners; the cache is emptied when it reaches this size.
const CACHE_LIMIT: usize = 65_536;

/// Longest key id accepted from a token header for routing.
const MAX_KID_LEN: usize = 128;

/// A run or batch, as a directory key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Owned {
    /// A run.
    Run(Uuid),
    /// A review batch.
    Batch(Uuid),
    /// A run start with this idempotency key (the key's digest).
    Start([u8; 16]),
}

impl Owned {
    /// The directory key, `run.<id>` or `batch.<id>`.
    pub fn key(&self) -> String {
        match self {
            Owned::Run(id) => format!("run.{id}"),
            Owned::Batch(id) => format!("batch.{id}"),
            Owned::Start(digest) => format!("start.{}", hex::encode(digest)),
        }
    }

    /// The run start keyed by `request_id`. Only the key is hashed, not
    /// the requester: two requesters who pick the same key are sent to the
    /// same engine, which keeps their runs apart.
    pub fn start(request_id: &str) -> Owned {
        let digest = Sha256::digest(request_id.as_bytes());
        let mut first = [0u8; 16];
        first.copy_from_slice(&digest[..16]);
        Owned::Start(first)
    }

    /// What an event makes known: a run (and its start key) or a batch.
    pub fn introduced_by(event: &Event) -> Vec<Owned> {
        match event {
            Event::RunStarted {
                run, request_id, ..
            } => std::iter::once(Owned::Run(*run))
                .chain(request_id.as_deref().map(Owned::start))
                .collect(),
            Event::BatchOpened { batch, .. } => vec![Owned::Batch(*batch)],
            _ => vec![],
        }
    }
}

impl std::fmt::Display for Owned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owned::Run(id) => write!(f, "run {id}"),
            Owned::Batch(id) => write!(f, "batch {id}"),
            Owned::Start(_) => f.write_str("the run started with this request id"),
        }
    }
}

/// Where a request is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// By whichever engine received it (start a run, health).
    Any,
    /// By the owner of a run or batch.
    Owner(Owned),
    /// By the engine that first took this key, or by this one, which then
    /// takes it (keyed run starts).
    First(Owned),
    /// By the engine whose key signed the token (introspection).
    Signer(String),
    /// By every live engine, answers merged (pending batches).
    Everyone,
    /// The keys of every engine (JWKS).
    Keys,
}

/// Where `request` must be answered.
pub fn route_of(request: &Request) -> Route {
    match request {
        Request::StartRun {
            request_id: Some(id),
            ..
        } => Route::First(Owned::start(id.as_str())),
        Request::StartRun { .. } | Request::Health {} => Route::Any,
        Request::StepToken { run, .. }
        | Request::CompleteStep { run, .. }
        | Request::FailStep { run, .. }
        | Request::CancelRun { run, .. }
        | Request::ResumeRun { run, .. }
        | Request::RunStatus { run } => Route::Owner(Owned::Run(*run)),
        Request::DecideBatch { batch, .. } | Request::Batch { batch } => {
            Route::Owner(Owned::Batch(*batch))
        }
        Request::Introspect { token } => match crate::token::header_kid(token) {
            Ok(kid) if is_subject_token(&kid) => Route::Signer(kid),
            _ => Route::Any,
        },
        Request::PendingBatches {} => Route::Everyone,
        Request::Jwks {} => Route::Keys,
    }
}

/// True when `kid` can stand as one NATS subject token: base64url
/// characters only, as stepgate's thumbprints are.
fn is_subject_token(kid: &str) -> bool {
    !kid.is_empty()
        && kid.len() <= MAX_KID_LEN
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The subject prefix one engine listens on for forwarded requests.
pub fn engine_subject(kid: &str) -> String {
    format!("{PREFIX}.engine.{kid}")
}

/// Creates or updates a key-value bucket: one revision per key, file
/// storage, values up to `max_value_size` bytes, entries dropped
/// `max_age` after their last write (zero: never).
///
/// The bucket's stream is declared here rather than through the client's
/// key-value helper, which first asks for account details that servers
/// before 2.10 answer in a shape it does not read.
async fn bucket(
    js: &jetstream::Context,
    name: &str,
    description: &str,
    max_age: Duration,
    max_value_size: i32,
) -> Result<kv::Store, NatsError> {
    let setup = |e: String| NatsError::Setup(format!("bucket {name}: {e}"));
    let config = jetstream::stream::Config {
        name: format!("KV_{name}"),
        description: Some(description.to_string()),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age,
        max_message_size: max_value_size,
        storage: jetstream::stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    };
    js.create_or_update_stream(config)
        .await
        .map_err(|e| setup(e.to_string()))?;
    js.get_key_value(name)
        .await
        .map_err(|e| setup(e.to_string()))
}

/// One engine as other engines see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineRecord {
    /// The engine's key id, which is its identity.
    pub kid: String,
    /// Its public signing key.
    pub jwk: Jwk,
    /// When it last refreshed this record, ms by its own clock.
    pub seen_at: i64,
    /// False once it has stopped serving (graceful shutdown).
    pub serving: bool,
    /// Which process wrote the record: new at every start.
    #[serde(default)]
    pub instance: Uuid,
}

/// This engine's view of the others.
#[derive(Debug)]
pub struct Cluster {
    kid: String,
    jwk: Jwk,
    instance: Uuid,
    js: jetstream::Context,
    directory: kv::Store,
    requests: kv::Store,
    engines: kv::Store,
    // A std mutex: held only for a map lookup or insert, never across
    // an await.
    cache: Mutex<HashMap<Owned, String>>,
    // The revision of this engine's record as it last wrote it; a record
    // at another revision was written by someone else.
    revision: Mutex<Option<u64>>,
    // When a heartbeat last confirmed that the record is this process's.
    lease: Mutex<Option<std::time::Instant>>,
}

/// Why a heartbeat failed.
#[derive(Debug, thiserror::Error)]
pub enum HeartbeatError {
    /// Another process wrote this engine's record: a twin serving a copy of
    /// the data directory.
    #[error("another engine is serving with this data directory's key `{kid}`; a data directory (and any copy of it) must be served by one engine only")]
    Twin {
        /// The shared key id.
        kid: String,
    },
    /// NATS did not take the write.
    #[error("engine record: {0}")]
    Nats(String),
}

impl Cluster {
    /// Creates or opens the buckets and announces this engine.
    ///
    /// Refuses to start when another process is serving with the same key
    /// (a copy of this data directory): when the record under this key says
    /// it is serving, it is watched for two heartbeats, and a refresh by
    /// another process ends the start with an error.
    pub async fn join(js: &jetstream::Context, jwk: Jwk) -> Result<Self, NatsError> {
        let cluster = Self {
            kid: jwk.kid.clone(),
            jwk,
            instance: Uuid::now_v7(),
            js: js.clone(),
            directory: directory_bucket(js).await?,
            requests: requests_bucket(js).await?,
            engines: engines_bucket(js).await?,
            cache: Mutex::new(HashMap::new()),
            revision: Mutex::new(None),
            lease: Mutex::new(None),
        };
        cluster.refuse_a_twin().await?;
        cluster
            .heartbeat(true)
            .await
            .map_err(|e| NatsError::Setup(e.to_string()))?;
        Ok(cluster)
    }

    async fn refuse_a_twin(&self) -> Result<(), NatsError> {
        let Some(before) = self.record_entry().await else {
            return Ok(());
        };
        if !before.1.serving {
            return Ok(());
        }
        // Serving, by the record: either this engine's previous process,
        // which stopped without a goodbye, or a twin that is alive. Only a
        // live twin refreshes the record.
        info!(engine = %self.kid, "the last process with this key did not stop cleanly; checking that it is gone");
        tokio::time::sleep(HEARTBEAT * 2 + Duration::from_secs(1)).await;
        match self.record_entry().await {
            Some((revision, record)) if revision != before.0 && record.instance != self.instance => {
                Err(NatsError::Setup(format!(
                    "another engine is serving with this data directory's key `{}`; a data directory (and any copy of it) must be served by one engine only",
                    self.kid
                )))
            }
            _ => Ok(()),
        }
    }

    async fn record_entry(&self) -> Option<(u64, EngineRecord)> {
        let entry = self.engines.entry(self.kid.as_str()).await.ok()??;
        let record = serde_json::from_slice(&entry.value).ok()?;
        Some((entry.revision, record))
    }

    /// This engine's key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    fn store_of(&self, owned: Owned) -> &kv::Store {
        match owned {
            Owned::Start(_) => &self.requests,
            Owned::Run(_) | Owned::Batch(_) => &self.directory,
        }
    }

    /// Records that this engine owns `owned`; idempotent, and a no-op once
    /// recorded by this process.
    pub async fn claim(&self, owned: Owned) -> Result<(), String> {
        if self.cached(owned).as_deref() == Some(self.kid.as_str()) {
            return Ok(());
        }
        let value = Bytes::from(self.kid.clone());
        self.store_of(owned)
            .put(owned.key(), value)
            .await
            .map_err(|e| format!("directory: cannot record {owned}: {e}"))?;
        self.remember(owned, self.kid.clone());
        Ok(())
    }

    /// Writes the entries of everything an event log introduced, as the
    /// owner: heals a directory that lost or garbled entries.
    pub async fn claim_all(&self, owned: Vec<Owned>) -> usize {
        let failed = futures::stream::iter(owned)
            .map(|o| async move { self.claim(o).await.is_err() })
            .buffer_unordered(32)
            .filter(|failed| futures::future::ready(*failed))
            .count()
            .await;
        if failed > 0 {
            warn!(failed, "some directory entries could not be written");
        }
        failed
    }

    /// The engine that owns `owned`: the one the directory names, or this
    /// one when the directory had no entry and now names it. Taking the
    /// entry is atomic, so two engines that race for a key agree on one.
    pub async fn take(&self, owned: Owned) -> Result<String, String> {
        if let Some(kid) = self.cached(owned) {
            return Ok(kid);
        }
        let value = Bytes::from(self.kid.clone());
        match self.store_of(owned).create(owned.key(), value).await {
            // A fresh key is only trusted while the buckets still hold this
            // engine's mark: after a store loss, the key's first run may
            // be known only to some engine's log until it writes it again.
            Ok(_) if !self.entries_intact().await => {
                let _ = self.store_of(owned).delete(owned.key()).await;
                Err(format!(
                    "routing entries are being written again after NATS lost them; {owned} cannot be recorded yet"
                ))
            }
            Ok(_) => {
                self.remember(owned, self.kid.clone());
                Ok(self.kid.clone())
            }
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => self
                .owner(owned)
                .await
                .ok_or_else(|| format!("directory: {owned} has an unreadable entry")),
            Err(e) => Err(format!("directory: cannot record {owned}: {e}")),
        }
    }

    /// The engine that owns `owned`, if the directory knows it.
    pub async fn owner(&self, owned: Owned) -> Option<String> {
        if let Some(kid) = self.cached(owned) {
            return Some(kid);
        }
        let value = match self.store_of(owned).get(owned.key()).await {
            Ok(value) => value?,
            Err(e) => {
                warn!(%owned, error = %e, "directory lookup failed; answering locally");
                return None;
            }
        };
        let kid = std::str::from_utf8(&value)
            .ok()
            .filter(|k| is_subject_token(k));
        let Some(kid) = kid else {
            warn!(%owned, "directory entry is not an engine key id; answering locally");
            return None;
        };
        if kid != self.kid && !self.is_peer(kid).await {
            warn!(%owned, engine = kid, "directory entry names no known engine; answering locally");
            return None;
        }
        self.remember(owned, kid.to_string());
        Some(kid.to_string())
    }

    fn cached(&self, owned: Owned) -> Option<String> {
        let cache = self.cache.lock().ok()?;
        cache.get(&owned).cloned()
    }

    fn remember(&self, owned: Owned, kid: String) {
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(owned, kid);
        }
    }

    /// Refreshes this engine's record, as a compare-and-set on the
    /// revision this process last wrote, so a twin is noticed.
    pub async fn heartbeat(&self, serving: bool) -> Result<(), HeartbeatError> {
        let record = EngineRecord {
            kid: self.kid.clone(),
            jwk: self.jwk.clone(),
            seen_at: SystemClock.now(),
            serving,
            instance: self.instance,
        };
        let value = Bytes::from(serde_json::to_vec(&record).unwrap_or_default());
        let last = self.revision.lock().ok().and_then(|r| *r);
        let written = match last {
            Some(revision) => self
                .engines
                .update(&self.kid, value.clone(), revision)
                .await
                .ok(),
            None => None,
        };
        let revision = match written {
            Some(revision) => revision,
            None => self.rewrite(value).await?,
        };
        if let Ok(mut last) = self.revision.lock() {
            *last = Some(revision);
        }
        if let Ok(mut lease) = self.lease.lock() {
            *lease = Some(std::time::Instant::now());
        }
        Ok(())
    }

    /// True while the last confirmed heartbeat is younger than [`LEASE`]:
    /// a copy of this engine's data directory waits longer than that
    /// before it serves, so the two never answer at once.
    pub fn lease_fresh(&self) -> bool {
        let lease = self.lease.lock().ok().and_then(|l| *l);
        lease.is_some_and(|at| at.elapsed() < LEASE)
    }

    /// Writes the record after a compare-and-set failed (or on the first
    /// heartbeat): fine when the record is gone (a lost bucket) or still
    /// this process's, a twin otherwise.
    async fn rewrite(&self, value: Bytes) -> Result<u64, HeartbeatError> {
        let first = self.revision.lock().ok().is_some_and(|r| r.is_none());
        if !first {
            if let Some((_, record)) = self.record_entry().await {
                if record.instance != self.instance {
                    return Err(HeartbeatError::Twin {
                        kid: self.kid.clone(),
                    });
                }
            }
        }
        self.engines
            .put(&self.kid, value)
            .await
            .map_err(|e| HeartbeatError::Nats(e.to_string()))
    }

    /// Declares the buckets again (a NATS server that lost its store comes
    /// back without them).
    pub async fn declare_buckets(&self) {
        let declared = futures::join!(
            directory_bucket(&self.js),
            requests_bucket(&self.js),
            engines_bucket(&self.js)
        );
        if let (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) = declared {
            warn!(error = %e, "buckets not declared; retrying");
        }
    }

    /// True while both routing buckets still hold the mark this engine
    /// left after it last wrote its entries; false after a store loss.
    pub async fn entries_intact(&self) -> bool {
        let key = format!("engine.{}", self.kid);
        let (a, b) = futures::join!(self.directory.get(&key), self.requests.get(&key));
        matches!((a, b), (Ok(Some(_)), Ok(Some(_))))
    }

    /// Leaves the mark [`Cluster::entries_intact`] looks for.
    pub async fn mark_entries_written(&self) -> Result<(), String> {
        let key = format!("engine.{}", self.kid);
        let value = Bytes::from(self.instance.to_string());
        self.directory
            .put(&key, value.clone())
            .await
            .map_err(|e| e.to_string())?;
        self.requests
            .put(&key, value)
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Forgets every cached owner (after a store loss, entries this
    /// process wrote may be gone).
    pub fn forget(&self) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.clear();
        }
    }

    /// Every well-formed engine record in the bucket, this engine's first.
    pub async fn engines(&self) -> Vec<EngineRecord> {
        let mut records = vec![];
        let mut keys = match self.engines.keys().await {
            Ok(keys) => keys,
            Err(e) => {
                warn!(error = %e, "cannot list engine records");
                return records;
            }
        };
        while let Some(Ok(key)) = keys.next().await {
            let Ok(Some(value)) = self.engines.get(key.as_str()).await else {
                continue;
            };
            match serde_json::from_slice::<EngineRecord>(&value) {
                Ok(record)
                    if record.kid == key && record.jwk.kid == key && record.jwk.is_self_named() =>
                {
                    records.push(record)
                }
                _ => {
                    debug!(key = %text::escape_controls(&key), "ignoring a malformed engine record")
                }
            }
        }
        records.sort_by_key(|r| r.kid != self.kid);
        records
    }

    /// Every other engine with a record: those serving and those that
    /// stopped within the record's retention, whose batches may still wait.
    pub async fn peers(&self) -> Vec<String> {
        self.engines()
            .await
            .into_iter()
            .filter(|r| r.kid != self.kid)
            .map(|r| r.kid)
            .collect()
    }

    /// The public keys of every engine, this engine's first.
    pub async fn keys(&self) -> Vec<Jwk> {
        let mut keys = vec![self.jwk.clone()];
        for record in self.engines().await {
            if !keys.iter().any(|k| k.kid == record.kid) {
                keys.push(record.jwk);
            }
        }
        keys
    }

    /// True when `kid` is the key of an engine other than this one.
    pub async fn is_peer(&self, kid: &str) -> bool {
        if kid == self.kid {
            return false;
        }
        matches!(self.engines.get(kid).await, Ok(Some(_)))
    }
}

async fn directory_bucket(js: &jetstream::Context) -> Result<kv::Store, NatsError> {
    let about = "stepgate: which engine owns each run and batch";
    bucket(js, DIRECTORY_BUCKET, about, Duration::ZERO, 256).await
}

async fn requests_bucket(js: &jetstream::Context) -> Result<kv::Store, NatsError> {
    let about = "stepgate: which engine took each run-start key";
    bucket(js, REQUESTS_BUCKET, about, RETENTION, 256).await
}

async fn engines_bucket(js: &jetstream::Context) -> Result<kv::Store, NatsError> {
    let about = "stepgate: engine keys and heartbeats";
    bucket(js, ENGINES_BUCKET, about, RETENTION, 4096).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request_id::RequestId;

    #[test]
    fn requests_about_a_run_or_batch_go_to_its_owner() {
        let run = Uuid::from_u128(7);
        let batch = Uuid::from_u128(9);
        let status = Request::RunStatus { run };
        assert_eq!(route_of(&status), Route::Owner(Owned::Run(run)));
        let decide = Request::DecideBatch {
            batch,
            svid: String::new(),
            approve: true,
            binding: String::new(),
            comment: None,
        };
        assert_eq!(route_of(&decide), Route::Owner(Owned::Batch(batch)));
        assert_eq!(route_of(&Request::PendingBatches {}), Route::Everyone);
        assert_eq!(route_of(&Request::Jwks {}), Route::Keys);
        assert_eq!(route_of(&Request::Health {}), Route::Any);
    }

    #[test]
    fn a_keyed_run_start_goes_to_whoever_took_the_key_first() {
        let key = RequestId::parse("release-42").unwrap();
        let keyed = Request::StartRun {
            svid: String::new(),
            workflow: String::new(),
            request_id: Some(key.clone()),
        };
        let route = route_of(&keyed);
        assert_eq!(route, Route::First(Owned::start(key.as_str())));
        let Route::First(owned) = route else {
            unreachable!()
        };
        // The directory key is a digest: request ids may hold `:`, which
        // key-value keys may not.
        let sha = hex::encode(Sha256::digest(b"release-42"));
        assert_eq!(owned.key(), format!("start.{}", &sha[..32]));
        let unkeyed = Request::StartRun {
            svid: String::new(),
            workflow: String::new(),
            request_id: None,
        };
        assert_eq!(route_of(&unkeyed), Route::Any);
    }

    #[test]
    fn directory_keys_name_the_kind_and_id() {
        let id = Uuid::from_u128(1);
        assert_eq!(
            Owned::Run(id).key(),
            "run.00000000-0000-0000-0000-000000000001"
        );
        assert_eq!(
            Owned::Batch(id).key(),
            "batch.00000000-0000-0000-0000-000000000001"
        );
    }

    #[test]
    fn introspection_routes_by_the_signing_key_only_when_it_is_a_safe_subject_token() {
        let header = |kid: &str| {
            use base64::Engine as _;
            let json = format!(r#"{{"alg":"EdDSA","typ":"stepgate-step+jwt","kid":"{kid}"}}"#);
            let h = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
            format!("{h}.e30.c2ln")
        };
        let route = |kid: &str| route_of(&Request::Introspect { token: header(kid) });
        assert_eq!(route("abc_DEF-123"), Route::Signer("abc_DEF-123".into()));
        assert_eq!(route("a.b"), Route::Any);
        assert_eq!(route("a>"), Route::Any);
        assert_eq!(route("*"), Route::Any);
        assert_eq!(route(""), Route::Any);
        assert_eq!(route(&"k".repeat(129)), Route::Any);
        let garbage = Request::Introspect {
            token: "not a token".into(),
        };
        assert_eq!(route_of(&garbage), Route::Any);
    }
}
