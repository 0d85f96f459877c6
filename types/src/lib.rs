//! The types every Lupus crate shares, at the bottom of the crate map (DESIGN.md,
//! "Crates"): the one [`Digest`], a 32-byte blake3 hash, which the ledger's entries,
//! the prover's trees and commitments and the API's bodies all use. (There were two,
//! one in the ledger and one in the prover, and 59 conversions between them.)

#![forbid(unsafe_code)]

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A 32-byte blake3 hash: a model, a trace root, a beacon, a Merkle or sum-tree root.
/// Hex (64 lowercase digits) in text and in human-readable formats such as JSON; its
/// 32 bytes in binary formats (the openings' encoding).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Digest(pub [u8; 32]);

/// Text that is not 64 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a digest: expected 64 hex digits")]
pub struct HexError;

impl Digest {
    /// The plain blake3 hash of `data`.
    pub fn of(data: &[u8]) -> Digest {
        Digest(*blake3::hash(data).as_bytes())
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits (lower or upper case).
    pub fn from_hex(text: &str) -> Result<Digest, HexError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out).map_err(|_| HexError)?;
        Ok(Digest(out))
    }
}

impl From<[u8; 32]> for Digest {
    fn from(bytes: [u8; 32]) -> Self {
        Digest(bytes)
    }
}

impl From<blake3::Hash> for Digest {
    fn from(h: blake3::Hash) -> Self {
        Digest(*h.as_bytes())
    }
}

impl FromStr for Digest {
    type Err = HexError;
    fn from_str(s: &str) -> Result<Self, HexError> {
        Digest::from_hex(s)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_hex())
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            Digest::from_hex(&text).map_err(serde::de::Error::custom)
        } else {
            <[u8; 32]>::deserialize(d).map(Digest)
        }
    }
}

/// A 64-byte Ed25519 signature: a participant's word on a log entry, a request, or
/// the op outputs it recomputed for an opening. 128 hex digits in human-readable
/// formats such as JSON; its 64 bytes in binary formats (the openings' encoding).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sig(pub [u8; 64]);

impl fmt::Debug for Sig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sig({})", hex::encode(self.0))
    }
}

impl Serialize for Sig {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&hex::encode(self.0))
        } else {
            // serde has no impls for arrays longer than 32: two halves, no length.
            let (a, b) = self.0.split_at(32);
            let half = |h: &[u8]| <[u8; 32]>::try_from(h).expect("64 = 32 + 32");
            (half(a), half(b)).serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Sig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut out = [0u8; 64];
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            hex::decode_to_slice(&text, &mut out).map_err(|e| {
                serde::de::Error::custom(format!("signature: expected 128 hex digits: {e}"))
            })?;
        } else {
            let (a, b) = <([u8; 32], [u8; 32])>::deserialize(d)?;
            out[..32].copy_from_slice(&a);
            out[32..].copy_from_slice(&b);
        }
        Ok(Sig(out))
    }
}

/// OpenAPI schemas of the shared types, and the helpers the crates above use for their
/// own string-shaped types (feature `openapi`): each type describes its own JSON shape,
/// so the coordinator's document cannot drift from what serde writes.
#[cfg(feature = "openapi")]
pub mod openapi {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};

    /// 32 bytes as 64 hex digits.
    pub const HEX32: &str = "^[0-9a-fA-F]{64}$";
    /// 64 bytes as 128 hex digits.
    pub const HEX64: &str = "^[0-9a-fA-F]{128}$";
    /// A canonical decimal `u64`: digits only, no leading zero.
    pub const DECIMAL: &str = "^(0|[1-9][0-9]*)$";

    impl utoipa::PartialSchema for crate::Sig {
        fn schema() -> RefOr<Schema> {
            string("A 64-byte Ed25519 signature as 128 hex digits.", HEX64)
        }
    }

    impl utoipa::ToSchema for crate::Sig {}

    /// A string schema with a description and a pattern.
    pub fn string(description: &str, pattern: &str) -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(description))
            .pattern(Some(pattern))
            .into()
    }

    impl utoipa::PartialSchema for super::Digest {
        fn schema() -> RefOr<Schema> {
            string(
                "A blake3 digest (a model or blob hash, a trace root, a beacon, a Merkle \
                 root) as 64 hex digits (written lowercase, read in either case).",
                HEX32,
            )
        }
    }

    impl utoipa::ToSchema for super::Digest {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hex_in_text_and_64_bytes_in_binary() {
        let mut bytes = [0u8; 64];
        bytes.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
        let s = Sig(bytes);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, format!("\"{}\"", hex::encode(bytes)));
        assert_eq!(serde_json::from_str::<Sig>(&json).unwrap(), s);
        assert!(serde_json::from_str::<Sig>("\"00\"").is_err());
        let bin = postcard::to_allocvec(&s).unwrap();
        assert_eq!(bin, bytes.to_vec(), "no length prefix, no framing");
        assert_eq!(postcard::from_bytes::<Sig>(&bin).unwrap(), s);
        assert!(postcard::from_bytes::<Sig>(&bin[..63]).is_err());
    }

    #[test]
    fn hex_in_text_bytes_in_binary() {
        let d = Digest::of(b"lupus");
        assert_eq!(d.0, *blake3::hash(b"lupus").as_bytes());
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{}\"", d.to_hex()));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
        let upper = format!("\"{}\"", d.to_hex().to_uppercase());
        assert_eq!(serde_json::from_str::<Digest>(&upper).unwrap(), d);
        assert!(serde_json::from_str::<Digest>("\"abc\"").is_err());
        let bin = postcard::to_allocvec(&d).unwrap();
        assert_eq!(bin, d.0.to_vec());
        assert_eq!(postcard::from_bytes::<Digest>(&bin).unwrap(), d);
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
        assert_eq!(format!("{d:?}"), format!("Digest({})", d.to_hex()));
        assert_eq!(Digest::from_hex(&"zz".repeat(32)), Err(HexError));
    }
}
