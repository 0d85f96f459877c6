//! The training data: normalisation, the dataset commitment, the split and batch sampling.
//!
//! DESIGN.md ("Model and data", "The loop" 2): the corpus is normalised once, committed by
//! a Merkle root in the genesis entry, split 90/10 into train and validation, and every
//! batch is drawn by `PRF(seed, step)` so anyone with the corpus rebuilds any batch.
//!
//! Normalisation ([`Alphabet::normalise`]), in order:
//! 1. `"\r\n"` and `"\r"` become `"\n"`; a tab becomes a space; the typographic quotes
//!    `‘ ’ “ ”` become `' ' " "`, the dashes `– —` become `-`, a no-break space a space.
//! 2. Any other character outside the alphabet (control characters, non-ASCII) is dropped.
//! 3. Runs of spaces collapse to one space; spaces before a newline are removed; more
//!    than two newlines in a row become two.
//!
//! The alphabet is 96 symbols: id 0 is `'\n'`, id 1 is `' '`, ids 2..=95 are the
//! printable ASCII characters `'!'..='~'` in byte order. A normalised corpus is pure
//! ASCII, so its bytes are the text.
//!
//! Dataset commitment ([`Corpus::commitment`]): the normalised bytes are cut into chunks
//! of `chunk_size` bytes (the last may be shorter); chunk `i`'s item is
//! `BLAKE3-keyed(K_"lupus data chunk v1", u64le(i) || bytes)`; the root is the Merkle root
//! ([`crate::merkle`]) of the items in order. Genesis records the root, the byte length
//! and the chunk size.
//!
//! Split: with `p = round(val_fraction * 1000)` per mille, chunk `i` is validation iff
//! `floor((i+1) p / 1000) > floor(i p / 1000)` (evenly spread, no key needed); the train
//! tokens are the train chunks concatenated in order, likewise the validation tokens.
//!
//! Batches ([`Sampler::batch`]): window `j` of step `t` starts at
//! `PrfStream(seed, "lupus batch v1", u64le(t)).below(n_train - window_len + 1)` (the
//! `j`-th draw of that stream) and is `window_len` consecutive train tokens.
//! The validation set is `count` windows at evenly spaced starts
//! `floor(i * (n_val - window_len) / max(count - 1, 1))`.

use std::num::NonZeroU64;

use crate::merkle::{Digest, MerkleError, root_of};
use crate::prf::{PrfStream, domain_hasher};

/// Data errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    #[error("the corpus is empty after normalisation")]
    EmptyCorpus,
    #[error("chunk_size must be at least 1")]
    ZeroChunkSize,
    #[error(
        "the {split} split has {tokens} tokens, fewer than one window of {window}: use a larger corpus or a smaller chunk_size/context"
    )]
    SplitTooSmall {
        split: &'static str,
        tokens: usize,
        window: usize,
    },
    #[error("val_fraction per mille must be in 1..=999, got {0}")]
    BadValFraction(u32),
    #[error("token id {0} is outside the 96-symbol alphabet")]
    BadToken(u32),
    #[error(transparent)]
    Merkle(#[from] MerkleError),
}

/// The fixed 96-symbol character set. See the module docs.
pub struct Alphabet;

impl Alphabet {
    /// Number of symbols; a model's `vocab` must equal it.
    pub const SIZE: usize = 96;

    /// The id of an alphabet character, `None` for any other character.
    pub fn id(c: u8) -> Option<u8> {
        match c {
            b'\n' => Some(0),
            b' ' => Some(1),
            b'!'..=b'~' => Some(c - b'!' + 2),
            _ => None,
        }
    }

    /// The character of an id, `None` when the id is out of range.
    pub fn char(id: u32) -> Option<char> {
        match id {
            0 => Some('\n'),
            1 => Some(' '),
            2..=95 => char::from_u32(id - 2 + u32::from(b'!')),
            _ => None,
        }
    }

    /// Decodes ids to text (out-of-range ids become `'?'`), for samples shown to people.
    pub fn decode(ids: &[u32]) -> String {
        ids.iter()
            .map(|&i| Alphabet::char(i).unwrap_or('?'))
            .collect()
    }

    /// Normalises text as the module docs say. The result is ASCII.
    pub fn normalise(text: &str) -> Vec<u8> {
        let mut out: Vec<u8> = Vec::with_capacity(text.len());
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            let mapped = match c {
                '\r' => {
                    if chars.peek() == Some(&'\n') {
                        chars.next();
                    }
                    b'\n'
                }
                '\t' | '\u{a0}' => b' ',
                '\u{2018}' | '\u{2019}' => b'\'',
                '\u{201c}' | '\u{201d}' => b'"',
                '\u{2013}' | '\u{2014}' => b'-',
                c if c.is_ascii() && Alphabet::id(c as u8).is_some() => c as u8,
                _ => continue,
            };
            match mapped {
                b' ' if matches!(out.last(), Some(b' ')) => {}
                b'\n' => {
                    while out.last() == Some(&b' ') {
                        out.pop();
                    }
                    let n = out.iter().rev().take_while(|&&b| b == b'\n').count();
                    if n < 2 {
                        out.push(b'\n');
                    }
                }
                b => out.push(b),
            }
        }
        out
    }
}

