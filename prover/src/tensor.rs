//! Dense row-major `f32` tensors: the values the runtime computes, commits and opens.
//!
//! DESIGN.md (Determinism; Trace and commitment): tensors are hashed over canonical
//! little-endian bytes together with their shape. A [`Tensor`] never holds NaN or an
//! infinity (construction rejects them) and never holds a subnormal (construction
//! flushes them to a zero of the same sign, the storage rule of `det.rs`), so its bytes
//! are already canonical; the hash canonicalises anyway so that the rule is local.

use serde::{Deserialize, Serialize};

use crate::det;

/// Most dimensions a tensor may have; the runtime uses at most 4.
pub const MAX_NDIM: usize = 8;
/// Most elements one tensor may hold (1 GiB of `f32`); larger shapes are refused
/// before anything is allocated.
pub const MAX_ELEMENTS: usize = 1 << 28;
/// Token ids are stored exactly as `f32`, which holds every integer below 2^24.
pub const MAX_TOKEN_ID: u32 = 1 << 24;

/// Why a tensor could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TensorError {
    /// The shape's element count differs from the data's length.
    #[error("tensor shape {shape:?} holds {expected} elements but {got} were given")]
    LengthMismatch {
        shape: Vec<usize>,
        expected: usize,
        got: usize,
    },
    /// The shape is too large or has too many dimensions.
    #[error(
        "tensor shape {shape:?} is too large (at most {MAX_NDIM} dimensions and {MAX_ELEMENTS} elements)"
    )]
    TooLarge { shape: Vec<usize> },
    /// An element is NaN or infinite: training diverged or the input is corrupt.
    #[error("tensor element {index} is NaN or infinite; tensors hold finite values only")]
    NonFinite { index: usize },
    /// A token id does not fit the exact-integer range of `f32`.
    #[error("token id {id} at position {index} is not below 2^24")]
    TokenIdTooLarge { index: usize, id: u32 },
    /// Canonical bytes were truncated, too long or malformed.
    #[error("malformed canonical tensor bytes: {reason}")]
    Malformed { reason: &'static str },
}

/// Elements converted per `blake3::Hasher::update` call when a tensor must be
/// canonicalised before hashing (64 KiB).
const HASH_BLOCK_ELEMS: usize = 16 * 1024;

/// The derived-key context of [`Tensor::hash`].
const TENSOR_HASH_CONTEXT: &str = "lupus tensor v1";

/// Bytes of one piece of [`Tensor::hash_pieces`]: 64 blake3 chunks, a power of two, so
/// that every piece is a subtree of blake3's tree.
pub const HASH_PIECE_LEN: usize = 64 * 1024;

/// A dense row-major tensor of finite, non-subnormal `f32` values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(try_from = "TensorRepr", into = "TensorRepr")]
pub struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

/// The serde form of a tensor; converting back re-checks every invariant.
#[derive(Serialize, Deserialize)]
struct TensorRepr {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl TryFrom<TensorRepr> for Tensor {
    type Error = TensorError;
    fn try_from(r: TensorRepr) -> Result<Self, TensorError> {
        Tensor::new(r.shape, r.data)
    }
}

impl From<Tensor> for TensorRepr {
    fn from(t: Tensor) -> Self {
        TensorRepr {
            shape: t.shape,
            data: t.data,
        }
    }
}

/// Checks a shape's rank and size and returns its element count.
pub fn checked_numel(shape: &[usize]) -> Result<usize, TensorError> {
    if shape.len() > MAX_NDIM {
        return Err(TensorError::TooLarge {
            shape: shape.to_vec(),
        });
    }
    let mut n: usize = 1;
    for &d in shape {
        n = n.checked_mul(d).ok_or_else(|| TensorError::TooLarge {
            shape: shape.to_vec(),
        })?;
    }
    if n > MAX_ELEMENTS {
        return Err(TensorError::TooLarge {
            shape: shape.to_vec(),
        });
    }
    Ok(n)
}

impl Tensor {
    /// Builds a tensor, checking that `data` fills `shape` exactly and that every value
    /// is finite; subnormals are flushed to zero (the storage rule).
    pub fn new(shape: Vec<usize>, mut data: Vec<f32>) -> Result<Tensor, TensorError> {
        let n = checked_numel(&shape)?;
        if n != data.len() {
            return Err(TensorError::LengthMismatch {
                shape,
                expected: n,
                got: data.len(),
            });
        }
        // One branch-free pass (it vectorises); the index is looked up only on error.
        let mut all_finite = true;
        for x in data.iter_mut() {
            all_finite &= x.is_finite();
            *x = det::ftz(*x);
        }
        if !all_finite {
            let index = data.iter().position(|x| !x.is_finite()).unwrap_or(0);
            return Err(TensorError::NonFinite { index });
        }
        Ok(Tensor { shape, data })
    }

