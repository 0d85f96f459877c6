//! Every WGSL kernel on a native Vulkan device (lavapipe in CI) against the CPU
//! reference: the prover's known-answer suite must come out exact, case by case, and a
//! real task's steps must give the reference's trace.
#![cfg(feature = "gpu")]

use ed25519_dalek::SigningKey;
use lupus_prover::kat::{DeviceClass, EXPECTED, check_device, run_suite, to_hex};
use lupus_worker::gpu::{GpuDevice, Layout, run_suite_gpu};

/// A reference `det` function.
type ScalarFn = fn(f32) -> f32;

fn device() -> GpuDevice {
    match pollster::block_on(GpuDevice::new()) {
        Ok(d) => d,
        Err(e) => panic!("{e}: install mesa-vulkan-drivers (lavapipe) to run the kernel tests"),
    }
}

#[test]
fn known_answer_suite_is_exact_on_the_device() {
    let mut dev = device();
    println!("device: {}", dev.description);
    let cpu = run_suite();
    // Both kernel layouts, whichever this adapter would pick.
    for layout in [Layout::Cpu, Layout::Gpu] {
        dev.layout = layout;
        let gpu = pollster::block_on(run_suite_gpu(&dev));
        let mut differ = Vec::new();
        for (name, _) in EXPECTED {
            let g = gpu
                .iter()
                .find(|r| r.name == *name)
                .map(|r| to_hex(&r.hash));
            let c = cpu
                .iter()
                .find(|r| r.name == *name)
                .map(|r| to_hex(&r.hash));
            if g != c {
                differ.push(*name);
            }
        }
        assert!(
            differ.is_empty(),
            "{layout:?} layout: cases that differ from the CPU reference: {differ:?}"
        );
        assert_eq!(check_device(&gpu), DeviceClass::Exact);
    }
    let subnormals = pollster::block_on(lupus_worker::gpu::keeps_subnormals(&dev)).unwrap();
    assert!(subnormals, "an exact device keeps subnormal intermediates");
}

/// Each `det` function, element by element, over edge cases and dense sweeps: a
/// mismatch names the first inputs that differ (the suite's hash only says "differs").
#[test]
fn det_functions_match_element_by_element() {
    use lupus_prover::det;
    use lupus_worker::gpu::{DetFn, det_on_device};
    let dev = device();
    let mut xs: Vec<f32> = vec![
        0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 1e-40, 88.0, 88.5, -87.34, -87.33,
    ];
    xs.extend((0..20_000).map(|i| -90.0 + 180.0 * (i as f32 / 20_000.0)));
    xs.extend((0u32..0x7f80_0000).step_by(0x0001_0f01).map(f32::from_bits));
    let cases: [(DetFn, ScalarFn); 7] = [
        (DetFn::Exp, det::exp),
        (DetFn::Ln, det::ln),
        (DetFn::Reciprocal, det::reciprocal),
        (DetFn::Rsqrt, det::rsqrt),
        (DetFn::Sqrt, det::sqrt),
        (DetFn::RoundNe, det::round_ne),
        (DetFn::Ftz, det::ftz),
    ];
    let mut report = Vec::new();
    for (f, reference) in cases {
        let got = pollster::block_on(det_on_device(&dev, f, &xs)).expect("dispatch");
        let bad: Vec<String> = xs
            .iter()
            .zip(&got)
            .filter(|(x, y)| det::canonical_bits(reference(**x)) != det::canonical_bits(**y))
            .map(|(x, y)| format!("{x:e}: gpu {y:e}, cpu {:e}", reference(*x)))
            .collect();
        if !bad.is_empty() {
            let first: Vec<&String> = bad.iter().take(3).chain(bad.iter().rev().take(3)).collect();
            report.push(format!(
                "{f:?}: {} of {} differ, first and last: {first:?}",
                bad.len(),
                xs.len()
            ));
        }
    }
    assert!(report.is_empty(), "{report:#?}");
}

