//! Model blobs: the byte layout of a model's parameters, content addressed by blake3.
//!
//! Layout: `u32` LE tensor count, then each tensor's canonical bytes
//! ([`Tensor::canonical_bytes`]: rank, dimensions, f32 LE values) in the model's
//! parameter order. The model hash a `RoundOpened` or `RoundClosed` entry names is the
//! plain blake3 of these bytes ([`model_hash`]), so the blob store serves it by that
//! hash and any download is checked by hashing it.

use lupus_ledger::entry::Digest;
use lupus_prover::spec::JobSpec;
use lupus_prover::tensor::Tensor;

/// Errors of decoding a model blob.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ModelBlobError {
    #[error("model blob truncated: the bytes end inside its header")]
    Truncated,
    #[error("model blob tensor {index}: {detail}")]
    Tensor { index: usize, detail: String },
    #[error("model blob has {count} tensors but the job's model has {expected}")]
    Count { count: usize, expected: usize },
    #[error("model blob does not fit the job's model: {0}")]
    Shapes(String),
    #[error("{0} trailing bytes after the last tensor")]
    Trailing(usize),
}

/// The blob bytes of `params`.
pub fn encode_model(params: &[Tensor]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(params.len() as u32).to_le_bytes());
    for t in params {
        out.extend_from_slice(&t.canonical_bytes());
    }
    out
}

/// The content address of a model blob.
pub fn model_hash(bytes: &[u8]) -> Digest {
    Digest::of(bytes)
}

/// Parses a model blob and checks it against the job's model shapes.
pub fn decode_model(bytes: &[u8], job: &JobSpec) -> Result<Vec<Tensor>, ModelBlobError> {
    let (head, mut rest) = bytes
        .split_first_chunk::<4>()
        .ok_or(ModelBlobError::Truncated)?;
    let count = u32::from_le_bytes(*head) as usize;
    let expected = job.model.param_shapes().len();
    if count != expected {
        return Err(ModelBlobError::Count { count, expected });
    }
    let mut params = Vec::with_capacity(count);
    for index in 0..count {
        let (t, r) = Tensor::read_canonical(rest).map_err(|e| ModelBlobError::Tensor {
            index,
            detail: e.to_string(),
        })?;
        params.push(t);
        rest = r;
    }
    if !rest.is_empty() {
        return Err(ModelBlobError::Trailing(rest.len()));
    }
    job.model
        .check_params(&params, "model blob")
        .map_err(|e| ModelBlobError::Shapes(e.to_string()))?;
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lupus_prover::model::init_params;

    const TINY: &str = include_str!("../../jobs/tiny-test.toml");

    #[test]
    fn a_model_round_trips_and_hostile_bytes_are_refused() {
        let job = JobSpec::parse(TINY).unwrap();
        let params = init_params(&job.model, [3; 32]).unwrap();
        let bytes = encode_model(&params);
        assert_eq!(decode_model(&bytes, &job).unwrap(), params);
        assert_eq!(model_hash(&bytes), Digest::of(&bytes));
        assert_eq!(decode_model(&[], &job), Err(ModelBlobError::Truncated));
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(decode_model(&long, &job), Err(ModelBlobError::Trailing(1)));
        assert!(decode_model(&bytes[..bytes.len() - 1], &job).is_err());
        let mut wrong = bytes.clone();
        wrong[0] = 7;
        assert!(matches!(
            decode_model(&wrong, &job),
            Err(ModelBlobError::Count { count: 7, .. })
        ));
    }
}
