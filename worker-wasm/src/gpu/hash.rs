//! BLAKE3 on the device: the trace's tensor hashes `T(x)` where the tensors are.
//!
//! `wgsl/blake3.wgsl` hashes many messages in one go: one thread per 1 KiB chunk of
//! every message, then one pass per tree level over the chaining values, BLAKE3's own
//! tree, so each digest is the `blake3` crate's to the bit. A message is a few header
//! words followed by a region of a data buffer, which is how a tensor hash reads:
//! `u32 rank || u64 dims` (built on the host, it is in the descriptor) then the
//! tensor's f32 words, canonicalised by the kernel as `Tensor::hash` does. Only the 32-byte
//! digests need to come back.
//!
//! [`HashProgram`] is everything fixed about hashing a set of regions (descriptors,
//! the thread tables, chaining-value buffers, bind groups), built once and encoded
//! into each step's compute pass; [`blake3_on_device`] and [`tensor_hashes_on_device`]
//! run one for tests.

use lupus_prover::tensor::Tensor;

use super::device::{GpuDevice, GpuError, Kernel, Pass, workgroups};

pub(crate) const BLAKE3: Kernel = Kernel {
    name: "blake3",
    source: include_str!("wgsl/blake3.wgsl"),
    inputs: 3,
    outputs: 4,
};

const CHUNK_LEN: u64 = 1024;
const DESC_WORDS: usize = 16;
/// Header words a descriptor holds: `u32 rank || u64 dims` for rank up to 4.
pub(crate) const MAX_HEADER_WORDS: usize = 9;

const IV: [u32; 8] = [
    0x6A09_E667,
    0xBB67_AE85,
    0x3C6E_F372,
    0xA54F_F53A,
    0x510E_527F,
    0x9B05_688C,
    0x1F83_D9AB,
    0x5BE0_CD19,
];
const CHUNK_START: u32 = 1;
const CHUNK_END: u32 = 2;
const ROOT: u32 = 8;
const KEYED_HASH: u32 = 16;
const DERIVE_KEY_CONTEXT: u32 = 32;
const DERIVE_KEY_MATERIAL: u32 = 64;
const MSG_PERMUTATION: [usize; 16] = [2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8];

/// The BLAKE3 compression function (first 8 output words), as the specification
/// writes it: the host needs it once per task, for the derive-key context key.
fn compress(cv: &[u32; 8], m: &[u32; 16], counter: u64, len: u32, flags: u32) -> [u32; 8] {
    let mut v = [
        cv[0],
        cv[1],
        cv[2],
        cv[3],
        cv[4],
        cv[5],
        cv[6],
        cv[7],
        IV[0],
        IV[1],
        IV[2],
        IV[3],
        counter as u32,
        (counter >> 32) as u32,
        len,
        flags,
    ];
    let mut m = *m;
    let g = |v: &mut [u32; 16], a: usize, b: usize, c: usize, d: usize, x: u32, y: u32| {
        v[a] = v[a].wrapping_add(v[b]).wrapping_add(x);
        v[d] = (v[d] ^ v[a]).rotate_right(16);
        v[c] = v[c].wrapping_add(v[d]);
        v[b] = (v[b] ^ v[c]).rotate_right(12);
        v[a] = v[a].wrapping_add(v[b]).wrapping_add(y);
        v[d] = (v[d] ^ v[a]).rotate_right(8);
        v[c] = v[c].wrapping_add(v[d]);
        v[b] = (v[b] ^ v[c]).rotate_right(7);
    };
    for _ in 0..7 {
        g(&mut v, 0, 4, 8, 12, m[0], m[1]);
        g(&mut v, 1, 5, 9, 13, m[2], m[3]);
        g(&mut v, 2, 6, 10, 14, m[4], m[5]);
        g(&mut v, 3, 7, 11, 15, m[6], m[7]);
        g(&mut v, 0, 5, 10, 15, m[8], m[9]);
        g(&mut v, 1, 6, 11, 12, m[10], m[11]);
        g(&mut v, 2, 7, 8, 13, m[12], m[13]);
        g(&mut v, 3, 4, 9, 14, m[14], m[15]);
        m = MSG_PERMUTATION.map(|i| m[i]);
    }
    std::array::from_fn(|i| v[i] ^ v[i + 8])
}

fn words_le(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks(4)
        .map(|c| {
            let mut w = [0u8; 4];
            w[..c.len()].copy_from_slice(c);
            u32::from_le_bytes(w)
        })
        .collect()
}