/// A whole task of the tiny job trained on the device commits the same trace as the CPU
/// reference: same trace root, same final state, same delta.
#[test]
fn a_task_on_the_device_commits_the_reference_trace() {
    use lupus_prover::data::Corpus;
    use lupus_prover::model::init_params;
    use lupus_prover::spec::JobSpec;
    use lupus_prover::task::{TaskBuilder, run_task};
    use lupus_worker::gpu::train_step_gpu;
    let dev = device();
    let job = JobSpec::parse(include_str!("../../jobs/tiny-test.toml")).unwrap();
    let corpus = Corpus::generated(3, 20_000);
    let base = init_params(&job.model, [2; 32]).unwrap();
    let seed = [4; 32];
    let cpu = run_task(&job, &corpus, &base, seed, &mut |_, _| {}).unwrap();
    let mut b = TaskBuilder::new(&job, &corpus, &base, seed).unwrap();
    for _ in 0..job.inner.steps {
        let batch = b.batch().unwrap();
        let out = pollster::block_on(train_step_gpu(
            &dev,
            &job.model,
            &job.inner.adamw(),
            b.state(),
            &batch,
        ))
        .unwrap();
        b.record(&batch, out).unwrap();
    }
    let gpu = b.finish().unwrap();
    assert_eq!(gpu.commitment, cpu.commitment);
    assert_eq!(gpu.losses, cpu.losses);
}

/// Deterministic test bytes.
fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .rotate_left(seed as u32) as u8
                ^ seed
        })
        .collect()
}