    /// A tensor of zeros (panics never: an oversized shape gives an error).
    pub fn zeros(shape: Vec<usize>) -> Result<Tensor, TensorError> {
        let n = checked_numel(&shape)?;
        Ok(Tensor {
            shape,
            data: vec![0.0; n],
        })
    }

    /// A tensor of zeros with this tensor's shape.
    pub fn zeros_like(&self) -> Tensor {
        Tensor {
            shape: self.shape.clone(),
            data: vec![0.0; self.data.len()],
        }
    }

    /// A scalar as a tensor of shape `[1]`.
    pub fn scalar(x: f32) -> Result<Tensor, TensorError> {
        Tensor::new(vec![1], vec![x])
    }

    /// Token ids stored exactly as `f32` (each id must be below 2^24).
    pub fn from_ids(shape: Vec<usize>, ids: &[u32]) -> Result<Tensor, TensorError> {
        let mut data = Vec::with_capacity(ids.len());
        for (index, &id) in ids.iter().enumerate() {
            if id >= MAX_TOKEN_ID {
                return Err(TensorError::TokenIdTooLarge { index, id });
            }
            data.push(id as f32);
        }
        Tensor::new(shape, data)
    }

    /// The shape, outermost dimension first.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The elements in row-major order.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the tensor has no elements (a zero-sized dimension).
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Takes the elements out.
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    /// The same elements under another shape with the same element count.
    pub fn reshape(self, shape: Vec<usize>) -> Result<Tensor, TensorError> {
        let n = checked_numel(&shape)?;
        if n != self.data.len() {
            return Err(TensorError::LengthMismatch {
                shape,
                expected: n,
                got: self.data.len(),
            });
        }
        Ok(Tensor {
            shape,
            data: self.data,
        })
    }

    /// Canonical bytes: `ndim` as u32 LE, each dimension as u64 LE, then each element
    /// as f32 LE after canonicalising NaN to `0x7fc00000` and flushing subnormals (both
    /// no-ops for a valid tensor).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + 8 * self.shape.len() + 4 * self.data.len());
        self.write_canonical(&mut out);
        out
    }

