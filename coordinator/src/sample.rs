//! Text from a trained character MLP: a plain forward pass (embedding, ReLU layers,
//! logits) and sampling at a temperature from a seeded PRF stream. Display only: this
//! is not a verified computation, so it uses ordinary float code.

use lupus_prover::data::Alphabet;
use lupus_prover::model::ModelSpec;
use lupus_prover::prf::PrfStream;
use lupus_prover::tensor::Tensor;

/// `len` characters continuing `prompt`, or `None` for a model that is not an MLP.
pub fn generate(
    spec: &ModelSpec,
    params: &[Tensor],
    prompt: &str,
    len: usize,
    seed: u64,
) -> Option<String> {
    let ModelSpec::Mlp {
        vocab,
        context,
        embed,
        hidden,
    } = spec
    else {
        return None;
    };
    let (v, c, e) = (*vocab, *context, *embed);
    let mut ids: Vec<usize> = prompt
        .bytes()
        .filter_map(|b| Alphabet::id(b).map(usize::from))
        .collect();
    let mut window: Vec<usize> = vec![1; c]; // spaces
    for id in &ids {
        window.remove(0);
        window.push(*id);
    }
    let mut stream = PrfStream::new(&[7; 32], "lupus sample v1", &seed.to_le_bytes());
    let table = params.first()?.data();
    for _ in 0..len {
        let mut x: Vec<f32> = Vec::with_capacity(c * e);
        for &id in &window {
            x.extend_from_slice(table.get(id * e..(id + 1) * e)?);
        }
        let mut p = 1;
        for &h in hidden {
            x = dense(
                &x,
                params.get(p)?.data(),
                params.get(p + 1)?.data(),
                h,
                true,
            );
            p += 2;
        }
        let logits = dense(
            &x,
            params.get(p)?.data(),
            params.get(p + 1)?.data(),
            v,
            false,
        );
        let t = 0.8f32;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let w: Vec<f64> = logits
            .iter()
            .map(|l| f64::from((l - max) / t).exp())
            .collect();
        let total: f64 = w.iter().sum();
        let u = (stream.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
        let mut acc = 0.0;
        let mut next = v - 1;
        for (i, wi) in w.iter().enumerate() {
            acc += wi;
            if u < acc {
                next = i;
                break;
            }
        }
        ids.push(next);
        window.remove(0);
        window.push(next);
    }
    let tail: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
    Some(Alphabet::decode(&tail))
}

fn dense(x: &[f32], w: &[f32], b: &[f32], out: usize, relu: bool) -> Vec<f32> {
    let mut y: Vec<f32> = b.to_vec();
    y.resize(out, 0.0);
    for (i, xi) in x.iter().enumerate() {
        if let Some(row) = w.get(i * out..(i + 1) * out) {
            for (yj, wij) in y.iter_mut().zip(row) {
                *yj += xi * wij;
            }
        }
    }
    if relu {
        y.iter_mut().for_each(|v| *v = v.max(0.0));
    }
    y
}