/// The WGSL BLAKE3 gives the `blake3` crate's digests in every mode, at every length
/// that moves a boundary (blocks, chunks, tree levels, a partial last word), for
/// messages that start with header words, all hashed in one go.
#[test]
fn device_blake3_matches_the_blake3_crate() {
    use lupus_worker::gpu::{Blake3Mode, blake3_on_device};
    let dev = device();
    let lengths = [
        0usize,
        1,
        3,
        4,
        63,
        64,
        65,
        127,
        1023,
        1024,
        1025,
        2048,
        2049,
        3073,
        4096,
        5 * 1024 + 7,
        (1 << 20) + 5,
    ];
    let mut messages: Vec<(Vec<u32>, Vec<u8>)> = Vec::new();
    for (i, &n) in lengths.iter().enumerate() {
        messages.push((Vec::new(), bytes(n, i as u8)));
        // A header of 1, 3 or 9 words before the data (a tensor's rank and dims).
        let header: Vec<u32> = (0..[1, 3, 9][i % 3]).map(|k| 0x0101_0101 * k + 7).collect();
        messages.push((header, bytes(n, 100 + i as u8)));
    }
    let expect = |header: &[u32], data: &[u8], h: &mut blake3::Hasher| {
        for w in header {
            h.update(&w.to_le_bytes());
        }
        h.update(data);
        *h.finalize().as_bytes()
    };
    let key = [7u8; 32];
    let modes: [(Blake3Mode<'_>, Box<dyn Fn() -> blake3::Hasher>); 3] = [
        (Blake3Mode::Hash, Box::new(blake3::Hasher::new)),
        (
            Blake3Mode::Keyed(&key),
            Box::new(move || blake3::Hasher::new_keyed(&key)),
        ),
        (
            Blake3Mode::DeriveKey("lupus tensor v1"),
            Box::new(|| blake3::Hasher::new_derive_key("lupus tensor v1")),
        ),
    ];
    for (mode, hasher) in modes {
        let got = pollster::block_on(blake3_on_device(&dev, &messages, mode)).unwrap();
        assert_eq!(got.len(), messages.len());
        for ((header, data), g) in messages.iter().zip(&got) {
            assert_eq!(
                *g,
                expect(header, data, &mut hasher()),
                "{mode:?}, {} header words, {} bytes",
                header.len(),
                data.len()
            );
        }
    }
}

/// `Tensor::hash` on the device, canonicalisation included: a subnormal hashes as the
/// zero of its sign, -0 stays distinct from +0, and a NaN is an error, not a digest.
#[test]
fn device_tensor_hash_is_tensor_hash() {
    use lupus_prover::tensor::Tensor;
    use lupus_worker::gpu::{GpuError, tensor_hashes_on_device};
    let dev = device();
    let big: Vec<f32> = (0..70_000).map(|i| (i as f32 * 0.37).sin()).collect();
    let cases: Vec<(Vec<usize>, Vec<f32>)> = vec![
        (vec![1], vec![0.0]),
        (vec![1], vec![-0.0]),
        (vec![3], vec![1e-40, -1e-40, 2.0]),
        (
            vec![2, 3, 4, 5],
            (0..120).map(|i| i as f32 - 60.5).collect(),
        ),
        (vec![70_000], big.clone()),
        (vec![350, 200], big[..70_000].to_vec()),
    ];
    let data: Vec<&[f32]> = cases.iter().map(|(_, d)| d.as_slice()).collect();
    let shapes: Vec<&[usize]> = cases.iter().map(|(s, _)| s.as_slice()).collect();
    let got = pollster::block_on(tensor_hashes_on_device(&dev, &data, &shapes)).unwrap();
    for ((shape, d), g) in cases.iter().zip(&got) {
        let t = Tensor::new(shape.clone(), d.clone()).unwrap();
        assert_eq!(*g, t.hash(), "shape {shape:?}");
    }
    assert_ne!(got[0], got[1]);
    let nan = pollster::block_on(tensor_hashes_on_device(&dev, &[&[1.0, f32::NAN]], &[&[2]]));
    assert_eq!(nan, Err(GpuError::NonFinite));
}

/// `steps` whole steps on the device commit what the CPU reference's `run_step`
/// commits: every leaf and op commit (so the trace root), the checkpoints (read back
/// only when due), the final state and the delta; an opening of a step between
/// checkpoints (replayed on the CPU) is the reference's.
fn whole_steps_commit_the_reference(job_toml: &str, batch: u32, steps: u32, interval: u32) {
    use lupus_prover::data::Corpus;
    use lupus_prover::model::init_params;
    use lupus_prover::spec::JobSpec;
    use lupus_prover::task::TaskBuilder;
    use lupus_worker::gpu::{WholeStep, record_whole_step};
    let dev = device();
    let mut job = JobSpec::parse(job_toml).unwrap();
    job.inner.batch_size = batch;
    job.inner.steps = steps;
    job.inner.checkpoint_interval = interval;
    // A job's warm-up fits its task: the GPT's ramps over all the steps here, so the
    // device runs a different learning rate at each.
    job.inner.warmup_steps = job.inner.warmup_steps.min(steps);
    let corpus = Corpus::generated(3, 50_000);
    let base = init_params(&job.model, [2; 32]).unwrap();
    let seed = [4; 32];
    let mut cpu = TaskBuilder::new(&job, &corpus, &base, seed).unwrap();
    let mut gpu = TaskBuilder::new(&job, &corpus, &base, seed).unwrap();
    let mut whole = pollster::block_on(WholeStep::new(
        &dev,
        &job.model,
        &job.inner.adamw(),
        gpu.state(),
        &gpu.batch().unwrap(),
    ))
    .unwrap();
    for _ in 0..steps {
        let before = dev.transfers();
        let needs_state = gpu.needs_state();
        let loss = pollster::block_on(record_whole_step(&dev, &mut whole, &mut gpu)).unwrap();
        let t = dev.transfers().since(&before);
        // One read-back a step, two when the state is due.
        assert_eq!(t.reads, 1 + u64::from(needs_state));
        assert_eq!(loss.to_bits(), cpu.run_step().unwrap().to_bits());
    }
    let (cpu, gpu) = (cpu.finish().unwrap(), gpu.finish().unwrap());
    assert_eq!(gpu.leaves(), cpu.leaves());
    for t in 0..steps {
        assert_eq!(gpu.op_commits(t), cpu.op_commits(t), "step {t}");
    }
    assert_eq!(gpu.commitment, cpu.commitment);
    assert_eq!(gpu.final_state, cpu.final_state);
    assert_eq!(gpu.delta, cpu.delta);
    let challenged = [1, steps - 1];
    assert_eq!(
        gpu.open(
            &job,
            &corpus,
            &challenged,
            false,
            &SigningKey::from_bytes(&[7; 32])
        )
        .unwrap(),
        cpu.open(
            &job,
            &corpus,
            &challenged,
            false,
            &SigningKey::from_bytes(&[7; 32])
        )
        .unwrap()
    );
}

#[test]
fn whole_steps_of_the_tiny_job_commit_the_reference() {
    whole_steps_commit_the_reference(include_str!("../../jobs/tiny-test.toml"), 8, 8, 3);
}

#[test]
fn whole_steps_of_the_mlp_job_commit_the_reference() {
    whole_steps_commit_the_reference(include_str!("../../jobs/shakespeare-mlp.toml"), 32, 5, 2);
}

#[test]
fn whole_steps_of_the_gpt_job_commit_the_reference() {
    whole_steps_commit_the_reference(include_str!("../../jobs/shakespeare-gpt.toml"), 4, 4, 3);
}

/// The blocked matmuls at shapes that are not multiples of their blocks, in every
/// transposition and in both layouts, give the reference's bits (the edge blocks read
/// clamped indices and must store nothing past the edge).
#[test]
fn matmul_edges_match_the_reference() {
    use lupus_prover::ops::{OpKind, eval_op};
    use lupus_worker::gpu::eval_op_gpu;
    let mut dev = device();
    // Odd shapes take the scalar kernel, multiples of 4 a vector one: in the GPU
    // layout with half 8 x 8 blocks at the edge when not multiples of 8, in the CPU
    // layout with 8-row x 64-column workgroups cut at m and n.
    let shapes = [
        (1, 1, 1),
        (13, 7, 11),
        (9, 17, 8),
        (8, 3, 23),
        (70, 5, 3),
        (4, 4, 4),
        (12, 8, 20),
        (36, 12, 44),
        (16, 64, 8),
        (20, 8, 100),
        (4, 16, 132),
        (44, 4, 64),
    ];
    for layout in [Layout::Cpu, Layout::Gpu] {
        dev.layout = layout;
        for (m, k, n) in shapes {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let a = if ta { wave(k, m, 1.0) } else { wave(m, k, 1.0) };
                let b = if tb { wave(n, k, 2.0) } else { wave(k, n, 2.0) };
                let kind = OpKind::MatMul {
                    transpose_a: ta,
                    transpose_b: tb,
                };
                let cpu = eval_op(&kind, &[&a, &b]).unwrap();
                let gpu = pollster::block_on(eval_op_gpu(&dev, &kind, &[&a, &b])).unwrap();
                assert_eq!(gpu, cpu, "{layout:?} {m}x{k}x{n} ta {ta} tb {tb}");
            }
        }
    }
}

