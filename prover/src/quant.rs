//! The int8 pseudo-gradient a worker sends back (DESIGN.md, The loop step 3; Trace and
//! commitment: the last leaf commits `H(delta)`).
//!
//! `delta = S_H - S_0` per parameter tensor, quantised with one scale per tensor:
//! `scale = max|d| * (1/127)` and `q = clamp(round_ne(d * recip(scale)), -127, 127)`,
//! with `1/127` and `recip` from `det.rs` and rounding to nearest even by the exact
//! magic-number trick. A tensor of zeros has scale 0 and all values 0. Dequantising
//! gives `q * scale`.
//!
//! Canonical bytes ([`QuantDelta::to_bytes`]), all integers little-endian:
//! `count u32`, then per tensor `ndim u32`, each dimension `u64`, `scale` as f32 bits
//! (`u32`), then the `numel` values as `i8`. [`QuantDelta::from_bytes`] accepts exactly
//! these bytes and nothing else: a scale that is NaN, infinite, negative (including
//! `-0`), subnormal or so large that `127 * scale` overflows f32 (its values would not
//! dequantise), a value of -128, non-zero values under a zero scale, a size over the
//! limits, or trailing bytes are all refused, so every delta has one encoding and
//! every delta that parses dequantises. [`quantise_delta`] refuses to make such a
//! scale.

use crate::det;
use crate::model::ModelError;
use crate::tensor::{MAX_ELEMENTS, MAX_NDIM, Tensor, checked_numel};

/// Most tensors one delta may hold.
pub const MAX_TENSORS: usize = 4096;

/// One quantised tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct QTensor {
    pub shape: Vec<usize>,
    pub scale: f32,
    pub values: Vec<i8>,
}

/// A quantised delta: one [`QTensor`] per parameter tensor, in parameter order.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantDelta {
    pub tensors: Vec<QTensor>,
}

/// Whether every `q * scale` with `q` in `-127..=127` is finite: dequantising
/// multiplies in f32, and rounding is monotonic, so `127 * scale` is the largest.
fn fits_i8_range(scale: f32) -> bool {
    (scale * 127.0).is_finite()
}

fn quant_err(detail: impl Into<String>) -> ModelError {
    ModelError::Quant {
        detail: detail.into(),
    }
}

/// Quantises `trained - base` tensor by tensor (see the module docs for the rule).
pub fn quantise_delta(base: &[Tensor], trained: &[Tensor]) -> Result<QuantDelta, ModelError> {
    if base.len() != trained.len() {
        return Err(quant_err(format!(
            "{} base tensors but {} trained ones",
            base.len(),
            trained.len()
        )));
    }
    let inv127 = det::reciprocal(127.0);
    let mut tensors = Vec::with_capacity(base.len());
    for (i, (b, t)) in base.iter().zip(trained).enumerate() {
        if b.shape() != t.shape() {
            return Err(quant_err(format!(
                "tensor {i}: base shape {:?} differs from trained shape {:?}",
                b.shape(),
                t.shape()
            )));
        }
        let d: Vec<f32> = b
            .data()
            .iter()
            .zip(t.data())
            .map(|(&x, &y)| det::ftz(y - x))
            .collect();
        let mut maxabs = 0.0f32;
        for &x in &d {
            let a = x.abs();
            if a > maxabs {
                maxabs = a;
            }
        }
        if !maxabs.is_finite() {
            return Err(quant_err(format!("tensor {i}: the delta overflows f32")));
        }
        let scale = det::ftz(maxabs * inv127);
        if !fits_i8_range(scale) {
            return Err(quant_err(format!("tensor {i}: the delta overflows f32")));
        }
        let values = if scale == 0.0 {
            vec![0i8; d.len()]
        } else {
            let inv = det::reciprocal(scale);
            d.iter()
                .map(|&x| {
                    let q = det::round_ne(x * inv);
                    q.clamp(-127.0, 127.0) as i8
                })
                .collect()
        };
        tensors.push(QTensor {
            shape: b.shape().to_vec(),
            scale,
            values,
        });
    }
    Ok(QuantDelta { tensors })
}

impl QuantDelta {
    /// `q * scale` for every value (flushed), as tensors in order. The fields are
    /// public, so a hand-built delta whose values do not fill its shape, or whose scale
    /// is not finite, is refused here rather than trusted.
    pub fn dequantise(&self) -> Result<Vec<Tensor>, ModelError> {
        self.tensors
            .iter()
            .enumerate()
            .map(|(i, q)| {
                if !q.scale.is_finite() {
                    return Err(quant_err(format!("tensor {i} has a non-finite scale")));
                }
                let data = q
                    .values
                    .iter()
                    .map(|&v| det::ftz(v as f32 * q.scale))
                    .collect();
                Tensor::new(q.shape.clone(), data)
                    .map_err(|e| quant_err(format!("tensor {i}: {e}")))
            })
            .collect()
    }

