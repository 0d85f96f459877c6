// The score-shaped attention products (`attention.wgsl` ops 0 and 2) for a head width
// that is a multiple of 4: one thread per score, reading both rows four floats at a
// time. The four products of each load are added in c order, so every score is still
// `acc = acc + x[c] * y[c]` for c increasing from +0: the reference's bits. On lavapipe
// a vector load costs about what one scalar load did, and this loop was all loads.
// P as `attention.wgsl`: 0 count, 1 op (0 scores, 2 values dp), 2 batch, 3 seq,
// 4 heads, 5 head_dim.
// op 0 scores:          X q, Y k            -> O s (scaled by 1 / sqrt(head_dim))
// op 2 values dp:       X do, Y v           -> O dp
@group(0) @binding(1) var<storage, read_write> X4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> Y4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> O: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = thread_index(gid, nwg);
    if idx >= pu(0u) {
        return;
    }
    let op = pu(1u);
    let seq = pu(3u);
    let heads = pu(4u);
    let hd = pu(5u);
    let width = heads * hd;
    let row = idx / seq;
    let j = idx % seq;
    let i = row % seq;
    let bh = row / seq;
    let b = bh / heads;
    let h = bh % heads;
    if j > i {
        O[idx] = 0.0;
        return;
    }
    let ai = ((b * seq + i) * width + h * hd) / 4u;
    let aj = ((b * seq + j) * width + h * hd) / 4u;
    var acc = 0.0;
    for (var c = 0u; c < hd / 4u; c = c + 1u) {
        let x = X4[ai + c];
        let y = Y4[aj + c];
        acc = acc + x.x * y.x;
        acc = acc + x.y * y.y;
        acc = acc + x.z * y.z;
        acc = acc + x.w * y.w;
    }
    if op == 0u {
        O[idx] = ftz(acc * det_rsqrt(f32(hd)));
    } else {
        O[idx] = ftz(acc);
    }
}
