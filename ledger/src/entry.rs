//! Ledger entries: the typed, versioned records a Lupus log holds, and their one
//! canonical binary encoding.
//!
//! DESIGN.md, "Ledger": entries are typed, versioned, canonically encoded (one
//! encoding, documented here), and carry the participant's own signature where a
//! participant speaks. The bytes produced by [`Entry::encode`] are exactly the bytes
//! the RFC 9162 tree hashes as a leaf (`SHA-256(0x00 || entry)`) and the bytes a
//! `tlog-tiles` entry bundle stores, so they must never change meaning: a new layout
//! gets a new version byte.
//!
//! # Encoding (version 2)
//!
//! An encoded entry is the *body* followed by the *signature block*:
//!
//! | offset | size | field | rule |
//! |---|---|---|---|
//! | 0 | 1 | version | `0x01`; any other value is [`EntryError::UnknownVersion`] |
//! | 1 | 1 | kind | see the kind table; unknown values are [`EntryError::UnknownKind`] |
//! | 2 | ... | fields of the kind, in the order below | |
//! | end of body | 1 | signature flag | `0x00` none, `0x01` present; nothing else |
//! | +1 | 64 | Ed25519 signature | only when the flag is `0x01` |
//!
//! Field types:
//!
//! | type | bytes |
//! |---|---|
//! | `u32`, `u64` | 4 or 8 bytes, big-endian |
//! | `bool` | 1 byte, `0x00` or `0x01` only |
//! | [`Digest`], [`PublicKey`] | 32 raw bytes |
//! | `String` | `u32` byte length, then that many bytes of UTF-8; length at most the field's maximum |
//! | `Vec<u32>` (step lists) | `u32` count, then each `u32`; strictly ascending; count at most [`MAX_STEPS`] |
//! | `Option<Digest>` | `0x00`, or `0x01` followed by 32 bytes |
//! | `Vec<Digest>` | `u32` count, then each 32 bytes; count at most the field's maximum |
//! | [`Role`] | 1 byte: `0x00` worker, `0x01` verifier |
//! | [`CreditKind`] | 1 byte: `0x00` work, `0x01` verification |
//! | [`EndReason`] | 1 byte: `0x00` not opened, `0x01` not judged, `0x02` worker slashed |
//!
//! Kinds and their fields, in encoding order (`*` marks kinds signed by a participant):
//!
//! | kind | byte | fields |
//! |---|---|---|
//! | `Genesis` | 1 | `job_spec: String` (≤ [`MAX_JOB_SPEC`]), `job_hash: Digest`, `dataset_root: Digest`, `log_key: PublicKey`, `coordinator_note_key: String` (≤ [`MAX_NOTE_KEY`]), `created_ms: u64` |
//! | `ParticipantJoined`* | 2 | `key: PublicKey`, `role: Role`, `name: String` (≤ [`MAX_NAME`]) |
//! | `RoundOpened` | 3 | `round: u64`, `base_model: Digest`, `beacon_commitment: Digest`, `inner_steps: u32`, `deadline_ms: u64` |
//! | `TaskAssigned` | 4 | `task: u64`, `round: u64`, `worker: PublicKey`, `seed: Digest`, `inner_steps: u32`, `batch_size: u32` |
//! | `WorkCommitted`* | 5 | `task: u64`, `worker: PublicKey`, `trace_root: Digest`, `final_state: Digest`, `delta: Digest` |
//! | `ChallengeIssued` | 6 | `task: u64`, `verifier: PublicKey`, `steps: Vec<u32>` |
//! | `Verdict`* | 7 | `task: u64`, `verifier: PublicKey`, `accepted: bool`, `steps: Vec<u32>`, `reason: String` (≤ [`MAX_REASON`]), `evidence: Option<Digest>` |
//! | `RoundClosed` | 8 | `round: u64`, `beacon: Digest`, `new_model: Digest`, `val_loss_bits: u32`, `accepted_tasks: u32`, `val_windows: u32` (≤ [`MAX_VAL_WINDOWS`]), `momentum: Option<Digest>`, `merged: Vec<Digest>` (≤ [`MAX_MERGED`]) |
//! | `Credit` | 9 | `round: u64`, `key: PublicKey`, `amount: u64`, `task: u64`, `kind: CreditKind` |
//! | `Slashed` | 10 | `key: PublicKey`, `task: u64`, `reason: String` (≤ [`MAX_REASON`]), `evidence: Option<Digest>` |
//! | `SharesEpoch` | 11 | `epoch: u64`, `round: u64`, `root: Digest`, `total: u64`, `accounts: u64` |
//! | `TaskOpened` | 12 | `task: u64`, `worker: PublicKey`, `opening: Digest` |
//! | `TaskEnded` | 13 | `task: u64`, `reason: EndReason` |
//!
//! The whole encoded entry must be at most [`MAX_ENTRY_LEN`] (65,535) bytes, because
//! `tlog-tiles` entry bundles prefix each entry with a `u16` length.
//!
//! # Signatures
//!
//! The kinds a participant speaks (`ParticipantJoined`, `WorkCommitted`, `Verdict`)
//! carry an Ed25519 signature by the key named in the body (`key`, `worker`,
//! `verifier`) over `"lupus entry v1\n" || body`, where `body` is the encoding above up
//! to, not including, the signature flag (so it covers the version and kind bytes).
//! `ParticipantJoined`'s signature proves possession of the key. Every other kind is
//! written by the coordinator alone and carries no signature: the log's checkpoint
//! signature covers it. Verification uses `verify_strict` (no small-order keys, no
//! malleable signatures), so one body has exactly one accepted signature encoding per
//! signature value.
//!
//! # Strictness
//!
//! Because every field has exactly one accepted encoding, `decode(encode(e)) == e`
//! and `encode(decode(b)) == b` for every accepted `b`. [`Entry::decode`] refuses, with
//! a typed error naming the field: a short buffer, an unknown version or kind,
//! trailing bytes, a bool or tag outside its values, invalid UTF-8, a string or list
//! over its maximum, a step list that is not strictly ascending, a missing signature,
//! a signature on a kind that has none, and a signature that does not verify.
//!
//! `val_loss_bits` is the IEEE-754 bit pattern of the validation loss as the prover
//! computed it; the ledger treats it as an opaque `u32` (the prover canonicalises NaN).
//! `job_hash` is the prover's hash of the job spec; the ledger does not depend on the
//! prover, so it does not recompute it (an auditor does).
//!
//! # JSON
//!
//! For display and APIs only (the log stores the binary form): an [`EntryBody`] is an
//! object with `"type"` set to the kind's snake_case name and its fields by name;
//! keys and digests are 64 lowercase hex digits, [`Amount`]s decimal strings.

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The only encoding version this code writes and reads.
pub const ENTRY_VERSION: u8 = 2;
/// Largest encoded entry: `tlog-tiles` entry bundles use a `u16` length prefix.
pub const MAX_ENTRY_LEN: usize = u16::MAX as usize;
/// Largest job spec (TOML) in a genesis entry, in bytes.
pub const MAX_JOB_SPEC: usize = 60_000;
/// Largest coordinator note verifier key (`<name>+<hexid>+<base64>`), in bytes.
pub const MAX_NOTE_KEY: usize = 512;
/// Largest participant display name, in bytes.
pub const MAX_NAME: usize = 128;
/// Largest verdict or slashing reason, in bytes.
pub const MAX_REASON: usize = 1024;
/// Most challenged steps in one challenge or verdict.
pub const MAX_STEPS: usize = 4096;
/// Most merged deltas one `RoundClosed` names (so it fits an entry: 32 bytes each).
pub const MAX_MERGED: usize = 1024;
/// Most validation windows one `RoundClosed` names. An auditor recomputes the loss on
/// that many, so a count without a bound would let an operator log a close no one can
/// afford to check (128x the coordinator's 512).
pub const MAX_VAL_WINDOWS: usize = 65_536;

/// Domain separator prepended to the body before a participant signs it.
const SIGNING_CONTEXT: &[u8] = b"lupus entry v1\n";

