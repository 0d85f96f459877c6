//! C2SP signed notes (<https://c2sp.org/signed-note>) with Ed25519 keys.
//!
//! A note is a text ending in a newline, a blank line, then signature lines
//! `— <key name> base64(key ID || signature)`. This module follows the spec's
//! "Format" section for parsing ([`parse_note`], [`open_note`]), its "Signatures"
//! section for which signatures to check (only known keys, matched by name *and*
//! key ID; any failing known signature rejects the note; unknown ones are kept,
//! unverified, as cosignatures), and its "Ed25519 signatures" section for key IDs:
//! `SHA-256(name || 0x0A || 0x01 || public key)[:4]`.
//!
//! Key strings are those of Go's `golang.org/x/mod/sumdb/note`, so keys move
//! between this crate and Go tools unchanged:
//! verifier keys `<name>+<hex8 key ID>+base64(0x01 || public key)` and private keys
//! `PRIVATE+KEY+<name>+<hex8 key ID>+base64(0x01 || seed)`.
//!
//! Witness cosignatures (<https://c2sp.org/tlog-cosignature>, v1): [`cosign`] and
//! [`CosignatureVerifier`], with keys `<name>+<hex8 key ID>+base64(0x04 || key)` and
//! signatures over `cosignature/v1\ntime <t>\n<checkpoint text>`, carried as note
//! signature lines whose bytes are the big-endian timestamp then the signature. The
//! coordinator (checking its witnesses) and the auditor's witness share this one copy.
//!
//! Nothing here panics on hostile input: every malformed note is a [`NoteError`].

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// The signature-type byte of Ed25519 in signed-note key IDs and key strings.
const ALG_ED25519: u8 = 0x01;

/// The signature-type byte of C2SP `tlog-cosignature` v1 (timestamped Ed25519
/// cosignatures by witnesses).
const ALG_COSIGNATURE_V1: u8 = 0x04;

/// Most signature lines a note may carry (the spec asks for at least 16; Go's
/// `note.Open` stops at 100).
pub const MAX_SIGNATURES: usize = 100;

/// Largest note accepted, in bytes: far above any checkpoint with 100 signatures,
/// small enough that hostile input cannot make us allocate much.
pub const MAX_NOTE_BYTES: usize = 1 << 20;

/// The separator between a signature line's dash and its key name.
const SIG_PREFIX: &str = "\u{2014} ";

