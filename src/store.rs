//! The event store: the hash-chained log and the keys, in sled.
//!
//! One sled database per data directory, with trees:
//! - `log`: sequence number (u64 big-endian) -> record (see [`crate::chain`]);
//! - `keys`: name -> key material (the token signing key, the local
//!   development trust domain's key).
//!
//! [`Store::append`] writes a group of events in one atomic sled batch;
//! [`Store::flush`] makes them durable. The engine flushes before it
//! answers anyone, so an event it answered for is on disk. Only one
//! process may open a data directory at a time (sled holds a file lock).

use std::path::{Path, PathBuf};

use crate::chain::{self, ChainError, Entry, Verifier};
use crate::event::{Event, Millis};

const LOG_TREE: &str = "log";
const KEYS_TREE: &str = "keys";

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled could not open the directory (missing, not writable, or in use).
    #[error("{dir}: cannot open the data directory: {source}")]
    Open {
        /// The data directory.
        dir: String,
        /// sled's error.
        source: sled::Error,
    },
    /// A read, write or flush failed.
    #[error("store i/o: {0}")]
    Io(#[from] sled::Error),
    /// The log does not verify; the engine will not start on it.
    #[error("event log: {0}")]
    Chain(#[from] ChainError),
    /// An event could not be encoded.
    #[error("{0}")]
    Encode(#[from] chain::EncodeError),
}

/// The sled-backed store of one data directory.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    db: sled::Db,
    log: sled::Tree,
    keys: sled::Tree,
    next_seq: u64,
    head: [u8; 32],
}

impl Store {
    /// Opens (creating if needed) the store in `dir` and checks the whole
    /// chain, so that appends continue a verified log.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::Open {
            dir: dir.display().to_string(),
            source,
        };
        let db = sled::Config::new().path(dir).open().map_err(open_err)?;
        let log = db.open_tree(LOG_TREE)?;
        let keys = db.open_tree(KEYS_TREE)?;
        let mut store = Self {
            dir: dir.to_path_buf(),
            db,
            log,
            keys,
            next_seq: 0,
            head: chain::GENESIS,
        };
        let mut verifier = Verifier::new();
        for item in store.log.iter() {
            let (k, v) = item?;
            verifier.check(key_seq(&k), &v)?;
        }
        store.next_seq = verifier.next_seq();
        store.head = verifier.head();
        Ok(store)
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The number of events in the log.
    pub fn len(&self) -> u64 {
        self.next_seq
    }

    /// True when the log holds no event.
    pub fn is_empty(&self) -> bool {
        self.next_seq == 0
    }

    /// Hex of the hash of the last record (all zeros when empty).
    pub fn head(&self) -> String {
        hex::encode(self.head)
    }

    /// Appends events atomically, all at time `at`. Not durable until
    /// [`Store::flush`].
    pub fn append(&mut self, at: Millis, events: Vec<Event>) -> Result<Vec<Entry>, StoreError> {
        let mut batch = sled::Batch::default();
        let mut entries = Vec::with_capacity(events.len());
        let (mut seq, mut head) = (self.next_seq, self.head);
        for event in events {
            let (bytes, hash, entry) = chain::seal(&head, seq, at, event)?;
            batch.insert(&seq.to_be_bytes(), bytes);
            entries.push(entry);
            head = hash;
            seq += 1;
        }
        self.log.apply_batch(batch)?;
        self.next_seq = seq;
        self.head = head;
        Ok(entries)
    }

    /// Makes every appended event durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// Makes every appended event durable, blocking.
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Reads and verifies the log from the start.
    pub fn entries(&self) -> impl Iterator<Item = Result<Entry, StoreError>> + '_ {
        let mut verifier = Verifier::new();
        self.log.iter().map(move |item| {
            let (k, v) = item?;
            Ok(verifier.check(key_seq(&k), &v)?)
        })
    }

    /// Up to `limit` entries from `seq` on, decoded but not re-verified
    /// (the whole chain was verified at open; appends extend it).
    pub fn read_from(&self, seq: u64, limit: usize) -> Result<Vec<Entry>, StoreError> {
        let mut out = vec![];
        for item in self.log.range(seq.to_be_bytes()..).take(limit) {
            let (k, v) = item?;
            out.push(chain::decode(key_seq(&k), &v)?);
        }
        Ok(out)
    }

    /// Reads a named key blob.
    pub fn key(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.keys.get(name)?.map(|v| v.to_vec()))
    }

    /// Stores a named key blob durably.
    pub fn put_key(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        self.keys.insert(name, value)?;
        self.db.flush()?;
        Ok(())
    }
}

/// Raw access for audit tooling and tests: every record as stored.
#[derive(Debug)]
pub struct RawLog {
    log: sled::Tree,
    _db: sled::Db,
}

impl RawLog {
    /// Opens the log of `dir` without verifying it.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::Open {
            dir: dir.display().to_string(),
            source,
        };
        let db = sled::Config::new().path(dir).open().map_err(open_err)?;
        let log = db.open_tree(LOG_TREE)?;
        Ok(Self { log, _db: db })
    }

    /// Every `(key seq, record bytes)` in key order.
    pub fn records(&self) -> impl Iterator<Item = Result<(u64, Vec<u8>), StoreError>> + '_ {
        self.log.iter().map(|item| {
            let (k, v) = item?;
            Ok((key_seq(&k), v.to_vec()))
        })
    }

    /// Overwrites one record's bytes (for tamper tests and drills).
    pub fn overwrite(&self, seq: u64, bytes: &[u8]) -> Result<(), StoreError> {
        self.log.insert(seq.to_be_bytes(), bytes)?;
        self._db.flush()?;
        Ok(())
    }
}

fn key_seq(k: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = k.len().min(8);
    b[8 - n..].copy_from_slice(&k[k.len() - n..]);
    u64::from_be_bytes(b)
}
