//! C2SP checkpoints (<https://c2sp.org/tlog-checkpoint>): a signed note whose text
//! is the log's origin, tree size and root hash.
//!
//! [`Checkpoint::to_body`] and [`Checkpoint::parse_body`] implement the spec's
//! "Note text" section: origin (non-empty), size (decimal, no leading zeroes),
//! root (base64 of 32 bytes), then optional non-empty extension lines.
//! [`sign_checkpoint`] and [`open_checkpoint`] implement "Signatures": the log signs
//! with a key whose name is the origin, and a client requires that signature while
//! keeping any other (witness cosignatures) as the signed-note spec says.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::hash::{Hash, MAX_TREE_SIZE, TreeSize};
use crate::note::{NoteError, NoteSignature, NoteSigner, NoteVerifier, open_note};

/// The three mandatory lines of a tree head, plus opaque extension lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's identity, e.g. `lupus.example/job-1`.
    pub origin: String,
    /// Number of leaves.
    pub size: TreeSize,
    /// RFC 9162 root of the tree of `size` leaves.
    pub root: Hash,
    /// Extension lines (without newlines), usually none.
    pub extensions: Vec<String>,
}

/// A checkpoint opened with the log's key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedCheckpoint {
    /// The parsed body.
    pub checkpoint: Checkpoint,
    /// The whole signed note, as received.
    pub note: String,
    /// The log's own, verified signature.
    pub log_signature: NoteSignature,
    /// Other signatures (witness cosignatures), not verified here.
    pub other_signatures: Vec<NoteSignature>,
}

/// Errors of building, parsing and opening checkpoints.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The body has fewer than three lines or does not end in a newline.
    #[error(
        "checkpoint body must be at least three lines (origin, size, root), each ending in a newline"
    )]
    TooFewLines,
    /// The origin line is empty or unusable.
    #[error("checkpoint origin {0:?} is invalid: it must be non-empty, without control characters")]
    BadOrigin(String),
    /// The size line is not a canonical decimal.
    #[error("checkpoint size {0:?} is not a decimal number without leading zeroes")]
    BadSize(String),
    /// The size is beyond what this crate supports.
    #[error("checkpoint size {0} is out of range: at most 2^63 leaves are supported")]
    SizeOutOfRange(u64),
    /// The root line is not base64 of 32 bytes.
    #[error("checkpoint root {0:?} is not the base64 encoding of a 32-byte hash")]
    BadRoot(String),
    /// An extension line is empty or holds a newline or control character.
    #[error(
        "checkpoint extension line {0:?} is invalid: extension lines must be non-empty single lines"
    )]
    BadExtension(String),
    /// The note is signed, but its origin is not the verifier key's name.
    #[error(
        "checkpoint origin {origin:?} is not the log key's name {key_name:?}: this checkpoint belongs to another log"
    )]
    OriginMismatch {
        /// Origin in the checkpoint.
        origin: String,
        /// Name of the log key.
        key_name: String,
    },
    /// The signed note is malformed or not signed by the log.
    #[error(transparent)]
    Note(#[from] NoteError),
}

fn valid_line(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(|c| (c as u32) < 0x20)
}

impl Checkpoint {
    /// Checks that the checkpoint can be written as a body that parses back to it.
    pub fn validate(&self) -> Result<(), CheckpointError> {
        if !valid_line(&self.origin) {
            return Err(CheckpointError::BadOrigin(self.origin.clone()));
        }
        if self.size.0 > MAX_TREE_SIZE {
            return Err(CheckpointError::SizeOutOfRange(self.size.0));
        }
        if let Some(bad) = self.extensions.iter().find(|e| !valid_line(e)) {
            return Err(CheckpointError::BadExtension(bad.clone()));
        }
        Ok(())
    }

    /// The note text: `origin\nsize\nbase64(root)\n` then each extension line.
    pub fn to_body(&self) -> String {
        let mut body = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size.0,
            BASE64.encode(self.root.0)
        );
        for e in &self.extensions {
            body.push_str(e);
            body.push('\n');
        }
        body
    }

    /// Parses a note text as a checkpoint body.
    pub fn parse_body(body: &str) -> Result<Checkpoint, CheckpointError> {
        let lines: Vec<&str> = body
            .strip_suffix('\n')
            .ok_or(CheckpointError::TooFewLines)?
            .split('\n')
            .collect();
        let [origin, size, root, extensions @ ..] = lines.as_slice() else {
            return Err(CheckpointError::TooFewLines);
        };
        if !valid_line(origin) {
            return Err(CheckpointError::BadOrigin((*origin).to_owned()));
        }
        let size = parse_size(size)?;
        let root = BASE64
            .decode(root)
            .ok()
            .and_then(|b| Hash::from_slice(&b).ok())
            .ok_or_else(|| CheckpointError::BadRoot((*root).to_owned()))?;
        let checkpoint = Checkpoint {
            origin: (*origin).to_owned(),
            size,
            root,
            extensions: extensions.iter().map(|e| (*e).to_owned()).collect(),
        };
        checkpoint.validate()?;
        Ok(checkpoint)
    }
}

fn parse_size(s: &str) -> Result<TreeSize, CheckpointError> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if !canonical {
        return Err(CheckpointError::BadSize(s.to_owned()));
    }
    let n: u64 = s
        .parse()
        .map_err(|_| CheckpointError::BadSize(s.to_owned()))?;
    if n > MAX_TREE_SIZE {
        return Err(CheckpointError::SizeOutOfRange(n));
    }
    Ok(TreeSize(n))
}