    /// The canonical bytes (layout in the module docs).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(self.tensors.len() as u32).to_le_bytes());
        for q in &self.tensors {
            out.extend_from_slice(&(q.shape.len() as u32).to_le_bytes());
            for &d in &q.shape {
                out.extend_from_slice(&(d as u64).to_le_bytes());
            }
            out.extend_from_slice(&q.scale.to_bits().to_le_bytes());
            out.extend(q.values.iter().map(|&v| v as u8));
        }
        out
    }

    /// Parses canonical bytes strictly (see the module docs for what is refused).
    pub fn from_bytes(bytes: &[u8]) -> Result<QuantDelta, ModelError> {
        let mut r = Reader { b: bytes };
        let count = r.u32()? as usize;
        if count > MAX_TENSORS {
            return Err(quant_err(format!(
                "{count} tensors exceed the limit of {MAX_TENSORS}"
            )));
        }
        let mut tensors = Vec::with_capacity(count);
        for i in 0..count {
            let ndim = r.u32()? as usize;
            if ndim > MAX_NDIM {
                return Err(quant_err(format!("tensor {i} has {ndim} dimensions")));
            }
            let mut shape = Vec::with_capacity(ndim);
            for _ in 0..ndim {
                let d = usize::try_from(r.u64()?)
                    .map_err(|_| quant_err(format!("tensor {i} has a dimension too large")))?;
                shape.push(d);
            }
            let n = checked_numel(&shape)?;
            if n > MAX_ELEMENTS {
                return Err(quant_err(format!("tensor {i} is too large")));
            }
            let scale = f32::from_bits(r.u32()?);
            if !(scale.is_finite() && scale.is_sign_positive() && det::ftz(scale) == scale) {
                return Err(quant_err(format!(
                    "tensor {i} has scale {scale:e}; scales are finite, non-negative and normal or +0"
                )));
            }
            if !fits_i8_range(scale) {
                return Err(quant_err(format!(
                    "tensor {i} has scale {scale:e}; 127 * scale must be a finite f32"
                )));
            }
            let raw = r.take(n)?;
            let values: Vec<i8> = raw.iter().map(|&b| b as i8).collect();
            if values.contains(&i8::MIN) {
                return Err(quant_err(format!(
                    "tensor {i} holds -128; values are in -127..=127"
                )));
            }
            if scale == 0.0 && values.iter().any(|&v| v != 0) {
                return Err(quant_err(format!(
                    "tensor {i} has scale 0 but non-zero values"
                )));
            }
            tensors.push(QTensor {
                shape,
                scale,
                values,
            });
        }
        if !r.b.is_empty() {
            return Err(quant_err("trailing bytes after the last tensor"));
        }
        Ok(QuantDelta { tensors })
    }

    /// blake3 with the derived key `"lupus delta v1"` over [`QuantDelta::to_bytes`].
    pub fn hash(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key("lupus delta v1");
        h.update(&self.to_bytes());
        *h.finalize().as_bytes()
    }
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ModelError> {
        if self.b.len() < n {
            return Err(quant_err("truncated delta bytes"));
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }
    fn u32(&mut self) -> Result<u32, ModelError> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Result<u64, ModelError> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Found by the `model_blob` fuzz target (minimised input): one scalar tensor with
    /// scale 0x7eff7474 (about 1.7e38) and value 116 parsed, then failed to dequantise
    /// (116 * scale is infinite), so a delta the coordinator accepted at submission
    /// could stop the round close that merges it. The parser now refuses it.
    #[test]
    fn a_scale_whose_values_overflow_is_refused() {
        let bytes = [1, 0, 0, 0, 0, 0, 0, 0, 0x74, 0x74, 0xff, 0x7e, 0x74];
        let err = QuantDelta::from_bytes(&bytes).unwrap_err();
        assert!(err.to_string().contains("127 * scale"), "{err}");
        // The largest scale that still dequantises is accepted.
        let mut max = f32::MAX / 127.0;
        while !(max * 127.0).is_finite() {
            max = f32::from_bits(max.to_bits() - 1);
        }
        let ok = QuantDelta {
            tensors: vec![QTensor {
                shape: vec![],
                scale: max,
                values: vec![-127],
            }],
        };
        let parsed = QuantDelta::from_bytes(&ok.to_bytes()).unwrap();
        assert!(parsed.dequantise().unwrap()[0].data()[0].is_finite());
        // quantise_delta refuses to make a scale the parser would refuse.
        let base = Tensor::new(vec![1], vec![0.0]).unwrap();
        let huge = Tensor::new(vec![1], vec![f32::MAX]).unwrap();
        let made = quantise_delta(std::slice::from_ref(&base), std::slice::from_ref(&huge));
        match made {
            Ok(q) => assert!(QuantDelta::from_bytes(&q.to_bytes()).is_ok()),
            Err(e) => assert!(e.to_string().contains("overflows"), "{e}"),
        }
    }

    proptest! {
        /// Hostile bytes never panic the parser; accepted bytes are canonical and
        /// dequantise.
        #[test]
        fn parser_is_total_and_canonical(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(q) = QuantDelta::from_bytes(&bytes) {
                prop_assert_eq!(q.to_bytes(), bytes);
                prop_assert!(q.dequantise().is_ok());
            }
        }

        /// Quantising any delta gives values within 1/2 step of the truth plus the
        /// rounding of the scale, and a delta that re-parses from its bytes.
        #[test]
        fn quantisation_error_is_bounded(
            deltas in proptest::collection::vec(-10.0f32..10.0, 1..40)
        ) {
            let base = Tensor::zeros(vec![deltas.len()]).unwrap();
            let trained = Tensor::new(vec![deltas.len()], deltas.clone()).unwrap();
            let q = quantise_delta(std::slice::from_ref(&base), &[trained]).unwrap();
            prop_assert_eq!(QuantDelta::from_bytes(&q.to_bytes()).unwrap(), q.clone());
            let scale = q.tensors[0].scale;
            for (d, r) in deltas.iter().zip(q.dequantise().unwrap()[0].data()) {
                prop_assert!((d - r).abs() <= scale * 0.501 + 1e-6, "{} vs {}", d, r);
            }
        }
    }

    fn t(shape: Vec<usize>, v: &[f32]) -> Tensor {
        Tensor::new(shape, v.to_vec()).unwrap()
    }

    #[test]
    fn quantise_round_trip_is_close() {
        let base = vec![t(vec![2, 2], &[1.0, 2.0, 3.0, 4.0]), t(vec![1], &[5.0])];
        let trained = vec![t(vec![2, 2], &[1.5, 1.0, 3.01, 4.0]), t(vec![1], &[5.0])];
        let q = quantise_delta(&base, &trained).unwrap();
        assert_eq!(q.tensors[0].values, vec![64, -127, 1, 0]);
        assert_eq!(q.tensors[1].scale, 0.0);
        let d = q.dequantise().unwrap();
        assert!((d[0].data()[1] + 1.0).abs() < 1e-6);
        assert!((d[0].data()[0] - 0.5).abs() < 0.01);
        let bytes = q.to_bytes();
        assert_eq!(bytes.len(), 4 + (4 + 16 + 4 + 4) + (4 + 8 + 4 + 1));
        assert_eq!(QuantDelta::from_bytes(&bytes).unwrap(), q);
        assert_eq!(q.hash(), QuantDelta::from_bytes(&bytes).unwrap().hash());
    }

    #[test]
    fn ties_round_to_even() {
        // max 127 gives scale 1 (within an ULP): 2.5 -> 2, 3.5 -> 4.
        let base = vec![t(vec![3], &[0.0, 0.0, 0.0])];
        let trained = vec![t(vec![3], &[127.0, 2.5, 3.5])];
        let q = quantise_delta(&base, &trained).unwrap();
        assert_eq!(q.tensors[0].values, vec![127, 2, 4]);
    }

    #[test]
    fn mismatches_are_refused() {
        let a = vec![t(vec![2], &[1.0, 2.0])];
        let b = vec![t(vec![1, 2], &[1.0, 2.0])];
        assert!(quantise_delta(&a, &b).is_err());
        assert!(quantise_delta(&a, &[]).is_err());
    }

    #[test]
    fn non_canonical_bytes_are_refused() {
        let q = QuantDelta {
            tensors: vec![QTensor {
                shape: vec![2],
                scale: 0.5,
                values: vec![1, -1],
            }],
        };
        let good = q.to_bytes();
        assert!(QuantDelta::from_bytes(&good).is_ok());
        let scale_at = 4 + 4 + 8;
        for bad_scale in [f32::NAN, f32::INFINITY, -0.5, -0.0, 1e-40] {
            let mut b = good.clone();
            b[scale_at..scale_at + 4].copy_from_slice(&bad_scale.to_bits().to_le_bytes());
            assert!(QuantDelta::from_bytes(&b).is_err(), "{bad_scale}");
        }
        let mut b = good.clone();
        b[scale_at + 4] = 0x80;
        assert!(QuantDelta::from_bytes(&b).is_err());
        let mut b = good.clone();
        b[scale_at..scale_at + 4].copy_from_slice(&0f32.to_bits().to_le_bytes());
        assert!(QuantDelta::from_bytes(&b).is_err());
        let mut bad = q.clone();
        bad.tensors[0].values.push(3);
        assert!(bad.dequantise().is_err());
        let mut b = good.clone();
        b.push(0);
        assert!(QuantDelta::from_bytes(&b).is_err());
        assert!(QuantDelta::from_bytes(&good[..good.len() - 1]).is_err());
        let mut huge = Vec::new();
        huge.extend_from_slice(&1u32.to_le_bytes());
        huge.extend_from_slice(&1u32.to_le_bytes());
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(QuantDelta::from_bytes(&huge).is_err());
        assert!(QuantDelta::from_bytes(&u32::MAX.to_le_bytes()).is_err());
    }
}