/// Which BLAKE3 function the device computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blake3Mode<'a> {
    /// `blake3::hash`.
    Hash,
    /// `blake3::keyed_hash(key, ..)`.
    Keyed(&'a [u8; 32]),
    /// `blake3::derive_key(context, ..)`, for contexts of at most 64 bytes.
    DeriveKey(&'a str),
}

impl Blake3Mode<'_> {
    /// The key words and the flags every compression of the message carries.
    fn key_and_flags(&self) -> Result<([u32; 8], u32), GpuError> {
        Ok(match self {
            Blake3Mode::Hash => (IV, 0),
            Blake3Mode::Keyed(key) => {
                let w = words_le(&key[..]);
                (std::array::from_fn(|i| w[i]), KEYED_HASH)
            }
            Blake3Mode::DeriveKey(context) => {
                // The context key is BLAKE3 of the context in DERIVE_KEY_CONTEXT mode: one
                // block of one chunk for a context of at most 64 bytes.
                let bytes = context.as_bytes();
                if bytes.len() > 64 {
                    return Err(GpuError::Shape {
                        op: "blake3",
                        detail: "derive-key contexts longer than 64 bytes are not supported".into(),
                    });
                }
                let mut block = [0u32; 16];
                for (dst, w) in block.iter_mut().zip(words_le(bytes)) {
                    *dst = w;
                }
                let flags = CHUNK_START | CHUNK_END | ROOT | DERIVE_KEY_CONTEXT;
                (
                    compress(&IV, &block, 0, bytes.len() as u32, flags),
                    DERIVE_KEY_MATERIAL,
                )
            }
        })
    }
}

/// One message: `header` words, then `data_len` bytes of the data buffer from word
/// `data_word`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Message {
    pub data_word: u64,
    pub data_len: u64,
    pub header: Vec<u32>,
}

impl Message {
    /// `Tensor::hash`'s message for a tensor of `shape` whose f32 words start at
    /// `data_word`.
    pub(crate) fn tensor(shape: &[usize], data_word: u64) -> Result<Message, GpuError> {
        let mut header = vec![shape.len() as u32];
        for &d in shape {
            let d = d as u64;
            header.extend([d as u32, (d >> 32) as u32]);
        }
        if header.len() > MAX_HEADER_WORDS {
            return Err(GpuError::Shape {
                op: "blake3",
                detail: format!(
                    "tensors of rank {} are not hashed on the device",
                    shape.len()
                ),
            });
        }
        let n: u64 = shape.iter().map(|&d| d as u64).product();
        Ok(Message {
            data_word,
            data_len: 4 * n,
            header,
        })
    }
}

fn too_big(detail: String) -> GpuError {
    GpuError::Shape {
        op: "blake3",
        detail,
    }
}

/// Hashing a fixed set of messages of one data buffer, ready to encode.
pub(crate) struct HashProgram {
    passes: Vec<(wgpu::ComputePipeline, wgpu::BindGroup, (u32, u32))>,
    /// `8 * n` words: message `i`'s digest at words `8i..8i+8`.
    pub digests: wgpu::Buffer,
    /// One word, non-zero when a tensor word was NaN or infinite. Cleared by
    /// [`HashProgram::encode_clear`].
    pub status: wgpu::Buffer,
    /// The number of messages.
    pub n: usize,
    // Kept alive for the bind groups.
    _buffers: Vec<wgpu::Buffer>,
}

