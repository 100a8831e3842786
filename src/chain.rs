//! The hash chain that makes the event log tamper-evident.
//!
//! Each stored record is `{hash, body}` where `body` is the msgpack of
//! `{v, seq, at, prev, event}` and `hash = sha256(prev || body)`. `prev` is
//! the hash of the record before (all zeros for the first), and `seq`
//! counts up from 0 without gaps. Changing any byte of any record breaks
//! its own hash or the next record's `prev`, and [`Verifier`] names the
//! first sequence number where that happens. Rewriting a whole tail is
//! only caught by comparing the head hash with one kept elsewhere, which
//! is why `audit verify` prints it.
//!
//! Pure: no I/O. [`crate::store`] keeps the records in sled.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::event::{Event, Millis};
use crate::text::escape_controls;

/// Version of the record body format written by this build.
pub const LOG_VERSION: u16 = 1;

/// `prev` of the first record.
pub const GENESIS: [u8; 32] = [0; 32];

/// What is hashed and stored for one event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Body {
    v: u16,
    seq: u64,
    at: Millis,
    #[serde(with = "serde_bytes")]
    prev: Vec<u8>,
    event: Event,
}

/// One record as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    #[serde(with = "serde_bytes")]
    hash: Vec<u8>,
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
}

/// One event with its place in the chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Sequence number, from 0.
    pub seq: u64,
    /// When the engine recorded it, ms since the Unix epoch.
    pub at: Millis,
    /// Hex of the record's hash.
    pub hash: String,
    /// The event.
    pub event: Event,
}

/// Why a record does not belong where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The record could not be decoded (garbage or truncated bytes); the
    /// decoder's words are quoted with control characters escaped.
    #[error("seq {seq}: record does not decode: {reason}")]
    Decode {
        /// Sequence number (from the key).
        seq: u64,
        /// Decoder message.
        reason: String,
    },
    /// The record was written by a newer, unknown format.
    #[error(
        "seq {seq}: record format v{version} is not supported (this build reads v{LOG_VERSION})"
    )]
    Version {
        /// Sequence number.
        seq: u64,
        /// The record's version.
        version: u16,
    },
    /// The sequence has a gap or a record sits under the wrong key.
    #[error("seq {expected}: expected this sequence number, found {found}")]
    Sequence {
        /// The number that should come next.
        expected: u64,
        /// The number found.
        found: u64,
    },
    /// The record does not point at the hash of the one before.
    #[error("seq {seq}: does not chain to the record before it")]
    Link {
        /// Sequence number.
        seq: u64,
    },
    /// The record's content does not match its hash.
    #[error("seq {seq}: content does not match its hash")]
    Hash {
        /// Sequence number.
        seq: u64,
    },
}

impl ChainError {
    /// The first bad sequence number this error names.
    pub fn seq(&self) -> u64 {
        match self {
            ChainError::Decode { seq, .. }
            | ChainError::Version { seq, .. }
            | ChainError::Link { seq }
            | ChainError::Hash { seq } => *seq,
            ChainError::Sequence { expected, .. } => *expected,
        }
    }
}

/// Encoding failed (never expected for our own types).
#[derive(Debug, thiserror::Error)]
#[error("cannot encode event: {0}")]
pub struct EncodeError(String);

/// Builds the stored bytes of the next record, returning them, the new
/// head hash and the entry.
pub fn seal(
    prev: &[u8; 32],
    seq: u64,
    at: Millis,
    event: Event,
) -> Result<(Vec<u8>, [u8; 32], Entry), EncodeError> {
    let body = Body {
        v: LOG_VERSION,
        seq,
        at,
        prev: prev.to_vec(),
        event,
    };
    let body_bytes = rmp_serde::to_vec_named(&body).map_err(|e| EncodeError(e.to_string()))?;
    let hash = link_hash(prev, &body_bytes);
    let record = Record {
        hash: hash.to_vec(),
        body: body_bytes,
    };
    let bytes = rmp_serde::to_vec_named(&record).map_err(|e| EncodeError(e.to_string()))?;
    let entry = Entry {
        seq,
        at,
        hash: hex::encode(hash),
        event: body.event,
    };
    Ok((bytes, hash, entry))
}

fn link_hash(prev: &[u8], body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(body);
    h.finalize().into()
}

/// Checks records in order and decodes them.
#[derive(Debug, Clone)]
pub struct Verifier {
    next_seq: u64,
    prev: [u8; 32],
}

impl Default for Verifier {
    fn default() -> Self {
        Self {
            next_seq: 0,
            prev: GENESIS,
        }
    }
}

