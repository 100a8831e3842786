//! The event store: the hash-chained log and the keys, in sled.
//!
//! One sled database per data directory, with trees:
//! - `log`: sequence number (u64 big-endian) -> record (see [`crate::chain`]);
//! - `keys`: name -> key material (the token signing key, the local
//!   development trust domain's key).
//!
//! A record sled cannot read, or one that does not decode, is reported
//! with its tree and sequence number, so damage to sled's files is
//! located like a tampered record.
//!
//! [`Store::append`] writes a group of events in one atomic sled batch;
//! [`Store::flush`] makes them durable. The engine flushes before it
//! answers anyone, so an event it answered for is on disk. Only one
//! process may open a data directory at a time (sled holds a file lock).

use std::path::{Path, PathBuf};

use crate::chain::{self, ChainError, Entry, Verifier};
use crate::event::{Event, Millis};

/// The tree holding the event log.
pub const LOG_TREE: &str = "log";
/// The tree holding key material.
pub const KEYS_TREE: &str = "keys";

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
    /// The directory holds no event log.
    #[error("{dir}: no stepgate data directory here (no event log)")]
    NoLog {
        /// The directory.
        dir: String,
    },
    /// A read, write or flush failed.
    #[error("store i/o: {0}")]
    Io(#[from] sled::Error),
    /// sled could not read a record of the log: its files are damaged.
    #[error("`{tree}` tree: seq {seq}: sled cannot read the record: {source}")]
    Read {
        /// The tree read.
        tree: &'static str,
        /// The sequence number that should have come next.
        seq: u64,
        /// sled's error.
        source: sled::Error,
    },
    /// sled could not read a named key.
    #[error("`{tree}` tree: key `{name}`: sled cannot read it: {source}")]
    ReadKey {
        /// The tree read.
        tree: &'static str,
        /// The key's name.
        name: String,
        /// sled's error.
        source: sled::Error,
    },
    /// The log does not verify (a record does not decode or does not
    /// chain); the engine will not start on it.
    #[error("`{LOG_TREE}` tree: {0}")]
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
            let (k, v) = item.map_err(|e| read_error(verifier.next_seq(), e))?;
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
            let (k, v) = item.map_err(|e| read_error(verifier.next_seq(), e))?;
            Ok(verifier.check(key_seq(&k), &v)?)
        })
    }

    /// Up to `limit` entries from `seq` on, decoded but not re-verified
    /// (the whole chain was verified at open; appends extend it).
    pub fn read_from(&self, seq: u64, limit: usize) -> Result<Vec<Entry>, StoreError> {
        let mut out: Vec<Entry> = vec![];
        for item in self.log.range(seq.to_be_bytes()..).take(limit) {
            let next = out.last().map_or(seq, |e| e.seq + 1);
            let (k, v) = item.map_err(|e| read_error(next, e))?;
            out.push(chain::decode(key_seq(&k), &v)?);
        }
        Ok(out)
    }

    /// Reads a named key blob.
    pub fn key(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let value = self.keys.get(name).map_err(|source| StoreError::ReadKey {
            tree: KEYS_TREE,
            name: name.to_string(),
            source,
        })?;
        Ok(value.map(|v| v.to_vec()))
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
    /// Opens the log of `dir` without verifying it. Refuses a directory
    /// that holds no sled database rather than creating one.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        require_existing(dir)?;
        let open_err = |source| StoreError::Open {
            dir: dir.display().to_string(),
            source,
        };
        let db = sled::Config::new().path(dir).open().map_err(open_err)?;
        let log = db.open_tree(LOG_TREE)?;
        Ok(Self { log, _db: db })
    }

    /// Every `(key seq, record bytes)` in key order. A record sled cannot
    /// read is reported with the sequence number after the last one read.
    pub fn records(&self) -> impl Iterator<Item = Result<(u64, Vec<u8>), StoreError>> + '_ {
        let mut next = 0;
        self.log.iter().map(move |item| {
            let (k, v) = item.map_err(|e| read_error(next, e))?;
            let seq = key_seq(&k);
            next = seq.saturating_add(1);
            Ok((seq, v.to_vec()))
        })
    }

    /// Overwrites one record's bytes (for tamper tests and drills).
    pub fn overwrite(&self, seq: u64, bytes: &[u8]) -> Result<(), StoreError> {
        self.log.insert(seq.to_be_bytes(), bytes)?;
        self._db.flush()?;
        Ok(())
    }
}

/// Fails unless `dir` holds a sled database; audit tools must never
/// create one where an auditor mistyped a path.
pub fn require_existing(dir: &Path) -> Result<(), StoreError> {
    if dir.join("db").is_file() && dir.join("conf").is_file() {
        Ok(())
    } else {
        Err(StoreError::NoLog {
            dir: dir.display().to_string(),
        })
    }
}

/// A failed read of the log, located at the record expected next.
fn read_error(seq: u64, source: sled::Error) -> StoreError {
    StoreError::Read {
        tree: LOG_TREE,
        seq,
        source,
    }
}

impl StoreError {
    /// True when sled found its files damaged: for an auditor that is a
    /// "no", not an environment failure.
    pub fn is_corruption(&self) -> bool {
        match self {
            StoreError::Open { source, .. }
            | StoreError::Io(source)
            | StoreError::Read { source, .. }
            | StoreError::ReadKey { source, .. } => {
                matches!(source, sled::Error::Corruption { .. })
            }
            _ => false,
        }
    }

    /// The sequence number of the first bad record, when the error names one.
    pub fn seq(&self) -> Option<u64> {
        match self {
            StoreError::Read { seq, .. } => Some(*seq),
            StoreError::Chain(e) => Some(e.seq()),
            _ => None,
        }
    }
}

fn key_seq(k: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = k.len().min(8);
    b[8 - n..].copy_from_slice(&k[k.len() - n..]);
    u64::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_sled_cannot_read_names_the_tree_and_seq_and_counts_as_corruption() {
        let e = read_error(7, sled::Error::Corruption { at: None, bt: () });
        assert_eq!(e.seq(), Some(7));
        assert!(e.is_corruption());
        assert!(
            e.to_string()
                .starts_with("`log` tree: seq 7: sled cannot read the record: "),
            "{e}"
        );
        let io = read_error(7, sled::Error::Unsupported("nope".into()));
        assert!(!io.is_corruption());
    }
}