/// Errors from building, encoding or decoding an entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    /// The buffer ended inside a field.
    #[error("entry truncated while reading `{field}`: the bytes are incomplete")]
    Truncated { field: &'static str },
    /// The version byte is not one this code knows.
    #[error("unknown entry version {0}: this code reads version {ENTRY_VERSION} only")]
    UnknownVersion(u8),
    /// The kind byte names no entry kind.
    #[error("unknown entry kind byte {0}: expected 1..=13")]
    UnknownKind(u8),
    /// Bytes remained after the entry was complete.
    #[error("{count} trailing bytes after the entry: one encoding has no padding")]
    TrailingBytes { count: usize },
    /// A bool, tag or option byte outside its allowed values.
    #[error("field `{field}` has byte {value:#04x}, which is not one of its allowed values")]
    InvalidTag { field: &'static str, value: u8 },
    /// A string field is not UTF-8.
    #[error("field `{field}` is not valid UTF-8")]
    InvalidUtf8 { field: &'static str },
    /// A string or list is longer than its maximum.
    #[error("field `{field}` has length {len}, over its maximum of {max}")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    /// A step list is not strictly ascending (its canonical form).
    #[error("field `{field}` must list steps in strictly ascending order without repeats")]
    StepsNotAscending { field: &'static str },
    /// The encoded entry would exceed [`MAX_ENTRY_LEN`].
    #[error("entry is {len} bytes, over the maximum of {MAX_ENTRY_LEN}; shorten its strings")]
    EntryTooLarge { len: usize },
    /// A participant-signed kind has no signature.
    #[error("{kind} entries must be signed by the participant, but this one is not")]
    MissingSignature { kind: EntryKind },
    /// A coordinator-only kind carries a signature.
    #[error("{kind} entries carry no participant signature, but this one has one")]
    UnexpectedSignature { kind: EntryKind },
    /// The signer's key is not a valid Ed25519 public key.
    #[error("field `{field}` is not a valid Ed25519 public key")]
    InvalidKey { field: &'static str },
    /// The signature does not verify under the key the body names.
    #[error("the signature on this {kind} entry does not verify under `{field}`")]
    BadSignature {
        kind: EntryKind,
        field: &'static str,
    },
    /// [`Entry::signed`] was given a key other than the one the body names.
    #[error("signing key does not match `{field}` of this {kind} entry: sign with that key")]
    WrongSigner {
        kind: EntryKind,
        field: &'static str,
    },
}

macro_rules! u64_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

u64_newtype!(
    /// A task's id, unique within a job.
    TaskId
);
u64_newtype!(
    /// A training round (one DiLoCo outer step).
    Round
);
u64_newtype!(
    /// A shares epoch: the n-th `SharesEpoch` commitment of balances.
    Epoch
);

/// An amount of credit, in verified training FLOPs. Arithmetic is checked: credits
/// never wrap.
///
/// In JSON it is a decimal string, because JavaScript numbers lose integers above
/// 2^53 and totals of FLOPs can pass that.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Amount(pub u64);

impl Amount {
    /// No credit.
    pub const ZERO: Amount = Amount(0);

    /// `self + other`, or `None` on overflow.
    pub fn checked_add(self, other: Amount) -> Option<Amount> {
        self.0.checked_add(other.0).map(Amount)
    }

    /// `self - other`, or `None` if `other` is larger.
    pub fn checked_sub(self, other: Amount) -> Option<Amount> {
        self.0.checked_sub(other.0).map(Amount)
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        // Only plain decimal digits: no sign, no spaces, no leading zeros, so one
        // amount has one JSON form.
        let canonical = !text.is_empty()
            && text.bytes().all(|b| b.is_ascii_digit())
            && (text == "0" || !text.starts_with('0'));
        if !canonical {
            return Err(serde::de::Error::custom(format!(
                "amount {text:?} is not a canonical decimal u64"
            )));
        }
        text.parse::<u64>()
            .map(Amount)
            .map_err(|_| serde::de::Error::custom(format!("amount {text:?} does not fit in u64")))
    }
}

macro_rules! bytes32_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The raw 32 bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// Parses 64 lowercase or uppercase hex digits.
            pub fn from_hex(text: &str) -> Result<Self, hex::FromHexError> {
                let mut out = [0u8; 32];
                hex::decode_to_slice(text, &mut out)?;
                Ok($name(out))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), hex::encode(self.0))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&hex::encode(self.0))
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                $name::from_hex(&text).map_err(|e| {
                    serde::de::Error::custom(format!(
                        "{}: expected 64 hex digits: {e}",
                        stringify!($name)
                    ))
                })
            }
        }
    };
}

bytes32_newtype!(
    /// An Ed25519 verifying key, as its 32-byte compressed encoding. Hex in text.
    ///
    /// The bytes are not checked to be a curve point until a signature is verified
    /// with [`PublicKey::verifying_key`].
    PublicKey
);
/// A blake3 commitment: a model hash, a trace root, a beacon, a sum-tree root (the one
/// digest type of every crate).
pub use lupus_types::Digest;

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for PublicKey {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        lupus_types::openapi::string(
            "An Ed25519 public key: its 32-byte compressed encoding as 64 hex digits \
             (written lowercase, read in either case).",
            lupus_types::openapi::HEX32,
        )
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for PublicKey {}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Amount {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        lupus_types::openapi::string(
            "An amount of credit in verified training FLOPs, as a decimal string \
             (JavaScript numbers lose integers above 2^53): digits only, no sign, no \
             leading zero.",
            lupus_types::openapi::DECIMAL,
        )
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Amount {}

impl PublicKey {
    /// The Ed25519 key these bytes encode, or `None` if they are not a valid point.
    pub fn verifying_key(&self) -> Option<VerifyingKey> {
        VerifyingKey::from_bytes(&self.0).ok()
    }
}

impl From<&VerifyingKey> for PublicKey {
    fn from(key: &VerifyingKey) -> Self {
        PublicKey(key.to_bytes())
    }
}

impl From<&SigningKey> for PublicKey {
    fn from(key: &SigningKey) -> Self {
        PublicKey(key.verifying_key().to_bytes())
    }
}

/// What a participant does in a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Trains tasks.
    Worker,
    /// Replays challenged steps and signs verdicts.
    Verifier,
}

/// What a credit pays for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CreditKind {
    /// Verified training FLOPs of an accepted task.
    Work,
    /// FLOPs a verifier spent replaying challenged steps.
    Verification,
}

/// Why a committed task ended without a work credit or a conviction of its worker
/// (`TaskEnded`): every committed task ends in the log, so none just disappears.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The worker did not open its challenged steps before the round closed.
    NotOpened,
    /// Opened, but no final verdict before the round closed.
    NotJudged,
    /// Accepted, but its worker was slashed (for this task or another) first.
    WorkerSlashed,
}

/// The kind of an entry, as its encoding's kind byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(u8)]
pub enum EntryKind {
    Genesis = 1,
    ParticipantJoined = 2,
    RoundOpened = 3,
    TaskAssigned = 4,
    WorkCommitted = 5,
    ChallengeIssued = 6,
    Verdict = 7,
    RoundClosed = 8,
    Credit = 9,
    Slashed = 10,
    SharesEpoch = 11,
    TaskOpened = 12,
    TaskEnded = 13,
}

impl EntryKind {
    fn from_byte(b: u8) -> Option<EntryKind> {
        Some(match b {
            1 => EntryKind::Genesis,
            2 => EntryKind::ParticipantJoined,
            3 => EntryKind::RoundOpened,
            4 => EntryKind::TaskAssigned,
            5 => EntryKind::WorkCommitted,
            6 => EntryKind::ChallengeIssued,
            7 => EntryKind::Verdict,
            8 => EntryKind::RoundClosed,
            9 => EntryKind::Credit,
            10 => EntryKind::Slashed,
            11 => EntryKind::SharesEpoch,
            12 => EntryKind::TaskOpened,
            13 => EntryKind::TaskEnded,
            _ => return None,
        })
    }

    /// The name used in messages and JSON.
    pub fn name(self) -> &'static str {
        match self {
            EntryKind::Genesis => "genesis",
            EntryKind::ParticipantJoined => "participant_joined",
            EntryKind::RoundOpened => "round_opened",
            EntryKind::TaskAssigned => "task_assigned",
            EntryKind::WorkCommitted => "work_committed",
            EntryKind::ChallengeIssued => "challenge_issued",
            EntryKind::Verdict => "verdict",
            EntryKind::RoundClosed => "round_closed",
            EntryKind::Credit => "credit",
            EntryKind::Slashed => "slashed",
            EntryKind::SharesEpoch => "shares_epoch",
            EntryKind::TaskOpened => "task_opened",
            EntryKind::TaskEnded => "task_ended",
        }
    }
}

impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What an entry says. Field meanings follow DESIGN.md "The loop"; the byte layout is
/// the table in the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EntryBody {
    /// Entry 0: the job, its data and the keys that speak for the log.
    Genesis {
        /// The job spec, TOML, exactly as the coordinator loaded it.
        job_spec: String,
        /// The prover's hash of the job spec.
        job_hash: Digest,
        /// Merkle root of the committed dataset.
        dataset_root: Digest,
        /// The coordinator's Ed25519 key (its checkpoint signing key).
        log_key: PublicKey,
        /// The checkpoint verifier key as a signed-note string, `<name>+<hexid>+<base64>`.
        coordinator_note_key: String,
        /// Creation time, milliseconds since the Unix epoch.
        created_ms: u64,
    },
    /// A participant's key enters the job. Signed by `key`: proof of possession.
    ParticipantJoined {
        key: PublicKey,
        role: Role,
        name: String,
    },
    /// A round starts from `base_model` with the beacon committed as `blake3(r)`.
    RoundOpened {
        round: Round,
        base_model: Digest,
        beacon_commitment: Digest,
        inner_steps: u32,
        deadline_ms: u64,
    },
    /// A task handed to `worker`; logged before it goes out.
    TaskAssigned {
        task: TaskId,
        round: Round,
        worker: PublicKey,
        seed: Digest,
        inner_steps: u32,
        batch_size: u32,
    },
    /// The worker's commitment to its trace, final state and delta. Signed by `worker`.
    WorkCommitted {
        task: TaskId,
        worker: PublicKey,
        trace_root: Digest,
        final_state: Digest,
        delta: Digest,
    },
    /// The steps a verifier must replay, derived from the beacon and the trace root.
    ChallengeIssued {
        task: TaskId,
        verifier: PublicKey,
        steps: Vec<u32>,
    },
    /// A verifier's signed judgment of a task. Signed by `verifier`.
    Verdict {
        task: TaskId,
        verifier: PublicKey,
        accepted: bool,
        steps: Vec<u32>,
        reason: String,
        /// blake3 of the evidence blob of a rejection: the fraud proof, or (for the
        /// referee's replay) the opening it replayed.
        #[cfg_attr(feature = "openapi", schema(required = true))]
        evidence: Option<Digest>,
    },
    /// A round ends: the beacon `r` revealed, the merged model, its validation loss,
    /// and everything needed to recompute both from blobs: anyone who fetches the
    /// round's base model, the previous close's momentum and the `merged` deltas
    /// redoes the merge (weight 1 each, the job spec's clip) and the outer step bit for
    /// bit, and the loss on `val_windows` validation windows.
    RoundClosed {
        round: Round,
        beacon: Digest,
        new_model: Digest,
        /// `f32::to_bits` of the validation loss.
        val_loss_bits: u32,
        accepted_tasks: u32,
        /// Validation windows the loss is the mean over.
        val_windows: u32,
        /// blake3 of the outer momentum after this round (the model encoding of the
        /// buffer); `None` while nothing has been merged yet (a zero buffer).
        #[cfg_attr(feature = "openapi", schema(required = true))]
        momentum: Option<Digest>,
        /// blake3 of each merged delta blob, in task order: the work-credited tasks'.
        merged: Vec<Digest>,
    },
    /// Credit to `key` for `task` in `round`; pending until that round closes.
    Credit {
        round: Round,
        key: PublicKey,
        amount: Amount,
        task: TaskId,
        kind: CreditKind,
    },
    /// Proven fraud: `key` forfeits every credit, pending and final.
    Slashed {
        key: PublicKey,
        task: TaskId,
        reason: String,
        #[cfg_attr(feature = "openapi", schema(required = true))]
        evidence: Option<Digest>,
    },
    /// The Merkle-sum tree of final balances after `round` closed.
    SharesEpoch {
        epoch: Epoch,
        round: Round,
        root: Digest,
        total: Amount,
        accounts: u64,
    },
    /// The worker answered its challenge: `opening` is the blake3 of the opening blob
    /// (its canonical bytes, served at `/v1/blobs/<hash>`) the coordinator took from
    /// the worker's signed upload. Verdicts judge this opening.
    TaskOpened {
        task: TaskId,
        worker: PublicKey,
        opening: Digest,
    },
    /// A committed task ends without a work credit or its worker's conviction, and
    /// says why: written at its round's close.
    TaskEnded { task: TaskId, reason: EndReason },
}

impl EntryBody {
    /// This body's kind.
    pub fn kind(&self) -> EntryKind {
        match self {
            EntryBody::Genesis { .. } => EntryKind::Genesis,
            EntryBody::ParticipantJoined { .. } => EntryKind::ParticipantJoined,
            EntryBody::RoundOpened { .. } => EntryKind::RoundOpened,
            EntryBody::TaskAssigned { .. } => EntryKind::TaskAssigned,
            EntryBody::WorkCommitted { .. } => EntryKind::WorkCommitted,
            EntryBody::ChallengeIssued { .. } => EntryKind::ChallengeIssued,
            EntryBody::Verdict { .. } => EntryKind::Verdict,
            EntryBody::RoundClosed { .. } => EntryKind::RoundClosed,
            EntryBody::Credit { .. } => EntryKind::Credit,
            EntryBody::Slashed { .. } => EntryKind::Slashed,
            EntryBody::SharesEpoch { .. } => EntryKind::SharesEpoch,
            EntryBody::TaskOpened { .. } => EntryKind::TaskOpened,
            EntryBody::TaskEnded { .. } => EntryKind::TaskEnded,
        }
    }

    /// The participant who must sign this body, with the field that names them, or
    /// `None` for coordinator-only kinds.
    pub fn signer(&self) -> Option<(&'static str, &PublicKey)> {
        match self {
            EntryBody::ParticipantJoined { key, .. } => Some(("key", key)),
            EntryBody::WorkCommitted { worker, .. } => Some(("worker", worker)),
            EntryBody::Verdict { verifier, .. } => Some(("verifier", verifier)),
            _ => None,
        }
    }

    /// The canonical body bytes (version, kind, fields): what a participant signs.
    ///
    /// Fails if a string or list is over its maximum, a step list is not strictly
    /// ascending, or the body alone is over [`MAX_ENTRY_LEN`].
    pub fn encode(&self) -> Result<Vec<u8>, EntryError> {
        self.validate()?;
        let mut w = Vec::with_capacity(128);
        w.push(ENTRY_VERSION);
        w.push(self.kind() as u8);
        match self {
            EntryBody::Genesis {
                job_spec,
                job_hash,
                dataset_root,
                log_key,
                coordinator_note_key,
                created_ms,
            } => {
                put_str(&mut w, job_spec);
                w.extend_from_slice(&job_hash.0);
                w.extend_from_slice(&dataset_root.0);
                w.extend_from_slice(&log_key.0);
                put_str(&mut w, coordinator_note_key);
                w.extend_from_slice(&created_ms.to_be_bytes());
            }
            EntryBody::ParticipantJoined { key, role, name } => {
                w.extend_from_slice(&key.0);
                w.push(match role {
                    Role::Worker => 0,
                    Role::Verifier => 1,
                });
                put_str(&mut w, name);
            }
            EntryBody::RoundOpened {
                round,
                base_model,
                beacon_commitment,
                inner_steps,
                deadline_ms,
            } => {
                w.extend_from_slice(&round.0.to_be_bytes());
                w.extend_from_slice(&base_model.0);
                w.extend_from_slice(&beacon_commitment.0);
                w.extend_from_slice(&inner_steps.to_be_bytes());
                w.extend_from_slice(&deadline_ms.to_be_bytes());
            }
            EntryBody::TaskAssigned {
                task,
                round,
                worker,
                seed,
                inner_steps,
                batch_size,
            } => {
                w.extend_from_slice(&task.0.to_be_bytes());
                w.extend_from_slice(&round.0.to_be_bytes());
                w.extend_from_slice(&worker.0);
                w.extend_from_slice(&seed.0);
                w.extend_from_slice(&inner_steps.to_be_bytes());
                w.extend_from_slice(&batch_size.to_be_bytes());
            }
            EntryBody::WorkCommitted {
                task,
                worker,
                trace_root,
                final_state,
                delta,
            } => {
                w.extend_from_slice(&task.0.to_be_bytes());
                w.extend_from_slice(&worker.0);
                w.extend_from_slice(&trace_root.0);
                w.extend_from_slice(&final_state.0);
                w.extend_from_slice(&delta.0);
            }
            EntryBody::ChallengeIssued {
                task,
                verifier,
                steps,
            } => {
                w.extend_from_slice(&task.0.to_be_bytes());
                w.extend_from_slice(&verifier.0);
                put_steps(&mut w, steps);
            }
            EntryBody::Verdict {
                task,
                verifier,
                accepted,
                steps,
                reason,
                evidence,
            } => {
                w.extend_from_slice(&task.0.to_be_bytes());
                w.extend_from_slice(&verifier.0);
                w.push(u8::from(*accepted));
                put_steps(&mut w, steps);
                put_str(&mut w, reason);
                put_opt_digest(&mut w, evidence);
            }
            EntryBody::RoundClosed {
                round,
                beacon,
                new_model,
                val_loss_bits,
                accepted_tasks,
                val_windows,
                momentum,
                merged,
            } => {
                w.extend_from_slice(&round.0.to_be_bytes());
                w.extend_from_slice(&beacon.0);
                w.extend_from_slice(&new_model.0);
                w.extend_from_slice(&val_loss_bits.to_be_bytes());
                w.extend_from_slice(&accepted_tasks.to_be_bytes());
                w.extend_from_slice(&val_windows.to_be_bytes());
                put_opt_digest(&mut w, momentum);
                w.extend_from_slice(&(merged.len() as u32).to_be_bytes());
                for d in merged {
                    w.extend_from_slice(&d.0);
                }
            }
            EntryBody::Credit {
                round,
                key,
                amount,
                task,
                kind,
            } => {
                w.extend_from_slice(&round.0.to_be_bytes());
                w.extend_from_slice(&key.0);
                w.extend_from_slice(&amount.0.to_be_bytes());
                w.extend_from_slice(&task.0.to_be_bytes());
                w.push(match kind {
                    CreditKind::Work => 0,
                    CreditKind::Verification => 1,
                });
            }
            EntryBody::Slashed {
                key,
                task,
                reason,
                evidence,
            } => {
                w.extend_from_slice(&key.0);
                w.extend_from_slice(&task.0.to_be_bytes());
                put_str(&mut w, reason);
                put_opt_digest(&mut w, evidence);
            }
            EntryBody::SharesEpoch {
                epoch,
                round,
                root,
                total,
                accounts,
            } => {
                w.extend_from_slice(&epoch.0.to_be_bytes());
                w.extend_from_slice(&round.0.to_be_bytes());
                w.extend_from_slice(&root.0);
                w.extend_from_slice(&total.0.to_be_bytes());
                w.extend_from_slice(&accounts.to_be_bytes());
            }
            EntryBody::TaskOpened {
                task,
                worker,
                opening,
            } => {
                w.extend_from_slice(&task.0.to_be_bytes());
                w.extend_from_slice(&worker.0);
                w.extend_from_slice(&opening.0);
            }
            EntryBody::TaskEnded { task, reason } => {
                w.extend_from_slice(&task.0.to_be_bytes());
                w.push(match reason {
                    EndReason::NotOpened => 0,
                    EndReason::NotJudged => 1,
                    EndReason::WorkerSlashed => 2,
                });
            }
        }
        // The signature block adds at most 65 bytes; check the whole entry's bound.
        let full = w.len() + 1 + if self.signer().is_some() { 64 } else { 0 };
        if full > MAX_ENTRY_LEN {
            return Err(EntryError::EntryTooLarge { len: full });
        }
        Ok(w)
    }

