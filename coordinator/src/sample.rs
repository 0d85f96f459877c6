//! Text from a trained character model, sampled at a temperature from a seeded PRF
//! stream: for the MLP a plain float forward pass (embedding, ReLU layers, logits), for
//! the GPT the prover's own forward pass (`lupus_prover::graph::logits`). Display
//! only: nothing here is verified.

use lupus_prover::data::Alphabet;
use lupus_prover::model::{ModelSpec, make_batch};
use lupus_prover::prf::PrfStream;
use lupus_prover::tensor::Tensor;

/// `len` characters continuing `prompt` (the model's own forward for the GPT, a plain
/// float forward for the MLP), or `None` if the parameters do not fit the model.
pub fn generate(
    spec: &ModelSpec,
    params: &[Tensor],
    prompt: &str,
    len: usize,
    seed: u64,
) -> Option<String> {
    let c = spec.context();
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
    for _ in 0..len {
        let logits = match spec {
            ModelSpec::Mlp { .. } => mlp_logits(spec, params, &window)?,
            ModelSpec::Gpt { .. } => gpt_logits(spec, params, &window)?,
        };
        let next = draw(&logits, &mut stream);
        ids.push(next);
        window.remove(0);
        window.push(next);
    }
    let tail: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
    Some(Alphabet::decode(&tail))
}

/// A token drawn from `logits` at temperature 0.8.
fn draw(logits: &[f32], stream: &mut PrfStream) -> usize {
    let t = 0.8f32;
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let w: Vec<f64> = logits
        .iter()
        .map(|l| f64::from((l - max) / t).exp())
        .collect();
    let total: f64 = w.iter().sum();
    let u = (stream.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
    let mut acc = 0.0;
    for (i, wi) in w.iter().enumerate() {
        acc += wi;
        if u < acc {
            return i;
        }
    }
    logits.len().saturating_sub(1)
}

/// The GPT's logits for the token after `window`: its last position's row, from the
/// prover's own forward pass (the same kernels as training).
fn gpt_logits(spec: &ModelSpec, params: &[Tensor], window: &[usize]) -> Option<Vec<f32>> {
    let v = spec.vocab();
    let mut win: Vec<u32> = window.iter().map(|&i| i as u32).collect();
    win.push(1); // a target the forward pass does not read
    let batch = make_batch(spec, &[win]).ok()?;
    let logits = lupus_prover::graph::logits(spec, params, &batch).ok()?;
    let last = window.len().checked_sub(1)?;
    logits
        .data()
        .get(last * v..(last + 1) * v)
        .map(<[f32]>::to_vec)
}

/// The MLP's logits for the token after `window` (embedding, ReLU layers, logits).
fn mlp_logits(spec: &ModelSpec, params: &[Tensor], window: &[usize]) -> Option<Vec<f32>> {
    let ModelSpec::Mlp {
        vocab,
        embed,
        hidden,
        ..
    } = spec
    else {
        return None;
    };
    let (v, e) = (*vocab, *embed);
    let table = params.first()?.data();
    let mut x: Vec<f32> = Vec::with_capacity(window.len() * e);
    for &id in window {
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
    Some(dense(
        &x,
        params.get(p)?.data(),
        params.get(p + 1)?.data(),
        v,
        false,
    ))
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

#[cfg(test)]
mod tests {
    use super::*;
    use lupus_prover::model::init_params;

    /// Both models sample: the prompt and then `len` characters, the same ones for the
    /// same seed, others for another seed.
    #[test]
    fn both_models_continue_a_prompt() {
        let gpt = ModelSpec::Gpt {
            vocab: 96,
            context: 8,
            d_model: 8,
            heads: 2,
            layers: 1,
            d_ff: 16,
        };
        let mlp = ModelSpec::Mlp {
            vocab: 96,
            context: 8,
            embed: 4,
            hidden: vec![8],
        };
        for spec in [gpt, mlp] {
            let params = init_params(&spec, [5; 32]).unwrap();
            let a = generate(&spec, &params, "ROMEO:", 40, 1).unwrap();
            assert!(a.starts_with("ROMEO:"), "{a:?}");
            assert_eq!(a.len(), "ROMEO:".len() + 40, "{spec:?}: {a:?}");
            assert_eq!(generate(&spec, &params, "ROMEO:", 40, 1).unwrap(), a);
            assert_ne!(generate(&spec, &params, "ROMEO:", 40, 2).unwrap(), a);
        }
    }
}