impl HashProgram {
    /// Plans the hashing of `messages` read from `data` (`canonical`: the data are f32
    /// tensor words, canonicalised and checked finite as `Tensor::hash` requires).
    pub(crate) fn new(
        dev: &GpuDevice,
        data: &wgpu::Buffer,
        messages: &[Message],
        mode: Blake3Mode<'_>,
        canonical: bool,
    ) -> Result<HashProgram, GpuError> {
        let (key, flags) = mode.key_and_flags()?;
        let mut desc = Vec::with_capacity(messages.len() * DESC_WORDS);
        let mut chunks: Vec<u64> = Vec::with_capacity(messages.len());
        let mut slots = 0u64;
        for m in messages {
            let total = 4 * m.header.len() as u64 + m.data_len;
            if m.header.len() > MAX_HEADER_WORDS
                || total > u64::from(u32::MAX)
                || m.data_word > u64::from(u32::MAX)
                || (canonical && m.data_len % 4 != 0)
            {
                return Err(too_big(format!(
                    "a message of {} header words and {} bytes",
                    m.header.len(),
                    m.data_len
                )));
            }
            let n_chunks = total.div_ceil(CHUNK_LEN).max(1);
            let mut d = [0u32; DESC_WORDS];
            d[0] = m.data_word as u32;
            d[1] = m.data_len as u32;
            d[2] = m.header.len() as u32;
            d[3] = n_chunks as u32;
            d[4] = slots as u32;
            d[5..5 + m.header.len()].copy_from_slice(&m.header);
            desc.extend(d);
            chunks.push(n_chunks);
            // Single-chunk messages go straight to their digest.
            if n_chunks > 1 {
                slots += n_chunks;
            }
        }
        // The thread tables: (message, chunk) for every chunk, then per level the
        // (message, node) pairs of messages with two or more nodes below.
        let mut table: Vec<u32> = Vec::new();
        let mut levels: Vec<(u32, u64, u32)> = Vec::new(); // (level, first word, threads)
        let mut level = 0u32;
        loop {
            let first = table.len() as u64;
            for (t, &n) in chunks.iter().enumerate() {
                let (count, active) = if level == 0 {
                    (n, true)
                } else {
                    let below = n.div_ceil(1 << (level - 1));
                    (below.div_ceil(2), below >= 2)
                };
                if active {
                    for j in 0..count {
                        table.extend([t as u32, j as u32]);
                    }
                }
            }
            let threads = (table.len() as u64 - first) / 2;
            if threads == 0 {
                break;
            }
            if threads > u64::from(u32::MAX) {
                return Err(too_big(format!("{threads} hashing threads in one pass")));
            }
            levels.push((level, first, threads as u32));
            level += 1;
        }
        let storage = wgpu::BufferUsages::STORAGE;
        let bytes_of = |w: &[u32]| -> Vec<u8> {
            if w.is_empty() {
                vec![0; 4]
            } else {
                w.iter().flat_map(|x| x.to_le_bytes()).collect()
            }
        };
        let desc_buf = dev.upload("blake3 descriptors", &bytes_of(&desc), storage);
        let table_buf = dev.upload("blake3 threads", &bytes_of(&table), storage);
        let cv_bytes = (32 * slots).max(4);
        let empty = |label: &str, size: u64, usage: wgpu::BufferUsages| {
            dev.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage,
                mapped_at_creation: false,
            })
        };
        let cv_a = empty("blake3 chaining values a", cv_bytes, storage);
        let cv_b = empty("blake3 chaining values b", cv_bytes, storage);
        let out_usage = storage | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
        let digests = empty(
            "blake3 digests",
            (32 * messages.len() as u64).max(4),
            out_usage,
        );
        let status = empty("blake3 status", 4, out_usage);
        let entries: Vec<&'static str> = vec!["chunks", "parents"];
        let compiled = dev.compiled(&BLAKE3, &entries);
        let align = dev.uniform_align;
        let params: Vec<u8> = levels
            .iter()
            .flat_map(|&(level, first, threads)| {
                let mut w = vec![first as u32, level, flags];
                w.extend(key);
                w.push(canonical as u32);
                let mut bytes = Pass::new("", threads as usize, &w).bytes();
                bytes.resize(align as usize, 0);
                bytes
            })
            .collect();
        let params_buf = dev.upload(
            "blake3 params",
            if params.is_empty() { &[0; 64] } else { &params },
            wgpu::BufferUsages::UNIFORM,
        );
        let mut passes = Vec::with_capacity(levels.len());
        for (i, &(level, _, threads)) in levels.iter().enumerate() {
            let entry = if level == 0 { "chunks" } else { "parents" };
            let pipeline =
                compiled
                    .pipelines
                    .get(entry)
                    .cloned()
                    .ok_or_else(|| GpuError::Kernel {
                        kernel: "blake3",
                        detail: format!("no entry point `{entry}`"),
                    })?;
            let group = dev.bind_group(
                &BLAKE3,
                &compiled,
                wgpu::BufferBinding {
                    buffer: &params_buf,
                    offset: i as u64 * align,
                    size: wgpu::BufferSize::new(64),
                },
                &[
                    data.as_entire_buffer_binding(),
                    desc_buf.as_entire_buffer_binding(),
                    table_buf.as_entire_buffer_binding(),
                    cv_a.as_entire_buffer_binding(),
                    cv_b.as_entire_buffer_binding(),
                    digests.as_entire_buffer_binding(),
                    status.as_entire_buffer_binding(),
                ],
            );
            passes.push((pipeline, group, workgroups(threads)));
        }
        Ok(HashProgram {
            passes,
            digests,
            status,
            n: messages.len(),
            _buffers: vec![desc_buf, table_buf, cv_a, cv_b, params_buf],
        })
    }

    /// The number of dispatches [`HashProgram::encode`] records.
    pub(crate) fn pass_count(&self) -> usize {
        self.passes.len()
    }

    /// Clears the status word (before the pass that hashes).
    pub(crate) fn encode_clear(&self, encoder: &mut wgpu::CommandEncoder) {
        encoder.clear_buffer(&self.status, 0, None);
    }

    /// Records the hashing passes: the chunk pass, then one pass per tree level.
    pub(crate) fn encode(&self, pass: &mut wgpu::ComputePass<'_>) {
        for i in 0..self.passes.len() {
            self.encode_one(pass, i);
        }
    }

    /// Records hashing pass `i` (0: the chunks, then the tree levels).
    pub(crate) fn encode_one(&self, pass: &mut wgpu::ComputePass<'_>, i: usize) {
        if let Some((pipeline, group, (gx, gy))) = self.passes.get(i) {
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, group, &[]);
            pass.dispatch_workgroups(*gx, *gy, 1);
        }
    }
}