/// Errors of parsing, signing and verifying notes and keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoteError {
    /// The note is not UTF-8.
    #[error("note is not valid UTF-8: signed notes must be UTF-8 text")]
    NotUtf8,
    /// The note is larger than [`MAX_NOTE_BYTES`].
    #[error("note is {len} bytes, more than the {max} accepted")]
    TooLarge {
        /// Size of the note.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A control character other than newline.
    #[error(
        "note contains control character U+{code:04X} at byte {offset}; only newline is allowed"
    )]
    ControlCharacter {
        /// The character's code point.
        code: u32,
        /// Byte offset in the note.
        offset: usize,
    },
    /// No blank line separates text and signatures.
    #[error("note has no blank line between its text and its signatures")]
    MissingBlankLine,
    /// Nothing follows the blank line.
    #[error("note has no signature lines after the blank line")]
    NoSignatures,
    /// The last signature line is not terminated.
    #[error("note does not end in a newline: every signature line must end with one")]
    MissingFinalNewline,
    /// A line after the blank line is not a signature line.
    #[error("signature line {line} is malformed: expected \"— <key name> <base64 signature>\"")]
    BadSignatureLine {
        /// 1-based number of the signature line.
        line: usize,
    },
    /// A signature is not valid base64 or is too short to hold a key ID.
    #[error("signature line {line} does not hold base64 of a 4-byte key ID plus a signature")]
    BadSignatureEncoding {
        /// 1-based number of the signature line.
        line: usize,
    },
    /// More than [`MAX_SIGNATURES`] signature lines.
    #[error("note has more than {max} signatures")]
    TooManySignatures {
        /// The limit.
        max: usize,
    },
    /// A signature by a known key failed to verify.
    #[error(
        "signature by {name}+{key_id:08x} does not verify: the note was altered or signed with another key"
    )]
    InvalidSignature {
        /// Key name.
        name: String,
        /// Key ID.
        key_id: u32,
    },
    /// No known key signed the note.
    #[error("note is not signed by any of the given keys ({unknown} signatures by unknown keys)")]
    NoVerifiedSignature {
        /// Number of signatures by keys that were not given.
        unknown: usize,
    },
    /// Two of the given verifiers share a name and key ID.
    #[error("two given verifier keys share name {name} and key ID {key_id:08x}; pass only one")]
    AmbiguousVerifier {
        /// Key name.
        name: String,
        /// Key ID.
        key_id: u32,
    },
    /// A key name that is empty, has spaces or `+`.
    #[error("key name {0:?} is invalid: it must be non-empty, without spaces or '+'")]
    BadKeyName(String),
    /// A verifier key string that is malformed.
    #[error(
        "verifier key is malformed: {0}; expected <name>+<8 hex digits>+<base64 of 0x01 and a 32-byte key>"
    )]
    BadVerifierKey(&'static str),
    /// A private key string that is malformed.
    #[error(
        "private key is malformed: {0}; expected PRIVATE+KEY+<name>+<8 hex digits>+<base64 of 0x01 and a 32-byte seed>"
    )]
    BadPrivateKey(&'static str),
    /// A key string names a signature type other than Ed25519.
    #[error("key uses signature type {0:#04x}; only Ed25519 (0x01) is supported")]
    UnsupportedAlgorithm(u8),
    /// A key string's key ID is not the one its name and key give.
    #[error(
        "key ID {got:08x} does not match the key (expected {expected:08x}): wrong name or corrupted key"
    )]
    KeyIdMismatch {
        /// Key ID computed from name and key.
        expected: u32,
        /// Key ID in the string.
        got: u32,
    },
    /// Text to be signed does not end in a newline.
    #[error("note text must end in a newline")]
    TextMissingNewline,
    /// The operating system's random source failed.
    #[error("could not read random bytes for a new key: {0}")]
    Random(String),
}

fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('+') && !name.chars().any(char::is_whitespace)
}

fn check_name(name: &str) -> Result<(), NoteError> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(NoteError::BadKeyName(name.to_owned()))
    }
}

/// The signed-note key ID of an Ed25519 key: `SHA-256(name || 0x0A || 0x01 || key)[:4]`.
pub fn ed25519_key_id(name: &str, key: &VerifyingKey) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', ALG_ED25519]);
    h.update(key.as_bytes());
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// Splits a key string `<name>+<hex8 key ID>+<base64>` (verifier, cosignature and
/// private keys alike) into its name, key ID and base64 part, checking the name and
/// the ID's form; `bad` makes the caller's error from the reason.
fn split_key(
    key: &str,
    bad: fn(&'static str) -> NoteError,
) -> Result<(&str, u32, &str), NoteError> {
    let (name, rest) = key.split_once('+').ok_or(bad("missing key ID"))?;
    let (hex8, b64) = rest.split_once('+').ok_or(bad("missing key"))?;
    check_name(name)?;
    let id = parse_key_id(hex8).ok_or(bad("key ID is not 8 hex digits"))?;
    Ok((name, id, b64))
}

fn parse_key_id(hex8: &str) -> Option<u32> {
    if hex8.len() != 8 || !hex8.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(hex8, 16).ok()
}

/// Decodes `base64(0x01 || 32 bytes)`.
fn decode_typed_key(b64: &str) -> Result<[u8; 32], Result<u8, &'static str>> {
    decode_key_of(ALG_ED25519, b64)
}

/// Decodes `base64(alg || 32 bytes)`; `Err(Ok(other))` for another algorithm byte.
fn decode_key_of(alg: u8, b64: &str) -> Result<[u8; 32], Result<u8, &'static str>> {
    let raw = BASE64.decode(b64).map_err(|_| Err("key is not base64"))?;
    match raw.split_first() {
        None => Err(Err("key is empty")),
        Some((&a, key)) if a == alg => {
            <[u8; 32]>::try_from(key).map_err(|_| Err("key is not 32 bytes"))
        }
        Some((&other, _)) => Err(Ok(other)),
    }
}

fn encode_typed_key(bytes: &[u8; 32]) -> String {
    encode_key_of(ALG_ED25519, bytes)
}