/// A normalised corpus: ASCII bytes in the alphabet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Corpus {
    bytes: Vec<u8>,
}

/// What genesis commits about the data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DatasetCommitment {
    /// Merkle root over the chunk items.
    pub root: Digest,
    /// Length of the normalised corpus in bytes.
    pub len: u64,
    /// Chunk size in bytes.
    pub chunk_size: u32,
}

impl Corpus {
    /// Normalises `text`.
    pub fn from_text(text: &str) -> Corpus {
        Corpus {
            bytes: Alphabet::normalise(text),
        }
    }

    /// A small synthetic corpus with learnable structure (sentences of a tiny grammar),
    /// for tests: `len` bytes, deterministic in `seed`.
    pub fn generated(seed: u64, len: usize) -> Corpus {
        const SUBJECTS: [&str; 6] = [
            "the king",
            "a fool",
            "my lord",
            "the queen",
            "good sir",
            "thy son",
        ];
        const VERBS: [&str; 5] = ["loves", "sees", "fears", "speaks to", "serves"];
        const OBJECTS: [&str; 6] = [
            "the crown",
            "her",
            "the sea",
            "his father",
            "no man",
            "the night",
        ];
        const ENDS: [&str; 3] = [".\n", "!\n", ", and "];
        let mut s = PrfStream::new(&[0; 32], "lupus generated corpus v1", &seed.to_le_bytes());
        let mut pick =
            |n: usize| s.below(NonZeroU64::new(n as u64).unwrap_or(NonZeroU64::MIN)) as usize;
        let mut text = String::with_capacity(len + 64);
        while text.len() < len {
            for part in [
                SUBJECTS[pick(SUBJECTS.len())],
                " ",
                VERBS[pick(VERBS.len())],
                " ",
                OBJECTS[pick(OBJECTS.len())],
                ENDS[pick(ENDS.len())],
            ] {
                text.push_str(part);
            }
        }
        text.truncate(len);
        Corpus {
            bytes: text.into_bytes(),
        }
    }

    /// The normalised bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Length in bytes (= tokens).
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// True for an empty corpus.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The dataset commitment over `chunk_size`-byte chunks.
    pub fn commitment(&self, chunk_size: u32) -> Result<DatasetCommitment, DataError> {
        if chunk_size == 0 {
            return Err(DataError::ZeroChunkSize);
        }
        if self.bytes.is_empty() {
            return Err(DataError::EmptyCorpus);
        }
        let items: Vec<Digest> = self
            .bytes
            .chunks(chunk_size as usize)
            .enumerate()
            .map(|(i, c)| {
                let mut h = domain_hasher("lupus data chunk v1");
                h.update(&(i as u64).to_le_bytes());
                h.update(c);
                h.finalize().into()
            })
            .collect();
        Ok(DatasetCommitment {
            root: root_of(&items)?,
            len: self.bytes.len() as u64,
            chunk_size,
        })
    }

    /// Just the root of [`Corpus::commitment`].
    pub fn dataset_root(&self, chunk_size: u32) -> Result<Digest, DataError> {
        self.commitment(chunk_size).map(|c| c.root)
    }
}

/// True iff chunk `i` belongs to the validation split at `permille` per mille.
pub fn is_validation_chunk(i: u64, permille: u32) -> bool {
    let p = u64::from(permille);
    (i + 1) * p / 1000 > i * p / 1000
}

/// The split corpus and the batch sampler.
#[derive(Clone, Debug)]
pub struct Sampler {
    train: Vec<u32>,
    val: Vec<u32>,
    window: usize,
}

impl Sampler {
    /// Splits `corpus` into `chunk_size` chunks, `val_permille` per mille of them for
    /// validation, for windows of `window_len` tokens.
    pub fn new(
        corpus: &Corpus,
        chunk_size: u32,
        val_permille: u32,
        window_len: usize,
    ) -> Result<Sampler, DataError> {
        if chunk_size == 0 {
            return Err(DataError::ZeroChunkSize);
        }
        if !(1..=999).contains(&val_permille) {
            return Err(DataError::BadValFraction(val_permille));
        }
        let mut train = Vec::new();
        let mut val = Vec::new();
        for (i, c) in corpus.bytes.chunks(chunk_size as usize).enumerate() {
            let dst = if is_validation_chunk(i as u64, val_permille) {
                &mut val
            } else {
                &mut train
            };
            for &b in c {
                dst.push(u32::from(
                    Alphabet::id(b).ok_or(DataError::BadToken(u32::from(b)))?,
                ));
            }
        }
        for (split, tokens) in [("train", train.len()), ("validation", val.len())] {
            if tokens < window_len || window_len == 0 {
                return Err(DataError::SplitTooSmall {
                    split,
                    tokens,
                    window: window_len,
                });
            }
        }
        Ok(Sampler {
            train,
            val,
            window: window_len,
        })
    }

