//! Receipts: the log's signed word that it sequenced an entry at an index.
//!
//! A participant whose entry the coordinator takes (a commitment, an opening, a
//! verdict) gets back a receipt: a signed note (C2SP `signed-note`, under the log's
//! own checkpoint key) over
//!
//! ```text
//! lupus receipt v1
//! <origin>
//! <index>
//! <base64 of the entry's RFC 9162 leaf hash>
//! ```
//!
//! With it, a participant holds evidence that outlives the coordinator's goodwill: if
//! a later checkpoint's tree does not hold that leaf at that index, the receipt and the
//! checkpoint, both signed by the same key, contradict each other (the log dropped or
//! replaced acknowledged work). A receipt's text cannot be read as a checkpoint: its
//! first line is not the log's origin and its second is not a tree size.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::hash::{Hash, leaf_hash};
use crate::note::{NoteError, NoteSigner, NoteVerifier, open_note};

/// The first line of every receipt's text.
pub const RECEIPT_HEADER: &str = "lupus receipt v1";

/// What a receipt says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The entry's log index.
    pub index: u64,
    /// The entry's RFC 9162 leaf hash.
    pub leaf: Hash,
}

/// Why a receipt does not verify.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiptError {
    /// The note does not open with the log's key.
    #[error("the receipt is not signed by this log's key: {0}")]
    Note(#[from] NoteError),
    /// The signed text is not a receipt of this log.
    #[error("the signed text is not a lupus receipt of log {origin:?}: {why}")]
    Text { origin: String, why: &'static str },
    /// The receipt names another entry than the one given.
    #[error("the receipt is for another entry (leaf {found:?}) than the one given")]
    OtherEntry { found: Hash },
}

/// Signs a receipt for `entry` (its canonical bytes) sequenced at `index`.
pub fn sign_receipt(signer: &NoteSigner, index: u64, entry: &[u8]) -> Result<String, NoteError> {
    let text = format!(
        "{RECEIPT_HEADER}\n{}\n{index}\n{}\n",
        signer.name(),
        STANDARD.encode(leaf_hash(entry).0)
    );
    signer.sign(&text)
}

/// Opens a receipt with the log's key; what it says.
pub fn open_receipt(note: &str, log: &NoteVerifier) -> Result<Receipt, ReceiptError> {
    let opened = open_note(note, std::slice::from_ref(log))?;
    let bad = |why| ReceiptError::Text {
        origin: log.name().to_owned(),
        why,
    };
    let mut lines = opened.text.lines();
    if lines.next() != Some(RECEIPT_HEADER) {
        return Err(bad("its first line is not the receipt header"));
    }
    if lines.next() != Some(log.name()) {
        return Err(bad("it names another log"));
    }
    // One encoding per index: decimal, no sign, no leading zero.
    let index = lines
        .next()
        .and_then(|l| l.parse::<u64>().ok().filter(|i| i.to_string() == l))
        .ok_or_else(|| bad("its index is not a decimal number"))?;
    let leaf: [u8; 32] = lines
        .next()
        .and_then(|l| STANDARD.decode(l).ok())
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad("its leaf is not 32 bytes of base64"))?;
    if lines.next().is_some() {
        return Err(bad("it has lines after the leaf"));
    }
    Ok(Receipt {
        index,
        leaf: Hash(leaf),
    })
}

/// Opens a receipt and checks it names `entry`; the index it was sequenced at.
pub fn verify_receipt(note: &str, log: &NoteVerifier, entry: &[u8]) -> Result<u64, ReceiptError> {
    let r = open_receipt(note, log)?;
    if r.leaf != leaf_hash(entry) {
        return Err(ReceiptError::OtherEntry { found: r.leaf });
    }
    Ok(r.index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receipt_opens_with_its_log_key_and_names_its_entry() {
        let signer = NoteSigner::from_secret("lupus.example/r", [1; 32]).unwrap();
        let note = sign_receipt(&signer, 42, b"entry bytes").unwrap();
        assert_eq!(
            verify_receipt(&note, &signer.verifier(), b"entry bytes").unwrap(),
            42
        );
        assert!(matches!(
            verify_receipt(&note, &signer.verifier(), b"other bytes"),
            Err(ReceiptError::OtherEntry { .. })
        ));
        // Another log's key, and a checkpoint read as a receipt, are refused.
        let other = NoteSigner::from_secret("lupus.example/r", [2; 32]).unwrap();
        assert!(open_receipt(&note, &other.verifier()).is_err());
        let cp = signer.sign("lupus.example/r\n43\nAAAA\n").unwrap();
        assert!(matches!(
            open_receipt(&cp, &signer.verifier()),
            Err(ReceiptError::Text { .. })
        ));
        // An index with a leading zero is not the one encoding of 42.
        let text = format!(
            "{RECEIPT_HEADER}\nlupus.example/r\n042\n{}\n",
            STANDARD.encode(leaf_hash(b"entry bytes").0)
        );
        let odd = signer.sign(&text).unwrap();
        assert!(open_receipt(&odd, &signer.verifier()).is_err());
    }
}