fn encode_key_of(alg: u8, bytes: &[u8; 32]) -> String {
    let mut raw = Vec::with_capacity(33);
    raw.push(alg);
    raw.extend_from_slice(bytes);
    BASE64.encode(raw)
}

/// The key ID of a `tlog-cosignature` v1 key: `SHA-256(name || 0x0A || 0x04 || key)[:4]`
/// (C2SP tlog-cosignature, "Format").
pub fn cosignature_key_id(name: &str, key: &VerifyingKey) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', ALG_COSIGNATURE_V1]);
    h.update(key.as_bytes());
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// The message a `tlog-cosignature` v1 signs: `cosignature/v1\ntime <t>\n<text>`.
fn cosignature_message(time: u64, text: &str) -> String {
    format!("cosignature/v1\ntime {time}\n{text}")
}

/// A witness's `tlog-cosignature` v1 over the checkpoint text `text` at unix time
/// `time`: an Ed25519 signature over `cosignature/v1\ntime <t>\n<text>`, carried as
/// signature bytes `u64 BE time || signature` under the 0x04 key ID.
pub fn cosign(name: &str, key: &SigningKey, text: &str, time: u64) -> NoteSignature {
    let sig = key.sign(cosignature_message(time, text).as_bytes());
    let mut signature = time.to_be_bytes().to_vec();
    signature.extend_from_slice(&sig.to_bytes());
    NoteSignature {
        name: name.to_owned(),
        key_id: cosignature_key_id(name, &key.verifying_key()),
        signature,
    }
}

/// A witness's `tlog-cosignature` v1 verifier key, as a witness publishes it:
/// `<name>+<hex8 key ID>+base64(0x04 || Ed25519 public key)`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CosignatureVerifier {
    name: String,
    key_id: u32,
    key: VerifyingKey,
}

impl CosignatureVerifier {
    /// Parses `<name>+<hex8 key ID>+base64(0x04 || key)`.
    pub fn parse(vkey: &str) -> Result<CosignatureVerifier, NoteError> {
        let (name, got, b64) = split_key(vkey.trim(), NoteError::BadVerifierKey)?;
        let bytes = decode_key_of(ALG_COSIGNATURE_V1, b64).map_err(|e| match e {
            Ok(alg) => NoteError::UnsupportedAlgorithm(alg),
            Err(why) => NoteError::BadVerifierKey(why),
        })?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| NoteError::BadVerifierKey("not an Ed25519 public key"))?;
        let v = CosignatureVerifier::from_key(name, key)?;
        if v.key_id != got {
            return Err(NoteError::KeyIdMismatch {
                expected: v.key_id,
                got,
            });
        }
        Ok(v)
    }

    /// The verifier of `key` named `name`.
    pub fn from_key(name: &str, key: VerifyingKey) -> Result<CosignatureVerifier, NoteError> {
        check_name(name)?;
        Ok(CosignatureVerifier {
            name: name.to_owned(),
            key_id: cosignature_key_id(name, &key),
            key,
        })
    }

    /// The witness's name (in its cosignature lines).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key ID.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// Whether `sig` is this witness's cosignature over the checkpoint text `text`
    /// (name and key ID match, and the timestamped signature verifies).
    pub fn verifies(&self, sig: &NoteSignature, text: &str) -> bool {
        if sig.name != self.name || sig.key_id != self.key_id {
            return false;
        }
        let Some((ts, s)) = sig.signature.split_first_chunk::<8>() else {
            return false;
        };
        let Ok(s) = Signature::from_slice(s) else {
            return false;
        };
        let message = cosignature_message(u64::from_be_bytes(*ts), text);
        self.key.verify_strict(message.as_bytes(), &s).is_ok()
    }
}

impl fmt::Display for CosignatureVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}+{:08x}+{}",
            self.name,
            self.key_id,
            encode_key_of(ALG_COSIGNATURE_V1, self.key.as_bytes())
        )
    }
}

impl FromStr for CosignatureVerifier {
    type Err = NoteError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CosignatureVerifier::parse(s)
    }
}

/// A note signing key: a key name and an Ed25519 key.
#[derive(Clone)]
pub struct NoteSigner {
    name: String,
    key: SigningKey,
    key_id: u32,
}