    /// Checks the per-field limits the decoder enforces, so nothing encodes that
    /// would not decode.
    fn validate(&self) -> Result<(), EntryError> {
        match self {
            EntryBody::Genesis {
                job_spec,
                coordinator_note_key,
                ..
            } => {
                check_len("job_spec", job_spec.len(), MAX_JOB_SPEC)?;
                check_len(
                    "coordinator_note_key",
                    coordinator_note_key.len(),
                    MAX_NOTE_KEY,
                )
            }
            EntryBody::ParticipantJoined { name, .. } => check_len("name", name.len(), MAX_NAME),
            EntryBody::ChallengeIssued { steps, .. } => check_steps(steps),
            EntryBody::Verdict { steps, reason, .. } => {
                check_steps(steps)?;
                check_len("reason", reason.len(), MAX_REASON)
            }
            EntryBody::Slashed { reason, .. } => check_len("reason", reason.len(), MAX_REASON),
            EntryBody::RoundClosed {
                merged,
                val_windows,
                ..
            } => {
                check_len("val_windows", *val_windows as usize, MAX_VAL_WINDOWS)?;
                check_len("merged", merged.len(), MAX_MERGED)
            }
            _ => Ok(()),
        }
    }
}

fn check_len(field: &'static str, len: usize, max: usize) -> Result<(), EntryError> {
    if len > max {
        return Err(EntryError::TooLong { field, len, max });
    }
    Ok(())
}

fn check_steps(steps: &[u32]) -> Result<(), EntryError> {
    check_len("steps", steps.len(), MAX_STEPS)?;
    if steps.windows(2).any(|w| w[0] >= w[1]) {
        return Err(EntryError::StepsNotAscending { field: "steps" });
    }
    Ok(())
}

fn put_str(w: &mut Vec<u8>, s: &str) {
    // Lengths are bounded by the field maximums (all far below u32::MAX), checked in
    // `validate` before any byte is written.
    w.extend_from_slice(&(s.len() as u32).to_be_bytes());
    w.extend_from_slice(s.as_bytes());
}

fn put_steps(w: &mut Vec<u8>, steps: &[u32]) {
    w.extend_from_slice(&(steps.len() as u32).to_be_bytes());
    for s in steps {
        w.extend_from_slice(&s.to_be_bytes());
    }
}

fn put_opt_digest(w: &mut Vec<u8>, d: &Option<Digest>) {
    match d {
        None => w.push(0),
        Some(d) => {
            w.push(1);
            w.extend_from_slice(&d.0);
        }
    }
}

/// A ledger entry: a body and, for the kinds a participant speaks, that participant's
/// signature.
///
/// Every `Entry` value is valid: its fields are within their limits, its encoding
/// fits [`MAX_ENTRY_LEN`], and its signature (if its kind has one) verifies. The
/// constructors and [`Entry::decode`] are the only ways to make one.
///
/// In JSON, `signature` is the participant's signature (128 hex digits) for the kinds
/// a participant signs (`participant_joined`, `work_committed`, `verdict`), else null.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Entry {
    body: EntryBody,
    #[serde(serialize_with = "ser_sig")]
    #[cfg_attr(
        feature = "openapi",
        schema(value_type = Option<String>, pattern = "^[0-9a-fA-F]{128}$", required = true)
    )]
    signature: Option<[u8; 64]>,
    /// The canonical encoding, computed once at construction.
    #[serde(skip)]
    encoded: Vec<u8>,
}

fn ser_sig<S: Serializer>(sig: &Option<[u8; 64]>, s: S) -> Result<S::Ok, S::Error> {
    match sig {
        None => s.serialize_none(),
        Some(sig) => s.serialize_some(&hex::encode(sig)),
    }
}

impl Entry {
    /// A coordinator-only entry (no participant signature).
    ///
    /// Fails with [`EntryError::MissingSignature`] for kinds a participant must sign
    /// (use [`Entry::signed`]), or if the body breaks a field limit.
    pub fn unsigned(body: EntryBody) -> Result<Entry, EntryError> {
        if body.signer().is_some() {
            return Err(EntryError::MissingSignature { kind: body.kind() });
        }
        let mut encoded = body.encode()?;
        encoded.push(0);
        Ok(Entry {
            body,
            signature: None,
            encoded,
        })
    }

    /// A participant-signed entry, signed here with `key`.
    ///
    /// Fails with [`EntryError::UnexpectedSignature`] for coordinator-only kinds, with
    /// [`EntryError::WrongSigner`] if `key` is not the key the body names, or if the
    /// body breaks a field limit.
    pub fn signed(body: EntryBody, key: &SigningKey) -> Result<Entry, EntryError> {
        let kind = body.kind();
        let Some((field, signer)) = body.signer() else {
            return Err(EntryError::UnexpectedSignature { kind });
        };
        if *signer != PublicKey::from(key) {
            return Err(EntryError::WrongSigner { kind, field });
        }
        let mut encoded = body.encode()?;
        let signature = key.sign(&signing_message(&encoded)).to_bytes();
        encoded.push(1);
        encoded.extend_from_slice(&signature);
        Ok(Entry {
            body,
            signature: Some(signature),
            encoded,
        })
    }

    /// An entry from a body and a signature made elsewhere (for example by a
    /// participant's browser over [`EntryBody::encode`]), verified here.
    pub fn with_signature(body: EntryBody, signature: [u8; 64]) -> Result<Entry, EntryError> {
        let kind = body.kind();
        let Some((field, signer)) = body.signer() else {
            return Err(EntryError::UnexpectedSignature { kind });
        };
        let mut encoded = body.encode()?;
        verify_participant(kind, field, signer, &encoded, &signature)?;
        encoded.push(1);
        encoded.extend_from_slice(&signature);
        Ok(Entry {
            body,
            signature: Some(signature),
            encoded,
        })
    }

    /// What the entry says.
    pub fn body(&self) -> &EntryBody {
        &self.body
    }