    fn write_canonical(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.shape.len() as u32).to_le_bytes());
        for &d in &self.shape {
            out.extend_from_slice(&(d as u64).to_le_bytes());
        }
        for &x in &self.data {
            out.extend_from_slice(&det::canonical_bits(x).to_le_bytes());
        }
    }

    /// Parses [`Tensor::canonical_bytes`] strictly: exact length, no trailing bytes,
    /// finite values, no subnormals (non-canonical bytes are refused, not repaired).
    pub fn from_canonical_bytes(bytes: &[u8]) -> Result<Tensor, TensorError> {
        let (t, rest) = Tensor::read_canonical(bytes)?;
        if !rest.is_empty() {
            return Err(TensorError::Malformed {
                reason: "trailing bytes after the tensor",
            });
        }
        Ok(t)
    }

    /// Reads one canonical tensor from the front of `bytes`, returning the rest.
    pub fn read_canonical(bytes: &[u8]) -> Result<(Tensor, &[u8]), TensorError> {
        const TRUNC: TensorError = TensorError::Malformed {
            reason: "truncated tensor bytes",
        };
        let (ndim, mut rest) = take_u32(bytes).ok_or(TRUNC)?;
        let ndim = ndim as usize;
        if ndim > MAX_NDIM {
            return Err(TensorError::Malformed {
                reason: "too many dimensions",
            });
        }
        let mut shape = Vec::with_capacity(ndim);
        for _ in 0..ndim {
            let (d, r) = take_u64(rest).ok_or(TRUNC)?;
            rest = r;
            shape.push(usize::try_from(d).map_err(|_| TensorError::TooLarge {
                shape: shape.clone(),
            })?);
        }
        let n = checked_numel(&shape)?;
        let need = n.checked_mul(4).ok_or(TRUNC)?;
        if rest.len() < need {
            return Err(TRUNC);
        }
        let (body, rest) = rest.split_at(need);
        let mut data = Vec::with_capacity(n);
        for (index, c) in body.chunks_exact(4).enumerate() {
            let bits = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            let x = f32::from_bits(bits);
            if !x.is_finite() {
                return Err(TensorError::NonFinite { index });
            }
            if det::ftz(x).to_bits() != bits {
                return Err(TensorError::Malformed {
                    reason: "subnormal value in canonical bytes",
                });
            }
            data.push(x);
        }
        Ok((Tensor { shape, data }, rest))
    }

    /// blake3 with the derived key `"lupus tensor v1"` over [`Tensor::canonical_bytes`].
    pub fn hash(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key(TENSOR_HASH_CONTEXT);
        h.update(&self.hash_header());
        // Hashing is on the commitment's hot path (every op output of every step), so it
        // must run near blake3's speed: give it the whole slice in one `update` (its SIMD
        // works across the 1 KiB chunks of one call) and avoid converting element by
        // element. Tensors built by this crate are already canonical (finite,
        // subnormals flushed), and then the canonical little-endian bytes are the
        // in-memory bytes on a little-endian target; anything else takes the converting
        // path, with the same digest.
        if let Some(bytes) = self.bytes_if_canonical() {
            h.update(bytes);
        } else {
            let mut chunk = vec![0u8; 4 * HASH_BLOCK_ELEMS.min(self.data.len())];
            for block in self.data.chunks(HASH_BLOCK_ELEMS) {
                let bytes = &mut chunk[..4 * block.len()];
                for (dst, &x) in bytes.chunks_exact_mut(4).zip(block) {
                    dst.copy_from_slice(&det::canonical_bits(x).to_le_bytes());
                }
                h.update(bytes);
            }
        }
        *h.finalize().as_bytes()
    }

    /// [`Tensor::hash`], the same bits, computed piece by piece: when the hashed input
    /// (the shape header, then the canonical bytes) is longer than [`HASH_PIECE_LEN`],
    /// it is cut into pieces of that length (the last may be shorter), the blake3
    /// chaining value of each piece is pushed to `cvs` in order, and the hash is the
    /// blake3 tree merged from them. A shorter input pushes nothing.
    ///
    /// A piece's chaining value is an interior node of the hash's tree: from the hash
    /// alone nobody can compute it, from the bytes anyone can. Proof of replay digests
    /// them instead of the bytes (`verify::ReplayDigest`), at 32 bytes a piece.
    pub fn hash_pieces(&self, cvs: &mut Vec<[u8; 32]>) -> [u8; 32] {
        use blake3::hazmat::{
            HasherExt, Mode, hash_derive_key_context, left_subtree_len, merge_subtrees_non_root,
            merge_subtrees_root,
        };
        let header = self.hash_header();
        let total = header.len() + 4 * self.data.len();
        if total <= HASH_PIECE_LEN {
            return self.hash();
        }
        let converted;
        let data: &[u8] = match self.bytes_if_canonical() {
            Some(bytes) => bytes,
            None => {
                converted = self
                    .data
                    .iter()
                    .flat_map(|&x| det::canonical_bits(x).to_le_bytes())
                    .collect::<Vec<u8>>();
                &converted
            }
        };
        let context = hash_derive_key_context(TENSOR_HASH_CONTEXT);
        let first = cvs.len();
        for start in (0..total).step_by(HASH_PIECE_LEN) {
            let end = (start + HASH_PIECE_LEN).min(total);
            let mut h = blake3::Hasher::new_from_context_key(&context);
            h.set_input_offset(start as u64);
            if start < header.len() {
                h.update(&header[start..]);
            }
            h.update(&data[start.max(header.len()) - header.len()..end - header.len()]);
            cvs.push(h.finalize_non_root());
        }
        let pieces = &cvs[first..];
        let mode = Mode::DeriveKeyMaterial(&context);
        // The blake3 tree over the pieces: a subtree of more than one piece splits
        // where blake3 splits it (`left_subtree_len`, a power of two chunks and so a
        // whole number of pieces), down to single pieces.
        fn merged(pieces: &[[u8; 32]], start: usize, len: usize, mode: Mode<'_>) -> [u8; 32] {
            if len <= HASH_PIECE_LEN {
                return pieces[start / HASH_PIECE_LEN];
            }
            let left = left_subtree_len(len as u64) as usize;
            merge_subtrees_non_root(
                &merged(pieces, start, left, mode),
                &merged(pieces, start + left, len - left, mode),
                mode,
            )
        }
        let left = left_subtree_len(total as u64) as usize;
        *merge_subtrees_root(
            &merged(pieces, 0, left, mode),
            &merged(pieces, left, total - left, mode),
            mode,
        )
        .as_bytes()
    }

    /// The start of the hashed input: the rank (`u32`), then each dimension (`u64`).
    fn hash_header(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(4 + 8 * self.shape.len());
        buf.extend_from_slice(&(self.shape.len() as u32).to_le_bytes());
        for &d in &self.shape {
            buf.extend_from_slice(&(d as u64).to_le_bytes());
        }
        buf
    }

    /// The canonical bytes without a copy, where they are the in-memory bytes: a
    /// little-endian target and no value to canonicalise. Branch-free integer test (it
    /// vectorises; `canonical_bits` per element does not): a value is non-canonical iff
    /// its exponent is all zeros (subnormal) or all ones (NaN) with a non-zero mantissa.
    /// Infinities never get into a tensor.
    fn bytes_if_canonical(&self) -> Option<&[u8]> {
        let odd = self
            .data
            .iter()
            .map(|x| {
                let (exp, man) = (x.to_bits() & 0x7f80_0000, x.to_bits() & 0x007f_ffff);
                u32::from(((exp == 0) | (exp == 0x7f80_0000)) & (man != 0))
            })
            .fold(0u32, |a, b| a | b);
        (cfg!(target_endian = "little") && odd == 0).then(|| bytemuck::cast_slice(&self.data))
    }
}