impl fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        write!(f, "NoteSigner({}+{:08x})", self.name, self.key_id)
    }
}

impl NoteSigner {
    /// A new random key named `name`, from the operating system's random source.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn generate(name: &str) -> Result<NoteSigner, NoteError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| NoteError::Random(e.to_string()))?;
        NoteSigner::from_secret(name, seed)
    }

    /// The key with Ed25519 seed `secret`, named `name`.
    pub fn from_secret(name: &str, secret: [u8; 32]) -> Result<NoteSigner, NoteError> {
        check_name(name)?;
        let key = SigningKey::from_bytes(&secret);
        let key_id = ed25519_key_id(name, &key.verifying_key());
        Ok(NoteSigner {
            name: name.to_owned(),
            key,
            key_id,
        })
    }

    /// Parses a private key string as Go's `note.NewSigner` reads it.
    pub fn from_private_key(skey: &str) -> Result<NoteSigner, NoteError> {
        let rest = skey
            .strip_prefix("PRIVATE+KEY+")
            .ok_or(NoteError::BadPrivateKey("missing PRIVATE+KEY+ prefix"))?;
        let (name, got, b64) = split_key(rest, NoteError::BadPrivateKey)?;
        let seed = decode_typed_key(b64).map_err(|e| match e {
            Ok(alg) => NoteError::UnsupportedAlgorithm(alg),
            Err(why) => NoteError::BadPrivateKey(why),
        })?;
        let signer = NoteSigner::from_secret(name, seed)?;
        if signer.key_id != got {
            return Err(NoteError::KeyIdMismatch {
                expected: signer.key_id,
                got,
            });
        }
        Ok(signer)
    }

    /// The private key string Go's `note.NewSigner` reads:
    /// `PRIVATE+KEY+<name>+<hex8 key ID>+base64(0x01 || seed)`. Keep it secret.
    pub fn private_key(&self) -> String {
        format!(
            "PRIVATE+KEY+{}+{:08x}+{}",
            self.name,
            self.key_id,
            encode_typed_key(self.key.as_bytes())
        )
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The signed-note key ID.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The verifier key string, as Go's `note.NewVerifier` reads it.
    pub fn verifier_key(&self) -> String {
        self.verifier().to_string()
    }

    /// The matching verifier.
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.name.clone(),
            key_id: self.key_id,
            key: self.key.verifying_key(),
        }
    }

    /// The signature of this key over `text` (which must end in a newline).
    pub fn signature(&self, text: &str) -> Result<NoteSignature, NoteError> {
        check_text(text)?;
        let sig: Signature = self.key.sign(text.as_bytes());
        Ok(NoteSignature {
            name: self.name.clone(),
            key_id: self.key_id,
            signature: sig.to_bytes().to_vec(),
        })
    }

    /// Signs `text` (which must end in a newline) and returns the whole note.
    pub fn sign(&self, text: &str) -> Result<String, NoteError> {
        let sig = self.signature(text)?;
        Ok(format!("{text}\n{}", sig.to_line()))
    }

    /// Adds this key's signature to an existing note (a cosignature), keeping the
    /// signatures it has. The note is parsed, not verified.
    pub fn cosign(&self, note: &str) -> Result<String, NoteError> {
        let parsed = parse_note(note.as_bytes())?;
        let sig = self.signature(&parsed.text)?;
        add_signature(note, &sig)
    }
}

fn check_text(text: &str) -> Result<(), NoteError> {
    if !text.ends_with('\n') {
        return Err(NoteError::TextMissingNewline);
    }
    check_chars(text)
}

fn check_chars(text: &str) -> Result<(), NoteError> {
    match text
        .char_indices()
        .find(|&(_, c)| (c as u32) < 0x20 && c != '\n')
    {
        Some((offset, c)) => Err(NoteError::ControlCharacter {
            code: c as u32,
            offset,
        }),
        None => Ok(()),
    }
}

/// A note verification key: key name, key ID and Ed25519 public key.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct NoteVerifier {
    name: String,
    key_id: u32,
    key: VerifyingKey,
}