impl Verifier {
    /// A verifier expecting the first record.
    pub fn new() -> Self {
        Self::default()
    }

    /// The hash of the last record accepted (all zeros before any).
    pub fn head(&self) -> [u8; 32] {
        self.prev
    }

    /// The sequence number the next record must carry.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Checks the record stored under key `key_seq` and decodes it.
    pub fn check(&mut self, key_seq: u64, bytes: &[u8]) -> Result<Entry, ChainError> {
        if key_seq != self.next_seq {
            return Err(ChainError::Sequence {
                expected: self.next_seq,
                found: key_seq,
            });
        }
        let decode = |reason: String| ChainError::Decode {
            seq: key_seq,
            reason: escape_controls(&reason),
        };
        let record: Record = rmp_serde::from_slice(bytes).map_err(|e| decode(e.to_string()))?;
        let body: Body = rmp_serde::from_slice(&record.body).map_err(|e| decode(e.to_string()))?;
        if body.v != LOG_VERSION {
            return Err(ChainError::Version {
                seq: key_seq,
                version: body.v,
            });
        }
        if body.seq != key_seq {
            return Err(ChainError::Sequence {
                expected: key_seq,
                found: body.seq,
            });
        }
        // Link before hash: a record re-sealed after its predecessor was
        // changed reports the broken link, not a content mismatch.
        if body.prev.as_slice() != self.prev.as_slice() {
            return Err(ChainError::Link { seq: key_seq });
        }
        if link_hash(&self.prev, &record.body).as_slice() != record.hash.as_slice() {
            return Err(ChainError::Hash { seq: key_seq });
        }
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&record.hash);
        self.prev = hash;
        self.next_seq += 1;
        Ok(Entry {
            seq: body.seq,
            at: body.at,
            hash: hex::encode(hash),
            event: body.event,
        })
    }
}

/// Decodes one record without checking its place in the chain.
pub fn decode(key_seq: u64, bytes: &[u8]) -> Result<Entry, ChainError> {
    let decode = |reason: String| ChainError::Decode {
        seq: key_seq,
        reason: escape_controls(&reason),
    };
    let record: Record = rmp_serde::from_slice(bytes).map_err(|e| decode(e.to_string()))?;
    let body: Body = rmp_serde::from_slice(&record.body).map_err(|e| decode(e.to_string()))?;
    Ok(Entry {
        seq: body.seq,
        at: body.at,
        hash: hex::encode(&record.hash),
        event: body.event,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> Event {
        Event::KeyCreated {
            kid: format!("k{n}"),
        }
    }

    fn chain(n: u8) -> Vec<Vec<u8>> {
        let mut prev = GENESIS;
        let mut out = vec![];
        for i in 0..n {
            let (bytes, hash, _) = seal(&prev, u64::from(i), 1000 + i64::from(i), key(i)).unwrap();
            prev = hash;
            out.push(bytes);
        }
        out
    }

    #[test]
    fn a_sealed_chain_verifies_and_decodes() {
        let records = chain(3);
        let mut v = Verifier::new();
        let entries: Vec<Entry> = records
            .iter()
            .enumerate()
            .map(|(i, r)| v.check(i as u64, r).unwrap())
            .collect();
        assert_eq!(entries[2].event, key(2));
        assert_eq!(entries[2].at, 1002);
        assert_eq!(v.next_seq(), 3);
        assert_eq!(hex::encode(v.head()), entries[2].hash);
    }

    #[test]
    fn a_flipped_byte_is_caught_at_its_sequence_number() {
        let mut records = chain(3);
        let last = records[1].len() - 3;
        records[1][last] ^= 0x01;
        let mut v = Verifier::new();
        v.check(0, &records[0]).unwrap();
        let err = v.check(1, &records[1]).unwrap_err();
        assert_eq!(err.seq(), 1);
    }

    #[test]
    fn a_resealed_record_breaks_the_next_link() {
        let mut records = chain(3);
        // Re-seal record 1 with other content but a valid hash of its own.
        let mut v = Verifier::new();
        v.check(0, &records[0]).unwrap();
        let (forged, _, _) = seal(&v.head(), 1, 1001, key(9)).unwrap();
        records[1] = forged;
        v.check(1, &records[1]).unwrap();
        assert_eq!(v.check(2, &records[2]), Err(ChainError::Link { seq: 2 }));
    }

    #[test]
    fn a_gap_is_a_sequence_error() {
        let records = chain(3);
        let mut v = Verifier::new();
        v.check(0, &records[0]).unwrap();
        assert_eq!(
            v.check(2, &records[2]),
            Err(ChainError::Sequence {
                expected: 1,
                found: 2
            })
        );
    }
}