/// Signs a checkpoint with the log's key and returns the signed note text.
///
/// The key's name must be the checkpoint's origin, as the spec recommends and as
/// [`open_checkpoint`] requires.
pub fn sign_checkpoint(
    checkpoint: &Checkpoint,
    signer: &NoteSigner,
) -> Result<String, CheckpointError> {
    checkpoint.validate()?;
    if signer.name() != checkpoint.origin {
        return Err(CheckpointError::OriginMismatch {
            origin: checkpoint.origin.clone(),
            key_name: signer.name().to_owned(),
        });
    }
    Ok(signer.sign(&checkpoint.to_body())?)
}

/// Opens a signed checkpoint: the log's key (whose name must be the origin) must
/// have signed it; other signatures are kept, unverified.
pub fn open_checkpoint(
    note: &str,
    origin_verifier: &NoteVerifier,
) -> Result<SignedCheckpoint, CheckpointError> {
    let opened = open_note(note, std::slice::from_ref(origin_verifier))?;
    let checkpoint = Checkpoint::parse_body(&opened.text)?;
    if checkpoint.origin != origin_verifier.name() {
        return Err(CheckpointError::OriginMismatch {
            origin: checkpoint.origin,
            key_name: origin_verifier.name().to_owned(),
        });
    }
    let log_signature =
        opened
            .verified_by
            .into_iter()
            .next()
            .ok_or(NoteError::NoVerifiedSignature {
                unknown: opened.other_signatures.len(),
            })?;
    Ok(SignedCheckpoint {
        checkpoint,
        note: note.to_owned(),
        log_signature,
        other_signatures: opened.other_signatures,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::leaf_hash;

    fn cp() -> Checkpoint {
        Checkpoint {
            origin: "lupus.example/log".into(),
            size: TreeSize(20852163),
            root: leaf_hash(b"r"),
            extensions: vec![],
        }
    }

    #[test]
    fn body_matches_spec_example_layout_and_round_trips() {
        // The example of c2sp.org/tlog-checkpoint.
        let body =
            "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";
        let c = Checkpoint::parse_body(body).unwrap();
        assert_eq!(c.origin, "example.com/behind-the-sofa");
        assert_eq!(c.size, TreeSize(20852163));
        assert_eq!(c.to_body(), body);
        let mut e = cp();
        e.extensions = vec!["ext one".into()];
        assert_eq!(Checkpoint::parse_body(&e.to_body()).unwrap(), e);
    }

    #[test]
    fn sign_and_open() {
        let key = NoteSigner::from_secret("lupus.example/log", [9; 32]).unwrap();
        let note = sign_checkpoint(&cp(), &key).unwrap();
        let witness = NoteSigner::from_secret("w.example", [8; 32]).unwrap();
        let cosigned = witness.cosign(&note).unwrap();
        let opened = open_checkpoint(&cosigned, &key.verifier()).unwrap();
        assert_eq!(opened.checkpoint, cp());
        assert_eq!(opened.other_signatures.len(), 1);
        // A witness key alone does not open it.
        assert!(matches!(
            open_checkpoint(&cosigned, &witness.verifier()),
            Err(CheckpointError::OriginMismatch { .. })
        ));
        let other = NoteSigner::from_secret("other.example", [7; 32]).unwrap();
        assert!(matches!(
            sign_checkpoint(&cp(), &other),
            Err(CheckpointError::OriginMismatch { .. })
        ));
        assert!(matches!(
            open_checkpoint(&note, &other.verifier()),
            Err(CheckpointError::Note(NoteError::NoVerifiedSignature { .. }))
        ));
    }

    #[test]
    fn malformed_bodies_are_typed_errors() {
        let root = BASE64.encode([0u8; 32]);
        let cases = [
            ("o\n1\n".to_string(), CheckpointError::TooFewLines),
            (format!("o\n1\n{root}"), CheckpointError::TooFewLines),
            (
                format!("\n1\n{root}\n"),
                CheckpointError::BadOrigin(String::new()),
            ),
            (
                format!("o\n01\n{root}\n"),
                CheckpointError::BadSize("01".into()),
            ),
            (
                format!("o\n+1\n{root}\n"),
                CheckpointError::BadSize("+1".into()),
            ),
            (
                format!("o\n-1\n{root}\n"),
                CheckpointError::BadSize("-1".into()),
            ),
            (
                format!("o\n\n{root}\n"),
                CheckpointError::BadSize(String::new()),
            ),
            (
                format!("o\n99999999999999999999\n{root}\n"),
                CheckpointError::BadSize("99999999999999999999".into()),
            ),
            (
                format!("o\n{}\n{root}\n", u64::MAX),
                CheckpointError::SizeOutOfRange(u64::MAX),
            ),
            (
                "o\n1\nAAAA\n".to_string(),
                CheckpointError::BadRoot("AAAA".into()),
            ),
            (
                format!("o\n1\n{root}\n\n"),
                CheckpointError::BadExtension(String::new()),
            ),
        ];
        for (body, want) in cases {
            assert_eq!(Checkpoint::parse_body(&body), Err(want), "{body:?}");
        }
        assert!(Checkpoint::parse_body(&format!("o\n0\n{root}\n")).is_ok());
        let mut bad = cp();
        bad.origin = "a\nb".into();
        assert!(matches!(bad.validate(), Err(CheckpointError::BadOrigin(_))));
    }
}