    /// The participant's signature, for the kinds that carry one.
    pub fn signature(&self) -> Option<&[u8; 64]> {
        self.signature.as_ref()
    }

    /// The entry's kind.
    pub fn kind(&self) -> EntryKind {
        self.body.kind()
    }

    /// The canonical bytes: what the log stores and hashes as a leaf.
    pub fn encode(&self) -> Vec<u8> {
        self.encoded.clone()
    }

    /// The canonical bytes, borrowed.
    pub fn as_bytes(&self) -> &[u8] {
        &self.encoded
    }

    /// Parses and verifies canonical bytes. See the module docs for every rule.
    pub fn decode(bytes: &[u8]) -> Result<Entry, EntryError> {
        Entry::decode_with(bytes, &mut verify_participant)
    }

    /// Decodes each of `entries` as [`Entry::decode`] would, checking their
    /// participant signatures together in one Ed25519 batch verification (about half
    /// the CPU per signature). If the batch fails, each signature is checked alone,
    /// so every result is what [`Entry::decode`] gives.
    ///
    /// One difference, documented where the auditor uses this: before that fallback,
    /// a batch uses the *cofactored* equation, so it also accepts a signature that the
    /// strict check refuses because its `R` or key carries a small torsion component
    /// (which only the key's holder can make: batch verification is as unforgeable).
    /// Keys and `R`s of small order are refused here, as the strict check does. A
    /// log whose signatures all pass [`Entry::decode`] decodes the same either way.
    #[cfg(feature = "batch")]
    pub fn decode_batch<B: AsRef<[u8]>>(entries: &[B]) -> Vec<Result<Entry, EntryError>> {
        let mut pending: Vec<(usize, VerifyingKey, Vec<u8>, Signature)> = Vec::new();
        let mut out: Vec<Result<Entry, EntryError>> = Vec::with_capacity(entries.len());
        for (i, bytes) in entries.iter().enumerate() {
            let mut collect = |kind: EntryKind,
                               field: &'static str,
                               signer: &PublicKey,
                               body: &[u8],
                               sig: &[u8; 64]|
             -> Result<(), EntryError> {
                let key = signer
                    .verifying_key()
                    .filter(|k| !k.is_weak())
                    .ok_or(EntryError::InvalidKey { field })?;
                let r = curve25519_dalek::edwards::CompressedEdwardsY(
                    sig[..32].try_into().unwrap_or([0; 32]),
                );
                if r.decompress().is_none_or(|p| p.is_small_order()) {
                    return Err(EntryError::BadSignature { kind, field });
                }
                pending.push((i, key, signing_message(body), Signature::from_bytes(sig)));
                Ok(())
            };
            out.push(Entry::decode_with(bytes.as_ref(), &mut collect));
        }
        let messages: Vec<&[u8]> = pending.iter().map(|p| p.2.as_slice()).collect();
        let signatures: Vec<Signature> = pending.iter().map(|p| p.3).collect();
        let keys: Vec<VerifyingKey> = pending.iter().map(|p| p.1).collect();
        if ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_err() {
            // Name the entries whose signatures fail, one by one.
            for (i, ..) in &pending {
                if out[*i].is_ok() {
                    out[*i] = Entry::decode(entries[*i].as_ref());
                }
            }
        }
        out
    }

    fn decode_with(bytes: &[u8], verify: &mut SignatureCheck<'_>) -> Result<Entry, EntryError> {
        if bytes.len() > MAX_ENTRY_LEN {
            return Err(EntryError::EntryTooLarge { len: bytes.len() });
        }
        let mut r = Reader { bytes, pos: 0 };
        let version = r.u8("version")?;
        if version != ENTRY_VERSION {
            return Err(EntryError::UnknownVersion(version));
        }
        let kind_byte = r.u8("kind")?;
        let kind = EntryKind::from_byte(kind_byte).ok_or(EntryError::UnknownKind(kind_byte))?;
        let body = match kind {
            EntryKind::Genesis => EntryBody::Genesis {
                job_spec: r.string("job_spec", MAX_JOB_SPEC)?,
                job_hash: Digest(r.array("job_hash")?),
                dataset_root: Digest(r.array("dataset_root")?),
                log_key: PublicKey(r.array("log_key")?),
                coordinator_note_key: r.string("coordinator_note_key", MAX_NOTE_KEY)?,
                created_ms: r.u64("created_ms")?,
            },
            EntryKind::ParticipantJoined => EntryBody::ParticipantJoined {
                key: PublicKey(r.array("key")?),
                role: match r.u8("role")? {
                    0 => Role::Worker,
                    1 => Role::Verifier,
                    value => {
                        return Err(EntryError::InvalidTag {
                            field: "role",
                            value,
                        });
                    }
                },
                name: r.string("name", MAX_NAME)?,
            },
            EntryKind::RoundOpened => EntryBody::RoundOpened {
                round: Round(r.u64("round")?),
                base_model: Digest(r.array("base_model")?),
                beacon_commitment: Digest(r.array("beacon_commitment")?),
                inner_steps: r.u32("inner_steps")?,
                deadline_ms: r.u64("deadline_ms")?,
            },
            EntryKind::TaskAssigned => EntryBody::TaskAssigned {
                task: TaskId(r.u64("task")?),
                round: Round(r.u64("round")?),
                worker: PublicKey(r.array("worker")?),
                seed: Digest(r.array("seed")?),
                inner_steps: r.u32("inner_steps")?,
                batch_size: r.u32("batch_size")?,
            },
            EntryKind::WorkCommitted => EntryBody::WorkCommitted {
                task: TaskId(r.u64("task")?),
                worker: PublicKey(r.array("worker")?),
                trace_root: Digest(r.array("trace_root")?),
                final_state: Digest(r.array("final_state")?),
                delta: Digest(r.array("delta")?),
            },
            EntryKind::ChallengeIssued => EntryBody::ChallengeIssued {
                task: TaskId(r.u64("task")?),
                verifier: PublicKey(r.array("verifier")?),
                steps: r.steps("steps")?,
            },
            EntryKind::Verdict => EntryBody::Verdict {
                task: TaskId(r.u64("task")?),
                verifier: PublicKey(r.array("verifier")?),
                accepted: r.bool("accepted")?,
                steps: r.steps("steps")?,
                reason: r.string("reason", MAX_REASON)?,
                evidence: r.opt_digest("evidence")?,
            },
            EntryKind::RoundClosed => EntryBody::RoundClosed {
                round: Round(r.u64("round")?),
                beacon: Digest(r.array("beacon")?),
                new_model: Digest(r.array("new_model")?),
                val_loss_bits: r.u32("val_loss_bits")?,
                accepted_tasks: r.u32("accepted_tasks")?,
                val_windows: r.len("val_windows", MAX_VAL_WINDOWS)? as u32,
                momentum: r.opt_digest("momentum")?,
                merged: {
                    let count = r.len("merged", MAX_MERGED)?;
                    let mut out = Vec::with_capacity(count);
                    for _ in 0..count {
                        out.push(Digest(r.array("merged")?));
                    }
                    out
                },
            },
            EntryKind::Credit => EntryBody::Credit {
                round: Round(r.u64("round")?),
                key: PublicKey(r.array("key")?),
                amount: Amount(r.u64("amount")?),
                task: TaskId(r.u64("task")?),
                kind: match r.u8("credit kind")? {
                    0 => CreditKind::Work,
                    1 => CreditKind::Verification,
                    value => {
                        return Err(EntryError::InvalidTag {
                            field: "credit kind",
                            value,
                        });
                    }
                },
            },
            EntryKind::Slashed => EntryBody::Slashed {
                key: PublicKey(r.array("key")?),
                task: TaskId(r.u64("task")?),
                reason: r.string("reason", MAX_REASON)?,
                evidence: r.opt_digest("evidence")?,
            },
            EntryKind::SharesEpoch => EntryBody::SharesEpoch {
                epoch: Epoch(r.u64("epoch")?),
                round: Round(r.u64("round")?),
                root: Digest(r.array("root")?),
                total: Amount(r.u64("total")?),
                accounts: r.u64("accounts")?,
            },
            EntryKind::TaskOpened => EntryBody::TaskOpened {
                task: TaskId(r.u64("task")?),
                worker: PublicKey(r.array("worker")?),
                opening: Digest(r.array("opening")?),
            },
            EntryKind::TaskEnded => EntryBody::TaskEnded {
                task: TaskId(r.u64("task")?),
                reason: match r.u8("end reason")? {
                    0 => EndReason::NotOpened,
                    1 => EndReason::NotJudged,
                    2 => EndReason::WorkerSlashed,
                    value => {
                        return Err(EntryError::InvalidTag {
                            field: "end reason",
                            value,
                        });
                    }
                },
            },
        };
        let body_len = r.pos;
        let signature = match r.u8("signature flag")? {
            0 => None,
            1 => Some(r.array::<64>("signature")?),
            value => {
                return Err(EntryError::InvalidTag {
                    field: "signature flag",
                    value,
                });
            }
        };
        if r.pos != bytes.len() {
            return Err(EntryError::TrailingBytes {
                count: bytes.len() - r.pos,
            });
        }
        let body_bytes = bytes
            .get(..body_len)
            .ok_or(EntryError::Truncated { field: "body" })?;
        match (body.signer(), signature) {
            (Some(_), None) => return Err(EntryError::MissingSignature { kind }),
            (None, Some(_)) => return Err(EntryError::UnexpectedSignature { kind }),
            (Some((field, signer)), Some(sig)) => verify(kind, field, signer, body_bytes, &sig)?,
            (None, None) => {}
        }
        // Strings and lists were bounded while reading; steps must also be ascending.
        body.validate()?;
        Ok(Entry {
            body,
            signature,
            encoded: bytes.to_vec(),
        })
    }
}