/// The attention products and the causal softmax at head widths and sequence lengths
/// that are and are not multiples of 4 (the vector kernels and the scalar ones) give
/// the reference's bits, forward and backward.
#[test]
fn attention_at_every_head_width_matches_the_reference() {
    use lupus_prover::ops::{OpKind, eval_op};
    use lupus_prover::tensor::Tensor;
    use lupus_worker::gpu::eval_op_gpu;
    let mut dev = device();
    // (batch, seq, heads, head width); the CPU layout's kernel takes a sequence length
    // that is a multiple of 4 with a head width that is a multiple of 16, with blocks
    // of 4 x 64 scores and 32 x 16 values cut at the sequence's end.
    let shapes = [
        (2, 5, 3, 4),
        (1, 7, 2, 3),
        (3, 4, 4, 8),
        (2, 9, 1, 16),
        (1, 3, 5, 1),
        (2, 8, 2, 16),
        (1, 12, 3, 32),
        (2, 36, 2, 16),
        (1, 68, 1, 16),
    ];
    for layout in [Layout::Cpu, Layout::Gpu] {
        dev.layout = layout;
        for (b, seq, heads, hd) in shapes {
            let width = heads * hd;
            let (q, k, v) = (
                wave(b * seq, width, 1.0),
                wave(b * seq, width, 2.0),
                wave(b * seq, width, 3.0),
            );
            let same = |kind: &OpKind, inputs: &[&Tensor]| {
                let cpu = eval_op(kind, inputs).unwrap();
                let gpu = pollster::block_on(eval_op_gpu(&dev, kind, inputs)).unwrap();
                assert_eq!(
                    gpu,
                    cpu,
                    "{layout:?} {} at b {b} seq {seq} heads {heads} hd {hd}",
                    kind.name()
                );
                cpu
            };
            let s = same(&OpKind::AttentionScores { heads, seq }, &[&q, &k]);
            // The causal softmax, forward and backward, between them (rows four
            // floats at a time where seq is a multiple of 4).
            let p = same(&OpKind::CausalSoftmax { seq }, &[&s[0]]);
            same(
                &OpKind::CausalSoftmaxBackward { seq },
                &[&p[0], &wave(b * heads * seq, seq, 6.0)],
            );
            same(&OpKind::AttentionValues { heads, seq }, &[&p[0], &v]);
            let dout = wave(b * seq, width, 4.0);
            same(
                &OpKind::AttentionValuesBackward { heads, seq },
                &[&p[0], &v, &dout],
            );
            let ds = wave(b * heads * seq, seq, 5.0);
            same(
                &OpKind::AttentionScoresBackward { heads, seq },
                &[&q, &k, &ds],
            );
        }
    }
}