/// Splits read-back bytes into 32-byte digests.
pub(crate) fn digests_of(bytes: &[u8], n: usize) -> Vec<[u8; 32]> {
    bytes
        .chunks_exact(32)
        .take(n)
        .map(|c| {
            let mut d = [0u8; 32];
            d.copy_from_slice(c);
            d
        })
        .collect()
}

/// Hashes `messages` (`header words`, `data bytes`) on the device: the `blake3`
/// crate's digests, for tests of the kernel.
pub async fn blake3_on_device(
    dev: &GpuDevice,
    messages: &[(Vec<u32>, Vec<u8>)],
    mode: Blake3Mode<'_>,
) -> Result<Vec<[u8; 32]>, GpuError> {
    let mut data = Vec::new();
    let mut list = Vec::with_capacity(messages.len());
    for (header, bytes) in messages {
        let data_word = data.len() as u64 / 4;
        data.extend_from_slice(bytes);
        data.resize(data.len().next_multiple_of(4), 0);
        list.push(Message {
            data_word,
            data_len: bytes.len() as u64,
            header: header.clone(),
        });
    }
    run_hash(dev, data, &list, mode, false).await
}

/// `Tensor::hash` of each tensor, computed on the device.
pub async fn tensor_hashes_on_device(
    dev: &GpuDevice,
    tensors: &[&[f32]],
    shapes: &[&[usize]],
) -> Result<Vec<[u8; 32]>, GpuError> {
    let mut data: Vec<u8> = Vec::new();
    let mut list = Vec::with_capacity(tensors.len());
    for (t, shape) in tensors.iter().zip(shapes) {
        list.push(Message::tensor(shape, data.len() as u64 / 4)?);
        data.extend(t.iter().flat_map(|x| x.to_bits().to_le_bytes()));
    }
    run_hash(
        dev,
        data,
        &list,
        Blake3Mode::DeriveKey(TENSOR_CONTEXT),
        true,
    )
    .await
}

/// The derive-key context of `Tensor::hash`.
pub(crate) const TENSOR_CONTEXT: &str = "lupus tensor v1";

async fn run_hash(
    dev: &GpuDevice,
    mut data: Vec<u8>,
    list: &[Message],
    mode: Blake3Mode<'_>,
    canonical: bool,
) -> Result<Vec<[u8; 32]>, GpuError> {
    if data.is_empty() {
        data.resize(4, 0);
    }
    let scope = dev.scope();
    let buf = dev.upload("blake3 data", &data, wgpu::BufferUsages::STORAGE);
    let program = HashProgram::new(dev, &buf, list, mode, canonical)?;
    let mut encoder = dev
        .device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("blake3"),
        });
    program.encode_clear(&mut encoder);
    {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("blake3"),
            timestamp_writes: None,
        });
        program.encode(&mut pass);
    }
    let size = program.digests.size();
    let staging = dev.staging(size + 4);
    encoder.copy_buffer_to_buffer(&program.digests, 0, &staging, 0, size);
    encoder.copy_buffer_to_buffer(&program.status, 0, &staging, size, 4);
    dev.queue().submit([encoder.finish()]);
    dev.check(scope, "blake3").await?;
    let bytes = dev.read_bytes(&staging).await?;
    if canonical && bytes[size as usize..] != [0; 4] {
        return Err(GpuError::NonFinite);
    }
    Ok(digests_of(&bytes, list.len()))
}

/// The device's `Tensor::hash` of one tensor (a convenience for tests).
pub async fn tensor_hash_on_device(dev: &GpuDevice, t: &Tensor) -> Result<[u8; 32], GpuError> {
    let h = tensor_hashes_on_device(dev, &[t.data()], &[t.shape()]).await?;
    h.into_iter()
        .next()
        .ok_or_else(|| GpuError::Readback("no digest".into()))
}
