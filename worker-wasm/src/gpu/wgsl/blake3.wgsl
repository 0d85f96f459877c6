// BLAKE3 of many messages at once, bit for bit the `blake3` crate's digests (32 bytes).
//
// Message `t` is `header words || data bytes`: DESC[16t ..] holds 0 the data's first word
// in DATA, 1 its length in bytes, 2 the number of header words (at most 9), 3 the number
// of 1 KiB chunks, 4 the first chunk-value slot of the message, 5.. the header words.
// A tensor hash (`Tensor::hash`) is the header `u32 rank || u64 dims` and the data the
// tensor's f32 words, canonicalised here as `det::canonical_bits` does (subnormals
// flushed to a zero of the same sign); a non-finite word sets STATUS[0].
//
// The tree is BLAKE3's: chunk `c` of a message is compressed block by block with counter
// `c` (CHUNK_START on its first block, CHUNK_END on its last), and chaining values are
// paired left to right level by level, an odd last one moving up unchanged, which is
// BLAKE3's left-full tree. ROOT goes on the last compression of each message. The key
// and the mode flags (keyed hash, derive-key material) come from the host.
//
// P: 0 threads, 1 first TABLE word of this pass, 2 level (0 = chunks), 3 mode flags,
// 4..11 key words, 12 canonicalise (1: data words are f32 of a tensor).
// TABLE: per pass, one (message, index) pair per thread: the chunk (level 0) or the
// node of the level (parents). Level l reads the chaining values of level l - 1 from
// CV_A when l - 1 is even and CV_B when odd, and writes the other.

@group(0) @binding(1) var<storage, read_write> DATA: array<u32>;
@group(0) @binding(2) var<storage, read_write> DESC: array<u32>;
@group(0) @binding(3) var<storage, read_write> TABLE: array<u32>;
@group(0) @binding(4) var<storage, read_write> CV_A: array<u32>;
@group(0) @binding(5) var<storage, read_write> CV_B: array<u32>;
@group(0) @binding(6) var<storage, read_write> DIGESTS: array<u32>;
@group(0) @binding(7) var<storage, read_write> STATUS: array<atomic<u32>>;

const CHUNK_START: u32 = 1u;
const CHUNK_END: u32 = 2u;
const PARENT: u32 = 4u;
const ROOT: u32 = 8u;

const IV0: vec4<u32> = vec4<u32>(0x6A09E667u, 0xBB67AE85u, 0x3C6EF372u, 0xA54FF53Au);

fn rotr(x: vec4<u32>, n: u32) -> vec4<u32> {
    return (x >> vec4<u32>(n)) | (x << vec4<u32>(32u - n));
}

// The state as four rows; G runs on the four columns (or diagonals) at once.
struct State {
    a: vec4<u32>,
    b: vec4<u32>,
    c: vec4<u32>,
    d: vec4<u32>,
}

fn g(s: State, mx: vec4<u32>, my: vec4<u32>) -> State {
    var r = s;
    r.a = r.a + r.b + mx;
    r.d = rotr(r.d ^ r.a, 16u);
    r.c = r.c + r.d;
    r.b = rotr(r.b ^ r.c, 12u);
    r.a = r.a + r.b + my;
    r.d = rotr(r.d ^ r.a, 8u);
    r.c = r.c + r.d;
    r.b = rotr(r.b ^ r.c, 7u);
    return r;
}

// The message block as 16 words.
struct Block {
    w: array<u32, 16>,
}

// The first 8 output words of the compression of `m` under chaining value (h0, h1):
// a chaining value, or the first 32 bytes of a root output.
fn compress(h0: vec4<u32>, h1: vec4<u32>, m_in: Block, counter: u32, len: u32, flags: u32) -> array<vec4<u32>, 2> {
    var s = State(h0, h1, IV0, vec4<u32>(counter, 0u, len, flags));
    var m = m_in.w;
    for (var round = 0u; round < 7u; round = round + 1u) {
        s = g(s, vec4<u32>(m[0], m[2], m[4], m[6]), vec4<u32>(m[1], m[3], m[5], m[7]));
        // Diagonals: rotate rows b, c, d left by 1, 2, 3 lanes.
        var t = State(s.a, s.b.yzwx, s.c.zwxy, s.d.wxyz);
        t = g(t, vec4<u32>(m[8], m[10], m[12], m[14]), vec4<u32>(m[9], m[11], m[13], m[15]));
        s = State(t.a, t.b.wxyz, t.c.zwxy, t.d.yzwx);
        // The message permutation [2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8].
        let p = m;
        m = array<u32, 16>(p[2], p[6], p[3], p[10], p[7], p[0], p[4], p[13], p[1], p[11], p[12], p[5], p[9], p[14], p[15], p[8]);
    }
    return array<vec4<u32>, 2>(s.a ^ s.c, s.b ^ s.d);
}

fn key_lo() -> vec4<u32> {
    return vec4<u32>(pu(4u), pu(5u), pu(6u), pu(7u));
}

fn key_hi() -> vec4<u32> {
    return vec4<u32>(pu(8u), pu(9u), pu(10u), pu(11u));
}