/// How [`Entry::decode_with`] checks a participant signature: the kind, the field
/// naming the signer, the signer, the body bytes and the signature.
type SignatureCheck<'a> =
    dyn FnMut(EntryKind, &'static str, &PublicKey, &[u8], &[u8; 64]) -> Result<(), EntryError> + 'a;

fn signing_message(body: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(SIGNING_CONTEXT.len() + body.len());
    msg.extend_from_slice(SIGNING_CONTEXT);
    msg.extend_from_slice(body);
    msg
}

fn verify_participant(
    kind: EntryKind,
    field: &'static str,
    signer: &PublicKey,
    body: &[u8],
    signature: &[u8; 64],
) -> Result<(), EntryError> {
    let key = signer
        .verifying_key()
        .ok_or(EntryError::InvalidKey { field })?;
    key.verify_strict(&signing_message(body), &Signature::from_bytes(signature))
        .map_err(|_| EntryError::BadSignature { kind, field })
}

/// A cursor over untrusted bytes; every read names its field for the error.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, field: &'static str, n: usize) -> Result<&[u8], EntryError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(EntryError::Truncated { field })?;
        let out = self
            .bytes
            .get(self.pos..end)
            .ok_or(EntryError::Truncated { field })?;
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], EntryError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(field, N)?);
        Ok(out)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, EntryError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, EntryError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, EntryError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    fn bool(&mut self, field: &'static str) -> Result<bool, EntryError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(EntryError::InvalidTag { field, value }),
        }
    }

    /// A length prefix, checked against `max` before anything is allocated.
    fn len(&mut self, field: &'static str, max: usize) -> Result<usize, EntryError> {
        let len = self.u32(field)? as usize;
        check_len(field, len, max)?;
        Ok(len)
    }

    fn string(&mut self, field: &'static str, max: usize) -> Result<String, EntryError> {
        let len = self.len(field, max)?;
        let raw = self.take(field, len)?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| EntryError::InvalidUtf8 { field })
    }

    fn steps(&mut self, field: &'static str) -> Result<Vec<u32>, EntryError> {
        let count = self.len(field, MAX_STEPS)?;
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            out.push(self.u32(field)?);
        }
        Ok(out)
    }

    fn opt_digest(&mut self, field: &'static str) -> Result<Option<Digest>, EntryError> {
        match self.u8(field)? {
            0 => Ok(None),
            1 => Ok(Some(Digest(self.array(field)?))),
            value => Err(EntryError::InvalidTag { field, value }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn d(b: u8) -> Digest {
        Digest([b; 32])
    }

    /// One body of every kind, with the participant kinds naming `key(1)`.
    fn samples() -> Vec<EntryBody> {
        let pk = PublicKey::from(&key(1));
        vec![
            EntryBody::Genesis {
                job_spec: "[job]\nname = \"shakespeare\"\n".into(),
                job_hash: d(1),
                dataset_root: d(2),
                log_key: PublicKey::from(&key(9)),
                coordinator_note_key: "lupus+0a0b0c0d+AQID".into(),
                created_ms: 1_790_000_000_000,
            },
            EntryBody::ParticipantJoined {
                key: pk,
                role: Role::Verifier,
                name: "ada".into(),
            },
            EntryBody::RoundOpened {
                round: Round(3),
                base_model: d(3),
                beacon_commitment: d(4),
                inner_steps: 50,
                deadline_ms: 99,
            },
            EntryBody::TaskAssigned {
                task: TaskId(7),
                round: Round(3),
                worker: pk,
                seed: d(5),
                inner_steps: 50,
                batch_size: 32,
            },
            EntryBody::WorkCommitted {
                task: TaskId(7),
                worker: pk,
                trace_root: d(6),
                final_state: d(7),
                delta: d(8),
            },
            EntryBody::ChallengeIssued {
                task: TaskId(7),
                verifier: pk,
                steps: vec![1, 9, 40],
            },
            EntryBody::Verdict {
                task: TaskId(7),
                verifier: pk,
                accepted: false,
                steps: vec![9],
                reason: "step 9 output differs".into(),
                evidence: Some(d(9)),
            },
            EntryBody::RoundClosed {
                round: Round(3),
                beacon: d(10),
                new_model: d(11),
                val_loss_bits: 2.5f32.to_bits(),
                accepted_tasks: 2,
                val_windows: 128,
                momentum: Some(d(14)),
                merged: vec![d(15), d(16)],
            },
            EntryBody::Credit {
                round: Round(3),
                key: pk,
                amount: Amount(1 << 40),
                task: TaskId(7),
                kind: CreditKind::Verification,
            },
            EntryBody::Slashed {
                key: pk,
                task: TaskId(7),
                reason: "fraud proof".into(),
                evidence: None,
            },
            EntryBody::SharesEpoch {
                epoch: Epoch(1),
                round: Round(3),
                root: d(12),
                total: Amount(500),
                accounts: 2,
            },
            EntryBody::TaskOpened {
                task: TaskId(9),
                worker: pk,
                opening: d(13),
            },
            EntryBody::TaskEnded {
                task: TaskId(9),
                reason: EndReason::NotJudged,
            },
        ]
    }

    fn make(body: EntryBody) -> Entry {
        if body.signer().is_some() {
            Entry::signed(body, &key(1)).unwrap()
        } else {
            Entry::unsigned(body).unwrap()
        }
    }

    #[test]
    fn every_kind_round_trips() {
        for body in samples() {
            let entry = make(body.clone());
            let bytes = entry.encode();
            let back = Entry::decode(&bytes).unwrap();
            assert_eq!(back, entry);
            assert_eq!(back.body(), &body);
            assert_eq!(back.encode(), bytes);
        }
    }

    #[test]
    fn layout_matches_the_documented_table() {
        let entry = make(EntryBody::SharesEpoch {
            epoch: Epoch(1),
            round: Round(2),
            root: d(0xab),
            total: Amount(0x0102),
            accounts: 3,
        });
        let mut expected = vec![ENTRY_VERSION, 11];
        expected.extend_from_slice(&1u64.to_be_bytes());
        expected.extend_from_slice(&2u64.to_be_bytes());
        expected.extend_from_slice(&[0xab; 32]);
        expected.extend_from_slice(&0x0102u64.to_be_bytes());
        expected.extend_from_slice(&3u64.to_be_bytes());
        expected.push(0);
        assert_eq!(entry.encode(), expected);

        let joined = make(EntryBody::ParticipantJoined {
            key: PublicKey::from(&key(1)),
            role: Role::Worker,
            name: "ab".into(),
        });
        let bytes = joined.encode();
        assert_eq!(&bytes[..2], &[ENTRY_VERSION, 2]);
        assert_eq!(&bytes[2..34], PublicKey::from(&key(1)).as_bytes());
        assert_eq!(&bytes[34..41], &[0, 0, 0, 0, 2, b'a', b'b']);
        assert_eq!(bytes[41], 1);
        assert_eq!(bytes.len(), 42 + 64);

        let closed = make(EntryBody::RoundClosed {
            round: Round(2),
            beacon: d(1),
            new_model: d(2),
            val_loss_bits: 7,
            accepted_tasks: 2,
            val_windows: 16,
            momentum: Some(d(3)),
            merged: vec![d(4), d(5)],
        });
        let mut expected = vec![ENTRY_VERSION, 8];
        expected.extend_from_slice(&2u64.to_be_bytes());
        expected.extend_from_slice(&[1; 32]);
        expected.extend_from_slice(&[2; 32]);
        expected.extend_from_slice(&7u32.to_be_bytes());
        expected.extend_from_slice(&2u32.to_be_bytes());
        expected.extend_from_slice(&16u32.to_be_bytes());
        expected.push(1);
        expected.extend_from_slice(&[3; 32]);
        expected.extend_from_slice(&2u32.to_be_bytes());
        expected.extend_from_slice(&[4; 32]);
        expected.extend_from_slice(&[5; 32]);
        expected.push(0);
        assert_eq!(closed.encode(), expected);
    }

    #[test]
    fn signatures_are_required_checked_and_refused_where_none_belongs() {
        let joined = samples().swap_remove(1);
        // Unsigned participant kind.
        assert_eq!(
            Entry::unsigned(joined.clone()),
            Err(EntryError::MissingSignature {
                kind: EntryKind::ParticipantJoined
            })
        );
        let mut bytes = joined.encode().unwrap();
        bytes.push(0);
        assert_eq!(
            Entry::decode(&bytes),
            Err(EntryError::MissingSignature {
                kind: EntryKind::ParticipantJoined
            })
        );
        // Signed by another key.
        assert!(matches!(
            Entry::signed(joined.clone(), &key(2)),
            Err(EntryError::WrongSigner { field: "key", .. })
        ));
        let other_sig = key(2)
            .sign(&signing_message(&joined.encode().unwrap()))
            .to_bytes();
        let mut forged = joined.encode().unwrap();
        forged.push(1);
        forged.extend_from_slice(&other_sig);
        assert_eq!(
            Entry::decode(&forged),
            Err(EntryError::BadSignature {
                kind: EntryKind::ParticipantJoined,
                field: "key"
            })
        );
        assert!(Entry::with_signature(joined, other_sig).is_err());
        // A signature on a coordinator kind.
        let credit = samples().swap_remove(8);
        assert!(matches!(
            Entry::signed(credit.clone(), &key(1)),
            Err(EntryError::UnexpectedSignature { .. })
        ));
        let mut bytes = credit.encode().unwrap();
        bytes.push(1);
        bytes.extend_from_slice(&[0u8; 64]);
        assert_eq!(
            Entry::decode(&bytes),
            Err(EntryError::UnexpectedSignature {
                kind: EntryKind::Credit
            })
        );
    }

    #[test]
    fn a_signer_key_that_is_not_a_curve_point_is_refused() {
        // Find 32 bytes that do not decompress to an Ed25519 point (about half do not).
        let bad = (0u8..=255)
            .map(|b| {
                let mut k = [0u8; 32];
                k[0] = b;
                k[1] = 1;
                PublicKey(k)
            })
            .find(|k| k.verifying_key().is_none())
            .unwrap();
        let body = EntryBody::ParticipantJoined {
            key: bad,
            role: Role::Worker,
            name: String::new(),
        };
        let mut bytes = body.encode().unwrap();
        bytes.push(1);
        bytes.extend_from_slice(&[7u8; 64]);
        assert_eq!(
            Entry::decode(&bytes),
            Err(EntryError::InvalidKey { field: "key" })
        );
    }

    #[test]
    fn a_signature_made_elsewhere_is_accepted() {
        let body = samples().swap_remove(4);
        let sig = key(1)
            .sign(&signing_message(&body.encode().unwrap()))
            .to_bytes();
        let entry = Entry::with_signature(body.clone(), sig).unwrap();
        assert_eq!(entry, Entry::signed(body, &key(1)).unwrap());
    }

    #[test]
    fn strict_decoding_refuses_non_canonical_bytes() {
        let good = make(samples().swap_remove(6)).encode();
        let mut v = good.clone();
        v[0] = 1;
        assert_eq!(Entry::decode(&v), Err(EntryError::UnknownVersion(1)));
        let mut v = good.clone();
        v[1] = 14;
        assert_eq!(Entry::decode(&v), Err(EntryError::UnknownKind(14)));
        let mut v = good.clone();
        v.push(0);
        assert_eq!(
            Entry::decode(&v),
            Err(EntryError::TrailingBytes { count: 1 })
        );
        // The `accepted` bool sits after version, kind, task and verifier.
        let mut v = good.clone();
        v[2 + 8 + 32] = 2;
        assert_eq!(
            Entry::decode(&v),
            Err(EntryError::InvalidTag {
                field: "accepted",
                value: 2
            })
        );
        for cut in 0..good.len() {
            assert!(
                matches!(
                    Entry::decode(&good[..cut]),
                    Err(EntryError::Truncated { .. })
                ),
                "cut at {cut}"
            );
        }
        assert_eq!(
            Entry::decode(&[]),
            Err(EntryError::Truncated { field: "version" })
        );
    }

    /// A batch decodes exactly as one by one: valid entries, a forged signature
    /// (named at its own index while the others still decode), malformed bytes.
    #[cfg(feature = "batch")]
    #[test]
    fn a_batch_decodes_as_one_by_one_and_names_a_bad_signature() {
        let good: Vec<Vec<u8>> = samples().into_iter().map(|b| make(b).encode()).collect();
        let batch = Entry::decode_batch(&good);
        assert!(batch.iter().all(Result::is_ok));
        assert_eq!(
            batch.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
            good.iter()
                .map(|b| Entry::decode(b).unwrap())
                .collect::<Vec<_>>()
        );
        let mut mixed = good.clone();
        let signed = mixed
            .iter()
            .position(|b| Entry::decode(b).unwrap().body().signer().is_some())
            .unwrap();
        let last = mixed[signed].len() - 1;
        mixed[signed][last] ^= 1;
        mixed.push(vec![ENTRY_VERSION, 99]);
        let batch = Entry::decode_batch(&mixed);
        let single: Vec<_> = mixed.iter().map(|b| Entry::decode(b)).collect();
        assert_eq!(batch, single);
        assert!(matches!(
            batch[signed],
            Err(EntryError::BadSignature { .. })
        ));
    }

    #[test]
    fn limits_are_enforced_both_ways() {
        let long = EntryBody::Slashed {
            key: PublicKey([1; 32]),
            task: TaskId(1),
            reason: "x".repeat(MAX_REASON + 1),
            evidence: None,
        };
        assert_eq!(
            Entry::unsigned(long),
            Err(EntryError::TooLong {
                field: "reason",
                len: MAX_REASON + 1,
                max: MAX_REASON
            })
        );
        // A length prefix over the maximum is refused before allocation.
        let mut v = vec![ENTRY_VERSION, 10];
        v.extend_from_slice(&[1; 32]);
        v.extend_from_slice(&1u64.to_be_bytes());
        v.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            Entry::decode(&v),
            Err(EntryError::TooLong {
                field: "reason",
                ..
            })
        ));
        // A close naming more validation windows than an auditor is bound to replay,
        // refused to encode and, patched into the bytes, to decode.
        let close = |val_windows: u32| EntryBody::RoundClosed {
            round: Round(1),
            beacon: Digest([1; 32]),
            new_model: Digest([2; 32]),
            val_loss_bits: 0,
            accepted_tasks: 0,
            val_windows,
            momentum: None,
            merged: Vec::new(),
        };
        let over = MAX_VAL_WINDOWS as u32 + 1;
        assert_eq!(
            Entry::unsigned(close(over)),
            Err(EntryError::TooLong {
                field: "val_windows",
                len: MAX_VAL_WINDOWS + 1,
                max: MAX_VAL_WINDOWS
            })
        );
        let mut v = Entry::unsigned(close(MAX_VAL_WINDOWS as u32))
            .unwrap()
            .encode();
        assert!(Entry::decode(&v).is_ok());
        // version, kind, round, beacon, new_model, val_loss_bits, accepted_tasks
        let at = 2 + 8 + 32 + 32 + 4 + 4;
        v[at..at + 4].copy_from_slice(&over.to_be_bytes());
        assert!(matches!(
            Entry::decode(&v),
            Err(EntryError::TooLong {
                field: "val_windows",
                ..
            })
        ));
        // Not ascending.
        let challenge = EntryBody::ChallengeIssued {
            task: TaskId(1),
            verifier: PublicKey([1; 32]),
            steps: vec![3, 3],
        };
        assert_eq!(
            Entry::unsigned(challenge),
            Err(EntryError::StepsNotAscending { field: "steps" })
        );
        let mut v = vec![ENTRY_VERSION, 6];
        v.extend_from_slice(&1u64.to_be_bytes());
        v.extend_from_slice(&[1; 32]);
        v.extend_from_slice(&2u32.to_be_bytes());
        v.extend_from_slice(&5u32.to_be_bytes());
        v.extend_from_slice(&4u32.to_be_bytes());
        v.push(0);
        assert_eq!(
            Entry::decode(&v),
            Err(EntryError::StepsNotAscending { field: "steps" })
        );
        // Invalid UTF-8.
        let mut v = vec![ENTRY_VERSION, 10];
        v.extend_from_slice(&[1; 32]);
        v.extend_from_slice(&1u64.to_be_bytes());
        v.extend_from_slice(&1u32.to_be_bytes());
        v.push(0xff);
        v.extend_from_slice(&[0, 0]);
        assert_eq!(
            Entry::decode(&v),
            Err(EntryError::InvalidUtf8 { field: "reason" })
        );
    }

    #[test]
    fn the_largest_job_spec_fits_the_tiles_bound() {
        let mut body = samples().swap_remove(0);
        if let EntryBody::Genesis {
            job_spec,
            coordinator_note_key,
            ..
        } = &mut body
        {
            *job_spec = "#".repeat(MAX_JOB_SPEC);
            *coordinator_note_key = "k".repeat(MAX_NOTE_KEY);
        }
        let entry = Entry::unsigned(body).unwrap();
        assert!(entry.encode().len() <= MAX_ENTRY_LEN);
        assert_eq!(Entry::decode(&entry.encode()).unwrap(), entry);
        let too_big = vec![0u8; MAX_ENTRY_LEN + 1];
        assert_eq!(
            Entry::decode(&too_big),
            Err(EntryError::EntryTooLarge {
                len: MAX_ENTRY_LEN + 1
            })
        );
    }

    #[test]
    fn json_forms_are_hex_and_decimal_strings() {
        let json = serde_json::to_value(samples().swap_remove(8)).unwrap();
        assert_eq!(json["type"], "credit");
        assert_eq!(json["kind"], "verification");
        assert_eq!(json["amount"], "1099511627776");
        assert_eq!(json["key"], PublicKey::from(&key(1)).to_string());
        let back: EntryBody = serde_json::from_value(json).unwrap();
        assert_eq!(back, samples().swap_remove(8));
        assert!(serde_json::from_str::<Amount>("\"01\"").is_err());
        assert!(serde_json::from_str::<Amount>("\"-1\"").is_err());
        assert!(serde_json::from_str::<Amount>("\"18446744073709551616\"").is_err());
    }

    fn arb_digest() -> impl Strategy<Value = Digest> {
        any::<[u8; 32]>().prop_map(Digest)
    }

    fn arb_steps() -> impl Strategy<Value = Vec<u32>> {
        proptest::collection::btree_set(any::<u32>(), 0..20).prop_map(|s| s.into_iter().collect())
    }

    /// Bodies of every kind; participant kinds are signed by `key(1)`.
    fn arb_body() -> impl Strategy<Value = EntryBody> {
        let pk = PublicKey::from(&key(1));
        let any_pk = any::<[u8; 32]>().prop_map(PublicKey);
        prop_oneof![
            (
                ".{0,40}",
                arb_digest(),
                arb_digest(),
                any_pk.clone(),
                "[a-z+0-9]{0,30}",
                any::<u64>()
            )
                .prop_map(
                    |(
                        job_spec,
                        job_hash,
                        dataset_root,
                        log_key,
                        coordinator_note_key,
                        created_ms,
                    )| {
                        EntryBody::Genesis {
                            job_spec,
                            job_hash,
                            dataset_root,
                            log_key,
                            coordinator_note_key,
                            created_ms,
                        }
                    }
                ),
            (any::<bool>(), ".{0,20}").prop_map(move |(v, name)| EntryBody::ParticipantJoined {
                key: pk,
                role: if v { Role::Verifier } else { Role::Worker },
                name
            }),
            (
                any::<u64>(),
                arb_digest(),
                arb_digest(),
                any::<u32>(),
                any::<u64>()
            )
                .prop_map(
                    |(r, base_model, beacon_commitment, inner_steps, deadline_ms)| {
                        EntryBody::RoundOpened {
                            round: Round(r),
                            base_model,
                            beacon_commitment,
                            inner_steps,
                            deadline_ms,
                        }
                    }
                ),
            (
                any::<u64>(),
                any::<u64>(),
                any_pk.clone(),
                arb_digest(),
                any::<u32>(),
                any::<u32>()
            )
                .prop_map(|(t, r, worker, seed, inner_steps, batch_size)| {
                    EntryBody::TaskAssigned {
                        task: TaskId(t),
                        round: Round(r),
                        worker,
                        seed,
                        inner_steps,
                        batch_size,
                    }
                }),
            (any::<u64>(), arb_digest(), arb_digest(), arb_digest()).prop_map(
                move |(t, trace_root, final_state, delta)| {
                    EntryBody::WorkCommitted {
                        task: TaskId(t),
                        worker: pk,
                        trace_root,
                        final_state,
                        delta,
                    }
                }
            ),
            (any::<u64>(), any_pk.clone(), arb_steps()).prop_map(|(t, verifier, steps)| {
                EntryBody::ChallengeIssued {
                    task: TaskId(t),
                    verifier,
                    steps,
                }
            }),
            (
                any::<u64>(),
                any::<bool>(),
                arb_steps(),
                ".{0,30}",
                proptest::option::of(arb_digest())
            )
                .prop_map(move |(t, accepted, steps, reason, evidence)| {
                    EntryBody::Verdict {
                        task: TaskId(t),
                        verifier: pk,
                        accepted,
                        steps,
                        reason,
                        evidence,
                    }
                }),
            (
                (any::<u64>(), arb_digest(), arb_digest(), any::<u32>()),
                (
                    any::<u32>(),
                    0..=MAX_VAL_WINDOWS as u32,
                    proptest::option::of(arb_digest()),
                    proptest::collection::vec(arb_digest(), 0..4)
                )
            )
                .prop_map(
                    |(
                        (r, beacon, new_model, val_loss_bits),
                        (accepted_tasks, val_windows, momentum, merged),
                    )| {
                        EntryBody::RoundClosed {
                            round: Round(r),
                            beacon,
                            new_model,
                            val_loss_bits,
                            accepted_tasks,
                            val_windows,
                            momentum,
                            merged,
                        }
                    }
                ),
            (
                any::<u64>(),
                any_pk.clone(),
                any::<u64>(),
                any::<u64>(),
                any::<bool>()
            )
                .prop_map(|(r, key, a, t, v)| EntryBody::Credit {
                    round: Round(r),
                    key,
                    amount: Amount(a),
                    task: TaskId(t),
                    kind: if v {
                        CreditKind::Verification
                    } else {
                        CreditKind::Work
                    }
                }),
            (
                any_pk.clone(),
                any::<u64>(),
                ".{0,30}",
                proptest::option::of(arb_digest())
            )
                .prop_map(|(key, t, reason, evidence)| EntryBody::Slashed {
                    key,
                    task: TaskId(t),
                    reason,
                    evidence
                }),
            (
                any::<u64>(),
                any::<u64>(),
                arb_digest(),
                any::<u64>(),
                any::<u64>()
            )
                .prop_map(|(e, r, root, total, accounts)| EntryBody::SharesEpoch {
                    epoch: Epoch(e),
                    round: Round(r),
                    root,
                    total: Amount(total),
                    accounts
                }),
            (any::<u64>(), any_pk, arb_digest()).prop_map(|(t, worker, opening)| {
                EntryBody::TaskOpened {
                    task: TaskId(t),
                    worker,
                    opening,
                }
            }),
            (any::<u64>(), 0u8..3).prop_map(|(t, r)| EntryBody::TaskEnded {
                task: TaskId(t),
                reason: [
                    EndReason::NotOpened,
                    EndReason::NotJudged,
                    EndReason::WorkerSlashed
                ][usize::from(r)],
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// decode(encode(e)) == e for every entry.
        #[test]
        fn decode_inverts_encode(body in arb_body()) {
            let entry = make(body);
            prop_assert_eq!(Entry::decode(&entry.encode()).unwrap(), entry);
        }

        /// encode(decode(b)) == b for every accepted b: mutate valid encodings at
        /// random and check that whatever still decodes re-encodes to the same bytes.
        #[test]
        fn encode_inverts_decode_on_accepted_bytes(
            body in arb_body(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in any::<prop::sample::Index>(),
            extend in any::<bool>(),
        ) {
            let mut bytes = make(body).encode();
            for (at, value) in edits {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            if extend {
                bytes.push(0);
            } else {
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            if let Ok(entry) = Entry::decode(&bytes) {
                prop_assert_eq!(entry.encode(), bytes);
            }
        }

        /// Arbitrary bytes never panic the decoder, and what it accepts re-encodes
        /// to itself.
        #[test]
        fn arbitrary_bytes_decode_or_error(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(entry) = Entry::decode(&bytes) {
                prop_assert_eq!(entry.encode(), bytes);
            }
        }
    }
}