fn take_u32(b: &[u8]) -> Option<(u32, &[u8])> {
    let (head, rest) = b.split_first_chunk::<4>()?;
    Some((u32::from_le_bytes(*head), rest))
}

fn take_u64(b: &[u8]) -> Option<(u64, &[u8])> {
    let (head, rest) = b.split_first_chunk::<8>()?;
    Some((u64::from_le_bytes(*head), rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The strict parser never panics on hostile bytes, and whatever it accepts
        /// is canonical: it re-encodes to exactly the bytes it came from.
        #[test]
        fn parser_is_total_and_accepts_only_canonical_bytes(
            bytes in proptest::collection::vec(any::<u8>(), 0..96)
        ) {
            if let Ok(t) = Tensor::from_canonical_bytes(&bytes) {
                prop_assert_eq!(t.canonical_bytes(), bytes);
            }
        }

        /// Every valid tensor round-trips through its canonical bytes, hash included.
        #[test]
        fn valid_tensors_round_trip(
            rows in 0usize..5,
            cols in 0usize..5,
            seed in any::<u32>(),
        ) {
            let data: Vec<f32> = (0..rows * cols)
                .map(|i| f32::from_bits(seed.wrapping_mul(2_654_435_761).wrapping_add(i as u32) & 0x7f7f_ffff))
                .collect();
            let t = Tensor::new(vec![rows, cols], data).unwrap();
            let back = Tensor::from_canonical_bytes(&t.canonical_bytes()).unwrap();
            prop_assert_eq!(back.hash(), t.hash());
            prop_assert_eq!(back, t);
        }
    }

    #[test]
    fn new_checks_length_and_finiteness() {
        assert!(matches!(
            Tensor::new(vec![2, 3], vec![0.0; 5]),
            Err(TensorError::LengthMismatch { expected: 6, .. })
        ));
        assert_eq!(
            Tensor::new(vec![2], vec![1.0, f32::NAN]),
            Err(TensorError::NonFinite { index: 1 })
        );
        assert_eq!(
            Tensor::new(vec![1], vec![f32::NEG_INFINITY]),
            Err(TensorError::NonFinite { index: 0 })
        );
        assert!(matches!(
            Tensor::zeros(vec![usize::MAX, 2]),
            Err(TensorError::TooLarge { .. })
        ));
        assert!(matches!(
            Tensor::zeros(vec![1; 9]),
            Err(TensorError::TooLarge { .. })
        ));
    }

    #[test]
    fn subnormals_are_flushed_on_construction() {
        let t = Tensor::new(vec![2], vec![1e-40, -1e-41]).unwrap();
        assert_eq!(t.data()[0].to_bits(), 0);
        assert_eq!(t.data()[1].to_bits(), 0x8000_0000);
    }

    #[test]
    fn hash_depends_on_shape_and_bits() {
        let a = Tensor::new(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let b = a.clone().reshape(vec![4]).unwrap();
        let c = Tensor::new(vec![2, 2], vec![1.0, 2.0, 3.0, 4.000_000_5]).unwrap();
        let z = Tensor::new(vec![1], vec![0.0]).unwrap();
        let nz = Tensor::new(vec![1], vec![-0.0]).unwrap();
        assert_ne!(a.hash(), b.hash());
        assert_ne!(a.hash(), c.hash());
        assert_ne!(z.hash(), nz.hash());
        assert_eq!(a.hash(), a.clone().hash());
        // The streamed hash equals the hash of the canonical bytes.
        let mut h = blake3::Hasher::new_derive_key("lupus tensor v1");
        h.update(&a.canonical_bytes());
        assert_eq!(a.hash(), *h.finalize().as_bytes());
    }

    /// The piecewise hash is blake3's own, at every length around the piece
    /// boundaries and the tree's power-of-two splits, and each piece's chaining value
    /// depends on that piece's bytes only.
    #[test]
    fn hash_pieces_is_the_hash_and_its_pieces_are_local() {
        let per_piece = HASH_PIECE_LEN / 4;
        // A rank-1 header is 12 bytes: 16,381 elements fill one piece exactly.
        for n in [
            1,
            per_piece - 3,
            per_piece - 2,
            2 * per_piece - 3,
            2 * per_piece - 2,
            3 * per_piece,
            4 * per_piece - 3,
            4 * per_piece + 5,
            100_003,
            9 * per_piece + 1,
        ] {
            let data: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let t = Tensor::new(vec![n], data).unwrap();
            let mut cvs = vec![[7u8; 32]];
            assert_eq!(t.hash_pieces(&mut cvs), t.hash(), "n = {n}");
            let total = 12 + 4 * n;
            let pieces = if total <= HASH_PIECE_LEN {
                0
            } else {
                total.div_ceil(HASH_PIECE_LEN)
            };
            assert_eq!(cvs.len(), 1 + pieces, "n = {n}: the CVs are appended");
            assert_eq!(cvs[0], [7u8; 32]);
            if pieces > 1 {
                let mut changed = t.data().to_vec();
                *changed.last_mut().unwrap() += 1.0;
                let u = Tensor::new(vec![n], changed).unwrap();
                let mut other = Vec::new();
                assert_eq!(u.hash_pieces(&mut other), u.hash());
                assert_eq!(other[..pieces - 1], cvs[1..pieces], "n = {n}");
                assert_ne!(other[pieces - 1], cvs[pieces], "n = {n}");
            }
        }
        // A rank-3 header (28 bytes) and a 2-D one.
        for shape in [vec![3, 129, 257], vec![257, 300]] {
            let n: usize = shape.iter().product();
            let t = Tensor::new(shape, (0..n).map(|i| i as f32).collect()).unwrap();
            assert_eq!(t.hash_pieces(&mut Vec::new()), t.hash());
        }
    }

    #[test]
    fn canonical_bytes_round_trip_and_strictness() {
        let a = Tensor::new(vec![3, 1], vec![1.5, -2.0, 0.25]).unwrap();
        let bytes = a.canonical_bytes();
        assert_eq!(bytes.len(), 4 + 16 + 12);
        assert_eq!(Tensor::from_canonical_bytes(&bytes).unwrap(), a);
        let mut long = bytes.clone();
        long.push(0);
        assert!(Tensor::from_canonical_bytes(&long).is_err());
        assert!(Tensor::from_canonical_bytes(&bytes[..bytes.len() - 1]).is_err());
        let mut nan = bytes.clone();
        let at = nan.len() - 4;
        nan[at..].copy_from_slice(&0x7fc0_0000u32.to_le_bytes());
        assert!(matches!(
            Tensor::from_canonical_bytes(&nan),
            Err(TensorError::NonFinite { index: 2 })
        ));
        let mut sub = bytes;
        sub[at..].copy_from_slice(&1u32.to_le_bytes());
        assert!(Tensor::from_canonical_bytes(&sub).is_err());
        // A huge claimed shape is refused before allocation.
        let mut huge = Vec::new();
        huge.extend_from_slice(&2u32.to_le_bytes());
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(Tensor::from_canonical_bytes(&huge).is_err());
    }

    #[test]
    fn ids_are_exact_and_bounded() {
        let t = Tensor::from_ids(vec![3], &[0, 65, (1 << 24) - 1]).unwrap();
        assert_eq!(t.data(), &[0.0, 65.0, 16_777_215.0]);
        assert_eq!(
            Tensor::from_ids(vec![1], &[1 << 24]),
            Err(TensorError::TokenIdTooLarge {
                index: 0,
                id: 1 << 24
            })
        );
    }

    #[test]
    fn serde_rechecks_invariants() {
        let a = Tensor::new(vec![2], vec![1.0, 2.0]).unwrap();
        let s = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<Tensor>(&s).unwrap(), a);
        assert!(serde_json::from_str::<Tensor>(r#"{"shape":[3],"data":[1.0]}"#).is_err());
    }

    /// Known answer for the piecewise hash, as the browser tests check it in wasm.
    #[test]
    fn hash_pieces_known_answer() {
        assert_eq!(crate::kat::hash_pieces_known_answer(), Ok(()));
    }
}