// Word `w` of message `t`: a header word, a data word (masked past the end, and
// canonicalised for tensors), or zero padding.
fn message_word(t: u32, w: u32, hw: u32, data_off: u32, data_len: u32) -> u32 {
    if w < hw {
        return DESC[16u * t + 5u + w];
    }
    let k = w - hw;
    let byte = 4u * k;
    if byte >= data_len {
        return 0u;
    }
    var x = DATA[data_off + k];
    if pu(12u) != 0u {
        let e = x & 0x7f800000u;
        if e == 0u {
            x = x & 0x80000000u;
        } else if e == 0x7f800000u {
            atomicOr(&STATUS[0], 1u);
        }
    }
    let left = data_len - byte;
    if left < 4u {
        x = x & ((1u << (8u * left)) - 1u);
    }
    return x;
}

fn store_cv(level: u32, slot: u32, cv: array<vec4<u32>, 2>) {
    for (var i = 0u; i < 4u; i = i + 1u) {
        if level % 2u == 0u {
            CV_A[8u * slot + i] = cv[0][i];
            CV_A[8u * slot + 4u + i] = cv[1][i];
        } else {
            CV_B[8u * slot + i] = cv[0][i];
            CV_B[8u * slot + 4u + i] = cv[1][i];
        }
    }
}

fn load_cv(level: u32, slot: u32) -> array<vec4<u32>, 2> {
    var cv: array<vec4<u32>, 2>;
    for (var i = 0u; i < 4u; i = i + 1u) {
        if level % 2u == 0u {
            cv[0][i] = CV_A[8u * slot + i];
            cv[1][i] = CV_A[8u * slot + 4u + i];
        } else {
            cv[0][i] = CV_B[8u * slot + i];
            cv[1][i] = CV_B[8u * slot + 4u + i];
        }
    }
    return cv;
}

fn store_digest(t: u32, cv: array<vec4<u32>, 2>) {
    for (var i = 0u; i < 4u; i = i + 1u) {
        DIGESTS[8u * t + i] = cv[0][i];
        DIGESTS[8u * t + 4u + i] = cv[1][i];
    }
}

// One thread per chunk of every message.
@compute @workgroup_size(64)
fn chunks(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = thread_index(gid, nwg);
    if idx >= pu(0u) {
        return;
    }
    let t = TABLE[pu(1u) + 2u * idx];
    let c = TABLE[pu(1u) + 2u * idx + 1u];
    let data_off = DESC[16u * t];
    let data_len = DESC[16u * t + 1u];
    let hw = DESC[16u * t + 2u];
    let n_chunks = DESC[16u * t + 3u];
    let total = 4u * hw + data_len;
    let start = 1024u * c;
    let chunk_len = min(1024u, total - start);
    let blocks = max(1u, (chunk_len + 63u) / 64u);
    let mode = pu(3u);
    var cv = array<vec4<u32>, 2>(key_lo(), key_hi());
    for (var b = 0u; b < blocks; b = b + 1u) {
        var m: Block;
        let w0 = (start + 64u * b) / 4u;
        for (var i = 0u; i < 16u; i = i + 1u) {
            m.w[i] = message_word(t, w0 + i, hw, data_off, data_len);
        }
        let len = min(64u, chunk_len - 64u * b);
        var flags = mode;
        if b == 0u {
            flags = flags | CHUNK_START;
        }
        if b + 1u == blocks {
            flags = flags | CHUNK_END;
            if n_chunks == 1u {
                flags = flags | ROOT;
            }
        }
        cv = compress(cv[0], cv[1], m, c, len, flags);
    }
    if n_chunks == 1u {
        store_digest(t, cv);
    } else {
        store_cv(0u, DESC[16u * t + 4u] + c, cv);
    }
}

// One thread per node of level P[2] (>= 1) of every message that still has two or more
// nodes at the level below.
@compute @workgroup_size(64)
fn parents(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = thread_index(gid, nwg);
    if idx >= pu(0u) {
        return;
    }
    let t = TABLE[pu(1u) + 2u * idx];
    let j = TABLE[pu(1u) + 2u * idx + 1u];
    let level = pu(2u);
    let n_chunks = DESC[16u * t + 3u];
    let base = DESC[16u * t + 4u];
    // Nodes at the level below: ceil(n_chunks / 2^(level - 1)).
    let shift = level - 1u;
    let below = (n_chunks + (1u << shift) - 1u) >> shift;
    let left = load_cv(shift, base + 2u * j);
    if 2u * j + 1u >= below {
        store_cv(level, base + j, left);
        return;
    }
    let right = load_cv(shift, base + 2u * j + 1u);
    var m: Block;
    for (var i = 0u; i < 4u; i = i + 1u) {
        m.w[i] = left[0][i];
        m.w[4u + i] = left[1][i];
        m.w[8u + i] = right[0][i];
        m.w[12u + i] = right[1][i];
    }
    var flags = pu(3u) | PARENT;
    if below == 2u {
        flags = flags | ROOT;
    }
    let cv = compress(key_lo(), key_hi(), m, 0u, 64u, flags);
    if below == 2u {
        store_digest(t, cv);
    } else {
        store_cv(level, base + j, cv);
    }
}