/// The elementwise operators at shapes whose element and column counts are and are
/// not multiples of 4 (the vector kernel and the scalar one) give the reference's bits.
#[test]
fn elementwise_at_every_width_matches_the_reference() {
    use lupus_prover::ops::{OpKind, eval_op};
    use lupus_prover::tensor::Tensor;
    use lupus_worker::gpu::eval_op_gpu;
    let dev = device();
    for (r, c) in [(3, 4), (5, 7), (2, 6), (8, 16), (1, 1), (6, 2)] {
        let (x, y) = (wave(r, c, 1.0), wave(r, c, 2.0));
        let same = |kind: &OpKind, inputs: &[&Tensor]| {
            let cpu = eval_op(kind, inputs).unwrap();
            let gpu = pollster::block_on(eval_op_gpu(&dev, kind, inputs)).unwrap();
            assert_eq!(gpu, cpu, "{} at {r} x {c}", kind.name());
        };
        same(&OpKind::Add, &[&x, &y]);
        same(&OpKind::Relu, &[&x]);
        same(&OpKind::ReluBackward, &[&x, &y]);
        same(
            &OpKind::AddBias,
            &[&x, &wave(1, c, 3.0).reshape(vec![c]).unwrap()],
        );
        for seq in [1, r] {
            if r % seq == 0 {
                same(&OpKind::AddPosition { seq }, &[&x, &wave(r + 1, c, 4.0)]);
            }
        }
    }
}

/// An `r x c` test tensor: a sine wave over the elements, shifted by `seed`.
fn wave(r: usize, c: usize, seed: f32) -> lupus_prover::tensor::Tensor {
    let data = (0..r * c)
        .map(|i| ((i as f32 + seed) * 0.731).sin())
        .collect();
    lupus_prover::tensor::Tensor::new(vec![r, c], data).unwrap()
}

/// Layer normalisation and its gradients at column counts that are and are not
/// multiples of 4, below and above one CPU-layout workgroup's 32 columns, in both
/// layouts, give the reference's bits.
#[test]
fn layer_norm_at_every_width_matches_the_reference() {
    use lupus_prover::ops::{OpKind, eval_op};
    use lupus_prover::tensor::Tensor;
    use lupus_worker::gpu::eval_op_gpu;
    let mut dev = device();
    for layout in [Layout::Cpu, Layout::Gpu] {
        dev.layout = layout;
        for (r, c) in [(5, 24), (3, 6), (7, 68), (9, 128), (2, 4)] {
            let same = |kind: &OpKind, inputs: &[&Tensor]| {
                let cpu = eval_op(kind, inputs).unwrap();
                let gpu = pollster::block_on(eval_op_gpu(&dev, kind, inputs)).unwrap();
                assert_eq!(gpu, cpu, "{layout:?} {} at {r} x {c}", kind.name());
                cpu
            };
            let x = wave(r, c, 1.0);
            let gamma = wave(1, c, 2.0).reshape(vec![c]).unwrap();
            let beta = wave(1, c, 3.0).reshape(vec![c]).unwrap();
            let stats = same(&OpKind::LayerNorm { eps: 1e-5 }, &[&x, &gamma, &beta]);
            same(
                &OpKind::LayerNormBackward,
                &[&x, &gamma, &stats[1], &stats[2], &wave(r, c, 4.0)],
            );
        }
    }
}