impl NoteVerifier {
    /// Parses a verifier key string `<name>+<hex8 key ID>+base64(0x01 || key)`.
    pub fn parse(vkey: &str) -> Result<NoteVerifier, NoteError> {
        let (name, got, b64) = split_key(vkey, NoteError::BadVerifierKey)?;
        let bytes = decode_typed_key(b64).map_err(|e| match e {
            Ok(alg) => NoteError::UnsupportedAlgorithm(alg),
            Err(why) => NoteError::BadVerifierKey(why),
        })?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| NoteError::BadVerifierKey("not an Ed25519 public key"))?;
        NoteVerifier::from_key(name, key).and_then(|v| {
            if v.key_id == got {
                Ok(v)
            } else {
                Err(NoteError::KeyIdMismatch {
                    expected: v.key_id,
                    got,
                })
            }
        })
    }

    /// A verifier for `key` named `name`.
    pub fn from_key(name: &str, key: VerifyingKey) -> Result<NoteVerifier, NoteError> {
        check_name(name)?;
        Ok(NoteVerifier {
            name: name.to_owned(),
            key_id: ed25519_key_id(name, &key),
            key,
        })
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The signed-note key ID.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The Ed25519 public key.
    pub fn public_key(&self) -> &VerifyingKey {
        &self.key
    }

    /// Whether `sig` (a raw signature, without key ID) signs `text` under this key.
    pub fn verify(&self, text: &[u8], sig: &[u8]) -> bool {
        Signature::from_slice(sig)
            .map(|s| self.key.verify_strict(text, &s).is_ok())
            .unwrap_or(false)
    }
}

impl fmt::Display for NoteVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}+{:08x}+{}",
            self.name,
            self.key_id,
            encode_typed_key(self.key.as_bytes())
        )
    }
}

impl FromStr for NoteVerifier {
    type Err = NoteError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NoteVerifier::parse(s)
    }
}

/// One signature line of a note.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct NoteSignature {
    /// The signer's key name.
    pub name: String,
    /// The signer's key ID.
    pub key_id: u32,
    /// The signature bytes after the key ID (64 bytes for Ed25519).
    pub signature: Vec<u8>,
}

impl NoteSignature {
    /// The signature line, with its trailing newline.
    pub fn to_line(&self) -> String {
        let mut raw = Vec::with_capacity(4 + self.signature.len());
        raw.extend_from_slice(&self.key_id.to_be_bytes());
        raw.extend_from_slice(&self.signature);
        format!("{SIG_PREFIX}{} {}\n", self.name, BASE64.encode(raw))
    }
}

/// A note split into its text and signature lines; nothing verified.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ParsedNote {
    /// The signed text, including its final newline.
    pub text: String,
    /// The signature lines, in order, duplicates removed.
    pub signatures: Vec<NoteSignature>,
}

/// A note whose text is signed by at least one of the trusted keys.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct OpenedNote {
    /// The signed text, including its final newline.
    pub text: String,
    /// Signatures by the given keys, all verified.
    pub verified_by: Vec<NoteSignature>,
    /// Signatures by other keys (cosignatures), kept but not verified.
    pub other_signatures: Vec<NoteSignature>,
}

/// Splits a note into text and signatures (signed-note "Format"), checking its
/// syntax but no signature.
pub fn parse_note(note: &[u8]) -> Result<ParsedNote, NoteError> {
    if note.len() > MAX_NOTE_BYTES {
        return Err(NoteError::TooLarge {
            len: note.len(),
            max: MAX_NOTE_BYTES,
        });
    }
    let note = std::str::from_utf8(note).map_err(|_| NoteError::NotUtf8)?;
    check_chars(note)?;
    // The text ends at the last blank line: signature lines are never empty.
    let split = note.rfind("\n\n").ok_or(NoteError::MissingBlankLine)?;
    let (text, sigs) = (&note[..=split], &note[split + 2..]);
    if sigs.is_empty() {
        return Err(NoteError::NoSignatures);
    }
    let body = sigs
        .strip_suffix('\n')
        .ok_or(NoteError::MissingFinalNewline)?;
    let mut signatures: Vec<NoteSignature> = Vec::new();
    for (i, line) in body.split('\n').enumerate() {
        let n = i + 1;
        if n > MAX_SIGNATURES {
            return Err(NoteError::TooManySignatures {
                max: MAX_SIGNATURES,
            });
        }
        let rest = line
            .strip_prefix(SIG_PREFIX)
            .ok_or(NoteError::BadSignatureLine { line: n })?;
        let (name, b64) = rest
            .split_once(' ')
            .ok_or(NoteError::BadSignatureLine { line: n })?;
        if !is_valid_name(name) || b64.is_empty() {
            return Err(NoteError::BadSignatureLine { line: n });
        }
        let raw = BASE64
            .decode(b64)
            .map_err(|_| NoteError::BadSignatureEncoding { line: n })?;
        let (id, sig) = raw
            .split_first_chunk::<4>()
            .filter(|(_, sig)| !sig.is_empty())
            .ok_or(NoteError::BadSignatureEncoding { line: n })?;
        let sig = NoteSignature {
            name: name.to_owned(),
            key_id: u32::from_be_bytes(*id),
            signature: sig.to_vec(),
        };
        if !signatures.contains(&sig) {
            signatures.push(sig);
        }
    }
    Ok(ParsedNote {
        text: text.to_owned(),
        signatures,
    })
}