    /// Window length in tokens.
    pub fn window_len(&self) -> usize {
        self.window
    }

    /// Train tokens.
    pub fn train_len(&self) -> usize {
        self.train.len()
    }

    /// The `batch_size` windows of step `step` for task seed `seed`.
    pub fn batch(&self, seed: &[u8; 32], step: u32, batch_size: usize) -> Vec<Vec<u32>> {
        let mut s = PrfStream::new(seed, "lupus batch v1", &u64::from(step).to_le_bytes());
        // `new` guarantees train.len() >= window, so the bound is at least 1.
        let starts =
            NonZeroU64::new((self.train.len() - self.window + 1) as u64).unwrap_or(NonZeroU64::MIN);
        (0..batch_size)
            .map(|_| {
                let a = s.below(starts) as usize;
                self.train
                    .get(a..a + self.window)
                    .unwrap_or_default()
                    .to_vec()
            })
            .collect()
    }

    /// `count` evenly spaced validation windows (the fixed validation set).
    pub fn validation(&self, count: usize) -> Vec<Vec<u32>> {
        let span = self.val.len() - self.window;
        let denom = count.saturating_sub(1).max(1);
        (0..count)
            .map(|i| {
                let a = i * span / denom;
                self.val
                    .get(a..a + self.window)
                    .unwrap_or_default()
                    .to_vec()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alphabet_round_trips_and_has_96_symbols() {
        let ids: Vec<u32> = (0..=255u8)
            .filter_map(Alphabet::id)
            .map(u32::from)
            .collect();
        assert_eq!(ids.len(), Alphabet::SIZE);
        assert_eq!(ids.iter().max(), Some(&95));
        for id in 0..96 {
            let c = Alphabet::char(id).unwrap();
            assert_eq!(Alphabet::id(c as u8), Some(id as u8));
        }
        assert_eq!(Alphabet::char(96), None);
    }

    #[test]
    fn normalisation_follows_the_rules() {
        let n = Alphabet::normalise("a\r\nb\rc\t d  \n\n\n\n“x”—é\u{7}  \ny");
        assert_eq!(n, b"a\nb\nc d\n\n\"x\"-\ny");
    }

    #[test]
    fn commitment_depends_on_every_byte_and_chunking() {
        let c = Corpus::generated(1, 1000);
        let r = c.dataset_root(64).unwrap();
        let mut other = c.clone();
        other.bytes[999] = b'#';
        assert_ne!(r, other.dataset_root(64).unwrap());
        assert_ne!(r, c.dataset_root(65).unwrap());
        assert_eq!(c.dataset_root(0), Err(DataError::ZeroChunkSize));
        assert_eq!(
            Corpus::from_text("\u{1}").commitment(4),
            Err(DataError::EmptyCorpus)
        );
    }

    #[test]
    fn split_is_ten_percent_and_batches_are_reproducible() {
        let c = Corpus::generated(2, 100_000);
        assert_eq!(
            (0..100).filter(|&i| is_validation_chunk(i, 100)).count(),
            10
        );
        let s = Sampler::new(&c, 1000, 100, 17).unwrap();
        assert_eq!(s.train_len(), 90_000);
        let b = s.batch(&[1; 32], 3, 8);
        assert_eq!(b.len(), 8);
        assert!(b.iter().all(|w| w.len() == 17 && w.iter().all(|&t| t < 96)));
        assert_eq!(b, s.batch(&[1; 32], 3, 8));
        assert_ne!(b, s.batch(&[1; 32], 4, 8));
        assert_ne!(b, s.batch(&[2; 32], 3, 8));
        let v = s.validation(5);
        assert_eq!(v.len(), 5);
        assert!(v.iter().all(|w| w.len() == 17));
    }

    #[test]
    fn tiny_splits_are_errors() {
        let c = Corpus::generated(2, 100);
        assert!(matches!(
            Sampler::new(&c, 10, 100, 17),
            Err(DataError::SplitTooSmall {
                split: "validation",
                ..
            })
        ));
        assert_eq!(
            Sampler::new(&c, 10, 0, 2).err(),
            Some(DataError::BadValFraction(0))
        );
    }
}
