//! Hashes, leaf indices and tree sizes of the RFC 9162 Merkle tree.
//!
//! RFC 9162 §2.1.1 defines the Merkle Tree Hash over SHA-256 with domain separation:
//! a leaf is `SHA-256(0x00 || entry)` ([`leaf_hash`]), an interior node is
//! `SHA-256(0x01 || left || right)` ([`node_hash`]) and the empty tree's root is
//! `SHA-256("")` ([`empty_root`]). The newtypes here are what every other module
//! of the tree speaks, so a leaf index can never be passed where a size is meant.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// The largest tree size this crate accepts: 2^63 leaves.
///
/// Every stored-hash index of a tree this size still fits in a `u64` (see
/// [`crate::tree::stored_hash_count`]); no real log comes near it.
pub const MAX_TREE_SIZE: u64 = 1 << 63;

/// A SHA-256 output: a leaf hash, an interior node hash or a tree root.
///
/// Displayed, debugged and serialised as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hash(pub [u8; 32]);

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Hash {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        lupus_types::openapi::string(
            "An RFC 9162 SHA-256 tree hash as 64 hex digits.",
            lupus_types::openapi::HEX32,
        )
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Hash {}

/// Why a string is not a hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HashParseError {
    /// The string was not 64 hex digits.
    #[error("a hash is 64 hex digits (32 bytes); got {len} characters that are not that")]
    BadHex {
        /// Length of the rejected input, in characters.
        len: usize,
    },
    /// The bytes were not 32 long.
    #[error("a hash is 32 bytes; got {len}")]
    BadLength {
        /// Length of the rejected input, in bytes.
        len: usize,
    },
}

impl Hash {
    /// Size of a hash in bytes.
    pub const LEN: usize = 32;

    /// Parses 64 hex digits (either case).
    pub fn from_hex(s: &str) -> Result<Hash, HashParseError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| HashParseError::BadHex { len: s.len() })?;
        Ok(Hash(out))
    }

    /// Takes a hash from a byte slice that must be exactly 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Result<Hash, HashParseError> {
        <[u8; 32]>::try_from(bytes)
            .map(Hash)
            .map_err(|_| HashParseError::BadLength { len: bytes.len() })
    }

    /// Lowercase hex encoding.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_hex())
    }
}

impl Serialize for Hash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Hash, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Hash::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

/// The 0-based position of a leaf in the log.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct LeafIndex(pub u64);

/// The number of leaves in a tree.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct TreeSize(pub u64);

impl fmt::Display for LeafIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for TreeSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// RFC 9162 §2.1.1: the hash of a leaf, `SHA-256(0x00 || entry)`.
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(entry);
    Hash(h.finalize().into())
}

/// RFC 9162 §2.1.1: the hash of an interior node, `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left.0);
    h.update(right.0);
    Hash(h.finalize().into())
}

/// RFC 9162 §2.1.1: the root of the empty tree, `SHA-256("")`.
///
/// Go's `tlog.TreeHash(0, ..)` returns the all-zero hash instead; this crate follows
/// the RFC.
pub fn empty_root() -> Hash {
    Hash(Sha256::digest([]).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_root_is_sha256_of_nothing() {
        assert_eq!(
            empty_root().to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn leaf_hash_of_empty_entry_matches_rfc6962_vector() {
        // The leaf hash of the empty entry, from certificate-transparency's
        // merkle_tree_test vectors (and Go's tlog ct_test).
        assert_eq!(
            leaf_hash(b"").to_hex(),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
    }

    #[test]
    fn hex_round_trip_and_rejects_bad_input() {
        let h = leaf_hash(b"x");
        assert_eq!(Hash::from_hex(&h.to_hex()), Ok(h));
        assert_eq!(Hash::from_hex(&h.to_hex().to_uppercase()), Ok(h));
        assert!(matches!(
            Hash::from_hex("00"),
            Err(HashParseError::BadHex { len: 2 })
        ));
        assert!(Hash::from_hex(&"zz".repeat(32)).is_err());
        assert!(Hash::from_hex("é").is_err());
        assert_eq!(
            Hash::from_slice(&[0; 31]),
            Err(HashParseError::BadLength { len: 31 })
        );
    }

    #[test]
    fn serde_is_hex_string() {
        let h = leaf_hash(b"x");
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(json, format!("\"{}\"", h.to_hex()));
        assert_eq!(serde_json::from_str::<Hash>(&json).unwrap(), h);
        assert!(serde_json::from_str::<Hash>("\"abcd\"").is_err());
        assert!(serde_json::from_str::<Hash>("17").is_err());
    }

    #[test]
    fn debug_and_display_are_hex() {
        let h = Hash([0xab; 32]);
        assert_eq!(format!("{h}"), "ab".repeat(32));
        assert_eq!(format!("{h:?}"), format!("Hash({})", "ab".repeat(32)));
    }
}