/// Opens a note (signed-note "Signatures"): every signature by one of `verifiers`
/// (matched by name and key ID) must verify and at least one must be present;
/// signatures by other keys are returned unverified.
pub fn open_note(note: &str, verifiers: &[NoteVerifier]) -> Result<OpenedNote, NoteError> {
    open_note_bytes(note.as_bytes(), verifiers)
}

/// [`open_note`] for bytes that may not be UTF-8.
pub fn open_note_bytes(note: &[u8], verifiers: &[NoteVerifier]) -> Result<OpenedNote, NoteError> {
    let parsed = parse_note(note)?;
    let mut verified_by = Vec::new();
    let mut other_signatures = Vec::new();
    for sig in parsed.signatures {
        let mut known = verifiers
            .iter()
            .filter(|v| v.name == sig.name && v.key_id == sig.key_id);
        match (known.next(), known.next()) {
            (None, _) => other_signatures.push(sig),
            (Some(_), Some(_)) => {
                return Err(NoteError::AmbiguousVerifier {
                    name: sig.name,
                    key_id: sig.key_id,
                });
            }
            (Some(v), None) => {
                if !v.verify(parsed.text.as_bytes(), &sig.signature) {
                    return Err(NoteError::InvalidSignature {
                        name: sig.name,
                        key_id: sig.key_id,
                    });
                }
                // A key that signed twice (two valid signatures) counts once.
                if !verified_by
                    .iter()
                    .any(|s: &NoteSignature| s.name == sig.name && s.key_id == sig.key_id)
                {
                    verified_by.push(sig);
                }
            }
        }
    }
    if verified_by.is_empty() {
        return Err(NoteError::NoVerifiedSignature {
            unknown: other_signatures.len(),
        });
    }
    Ok(OpenedNote {
        text: parsed.text,
        verified_by,
        other_signatures,
    })
}

/// Appends a signature line to a note (for example a witness cosignature), after
/// checking the note's syntax. A line already present is not added twice.
pub fn add_signature(note: &str, sig: &NoteSignature) -> Result<String, NoteError> {
    let parsed = parse_note(note.as_bytes())?;
    if !is_valid_name(&sig.name) || sig.signature.is_empty() {
        return Err(NoteError::BadKeyName(sig.name.clone()));
    }
    if parsed.signatures.contains(sig) {
        return Ok(note.to_owned());
    }
    if parsed.signatures.len() >= MAX_SIGNATURES {
        return Err(NoteError::TooManySignatures {
            max: MAX_SIGNATURES,
        });
    }
    Ok(format!("{note}{}", sig.to_line()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(name: &str, seed: u8) -> NoteSigner {
        NoteSigner::from_secret(name, [seed; 32]).unwrap()
    }

    // Known answers from Go's golang.org/x/mod/sumdb/note (the package docs in
    // note.go and TestSign in note_test.go): a private key, its verifier key, and
    // the note that key signs.
    const GO_SKEY: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const GO_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const GO_NOTE: &str = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n\n\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

    #[test]
    fn go_example_key_and_note_are_understood() {
        let s = NoteSigner::from_private_key(GO_SKEY).unwrap();
        assert_eq!(s.verifier_key(), GO_VKEY);
        assert_eq!(s.private_key(), GO_SKEY);
        let v = NoteVerifier::parse(GO_VKEY).unwrap();
        assert_eq!(v.key_id(), 0xc74f20a3);
        let opened = open_note(GO_NOTE, &[v]).unwrap();
        assert!(opened.text.starts_with("If you think"));
        assert_eq!(opened.verified_by.len(), 1);
        // Ed25519 is deterministic: our signature is byte for byte Go's.
        assert_eq!(s.sign(&opened.text).unwrap(), GO_NOTE);
    }

    #[test]
    fn sign_then_open_round_trips_and_keeps_cosignatures() {
        let log = signer("example.com/log", 1);
        let witness = signer("witness.example", 2);
        let note = log.sign("hello\nworld\n").unwrap();
        let cosigned = witness.cosign(&note).unwrap();
        let opened = open_note(&cosigned, &[log.verifier()]).unwrap();
        assert_eq!(opened.text, "hello\nworld\n");
        assert_eq!(opened.verified_by[0].name, "example.com/log");
        assert_eq!(opened.other_signatures.len(), 1);
        assert_eq!(opened.other_signatures[0].key_id, witness.key_id());
        let both = open_note(&cosigned, &[log.verifier(), witness.verifier()]).unwrap();
        assert_eq!(both.verified_by.len(), 2);
        // Adding the same line twice changes nothing.
        let sig = witness.signature("hello\nworld\n").unwrap();
        assert_eq!(add_signature(&cosigned, &sig).unwrap(), cosigned);
    }

    #[test]
    fn altered_text_or_signature_is_rejected() {
        let log = signer("log", 3);
        let note = log.sign("size 5\n").unwrap();
        let altered = note.replacen("size 5", "size 6", 1);
        assert!(matches!(
            open_note(&altered, &[log.verifier()]),
            Err(NoteError::InvalidSignature { .. })
        ));
        let other = signer("other", 4);
        assert_eq!(
            open_note(&note, &[other.verifier()]),
            Err(NoteError::NoVerifiedSignature { unknown: 1 })
        );
        // Same name, different key: an unknown key, not a failed one.
        let same_name = signer("log", 5);
        assert!(matches!(
            open_note(&note, &[same_name.verifier()]),
            Err(NoteError::NoVerifiedSignature { .. })
        ));
        assert!(matches!(
            open_note(&note, &[log.verifier(), log.verifier()]),
            Err(NoteError::AmbiguousVerifier { .. })
        ));
    }

    #[test]
    fn malformed_notes_are_typed_errors() {
        let log = signer("log", 6);
        let good = log.sign("text\n").unwrap();
        let v = [log.verifier()];
        let cases: Vec<(Vec<u8>, NoteError)> = vec![
            (
                good.trim_end().as_bytes().to_vec(),
                NoteError::MissingFinalNewline,
            ),
            (b"text\n".to_vec(), NoteError::MissingBlankLine),
            (b"text\n\n".to_vec(), NoteError::NoSignatures),
            (
                good.replace('\u{2014}', "-").into_bytes(),
                NoteError::BadSignatureLine { line: 1 },
            ),
            (
                b"text\n\n\xe2\x80\x94 log !!!!\n".to_vec(),
                NoteError::BadSignatureEncoding { line: 1 },
            ),
            (
                "text\n\n\u{2014} log AAAA\n".as_bytes().to_vec(),
                NoteError::BadSignatureEncoding { line: 1 },
            ),
            (
                "text\n\n\u{2014} lo+g AAAAAAA=\n".as_bytes().to_vec(),
                NoteError::BadSignatureLine { line: 1 },
            ),
            (b"te\xffxt\n\n".to_vec(), NoteError::NotUtf8),
            (
                format!("te\rxt\n{}", &good[4..]).into_bytes(),
                NoteError::ControlCharacter {
                    code: 13,
                    offset: 2,
                },
            ),
        ];
        for (input, want) in cases {
            assert_eq!(open_note_bytes(&input, &v), Err(want.clone()), "{input:?}");
            // Every error explains itself.
            assert!(!want.to_string().is_empty());
        }
        let sig_line = good.split_once("\n\n").unwrap().1;
        let many = format!("text\n\n{}", sig_line.repeat(MAX_SIGNATURES + 1));
        assert_eq!(
            open_note(&many, &v),
            Err(NoteError::TooManySignatures {
                max: MAX_SIGNATURES
            })
        );
        // Exactly the limit is fine (duplicates collapse to one).
        let limit = format!("text\n\n{}", sig_line.repeat(MAX_SIGNATURES));
        assert!(open_note(&limit, &v).is_ok());
        assert_eq!(log.sign("no newline"), Err(NoteError::TextMissingNewline));
    }

    #[test]
    fn cosignatures_verify_only_over_their_text_with_their_key() {
        let sk = SigningKey::from_bytes(&[7; 32]);
        let v = CosignatureVerifier::from_key("witness.example", sk.verifying_key()).unwrap();
        let parsed: CosignatureVerifier = v.to_string().parse().unwrap();
        assert_eq!(parsed, v, "the key string round-trips");
        let text = "log.example\n5\nAAAA\n";
        let sig = cosign("witness.example", &sk, text, 1_700_000_000);
        assert_eq!(
            sig.signature.len(),
            72,
            "8-byte timestamp and 64-byte signature"
        );
        assert!(v.verifies(&sig, text));
        assert!(!v.verifies(&sig, "log.example\n6\nAAAA\n"), "other text");
        let mut later = sig.clone();
        later.signature[7] ^= 1;
        assert!(!v.verifies(&later, text), "the timestamp is signed");
        let other = SigningKey::from_bytes(&[8; 32]);
        assert!(!v.verifies(&cosign("witness.example", &other, text, 1), text));
        // A signed-note (0x01) key is not a cosignature key, and the other way round.
        let note_key = NoteVerifier::from_key("witness.example", sk.verifying_key()).unwrap();
        assert_eq!(
            CosignatureVerifier::parse(&note_key.to_string()),
            Err(NoteError::UnsupportedAlgorithm(0x01))
        );
        assert_eq!(
            NoteVerifier::parse(&v.to_string()),
            Err(NoteError::UnsupportedAlgorithm(0x04))
        );
        assert_ne!(
            note_key.key_id(),
            v.key_id(),
            "the algorithm byte is in the key ID"
        );
    }

    #[test]
    fn bad_keys_are_rejected() {
        let s = signer("k", 7);
        let vkey = s.verifier_key();
        assert!(NoteVerifier::parse(&vkey).is_ok());
        let (name_id, b64) = vkey.rsplit_once('+').unwrap();
        let wrong_id = format!("k+00000000+{b64}");
        assert!(matches!(
            NoteVerifier::parse(&wrong_id),
            Err(NoteError::KeyIdMismatch { got: 0, .. })
        ));
        let mut raw = BASE64.decode(b64).unwrap();
        raw[0] = 2;
        assert_eq!(
            NoteVerifier::parse(&format!("{name_id}+{}", BASE64.encode(&raw))),
            Err(NoteError::UnsupportedAlgorithm(2))
        );
        assert!(matches!(
            NoteVerifier::parse(&format!("{name_id}+{}", BASE64.encode(&raw[..20]))),
            Err(NoteError::UnsupportedAlgorithm(2))
        ));
        raw[0] = 1;
        assert_eq!(
            NoteVerifier::parse(&format!("{name_id}+{}", BASE64.encode(&raw[..20]))),
            Err(NoteError::BadVerifierKey("key is not 32 bytes"))
        );
        for bad in [
            "",
            "k",
            "k+1234",
            "k++AQ==",
            "+00000000+AQ==",
            "k+-1234567+AQ==",
        ] {
            assert!(NoteVerifier::parse(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            NoteSigner::from_secret("has space", [0; 32]),
            Err(NoteError::BadKeyName(_))
        ));
        assert!(NoteSigner::from_private_key(&vkey).is_err());
        assert!(NoteSigner::from_private_key(&s.private_key()).is_ok());
    }

    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    fn generated_keys_differ_and_work() {
        let a = NoteSigner::generate("a").unwrap();
        let b = NoteSigner::generate("a").unwrap();
        assert_ne!(a.verifier_key(), b.verifier_key());
        let note = a.sign("x\n").unwrap();
        assert!(open_note(&note, &[a.verifier()]).is_ok());
        assert!(!format!("{a:?}").contains(&a.private_key()));
    }
}
