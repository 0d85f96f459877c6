// The value-shaped attention products (`attention.wgsl` ops 1, 3, 4 and 5) for a head
// width that is a multiple of 4: one thread per four adjacent columns of one head, so
// each score read serves four outputs and each value row is read four floats at a
// time. Lane by lane every output is the scalar kernel's `acc = acc + s * y` over the
// same j (or i) in the same order, then scaled and flushed: the reference's bits.
// P as `attention.wgsl`, word 0 the number of threads (outputs / 4):
// op 1 values:          X p, Y v            -> O o
// op 3 values dv:       X p, Y do           -> O dv
// op 4 scores dq:       X ds, Y k           -> O dq
// op 5 scores dk:       X ds, Y q           -> O dk
@group(0) @binding(1) var<storage, read_write> X: array<f32>;
@group(0) @binding(2) var<storage, read_write> Y4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> O4: array<vec4<f32>>;

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
    let width4 = width / 4u;
    // Sequence b, position t, head h, columns c .. c + 4 of the head.
    let r = idx / width4;
    let col = (idx % width4) * 4u;
    let b = r / seq;
    let t = r % seq;
    let h = col / hd;
    let c = col % hd;
    let y_at = (b * seq * width + h * hd + c) / 4u;
    var acc = vec4<f32>(0.0);
    switch op {
        case 1u: {
            // o[t] = sum_{j <= t} p[t, j] v[j]
            let srow = ((b * heads + h) * seq + t) * seq;
            for (var j = 0u; j <= t; j = j + 1u) {
                acc = acc + vec4<f32>(X[srow + j]) * Y4[y_at + j * width4];
            }
            O4[idx] = ftz4(acc);
        }
        case 3u: {
            // dv[t] = sum_{i >= t} p[i, t] do[i]
            for (var i = t; i < seq; i = i + 1u) {
                let p = X[((b * heads + h) * seq + i) * seq + t];
                acc = acc + vec4<f32>(p) * Y4[y_at + i * width4];
            }
            O4[idx] = ftz4(acc);
        }
        case 4u: {
            // dq[t] = (sum_{j <= t} ds[t, j] k[j]) * scale
            let srow = ((b * heads + h) * seq + t) * seq;
            for (var j = 0u; j <= t; j = j + 1u) {
                acc = acc + vec4<f32>(X[srow + j]) * Y4[y_at + j * width4];
            }
            O4[idx] = ftz4(acc * det_rsqrt(f32(hd)));
        }
        default: {
            // dk[t] = (sum_{i >= t} ds[i, t] q[i]) * scale
            for (var i = t; i < seq; i = i + 1u) {
                let g = X[((b * heads + h) * seq + i) * seq + t];
                acc = acc + vec4<f32>(g) * Y4[y_at + i * width4];
            }
            O4[idx] = ftz4(acc * det_rsqrt(f32(hd)));
        }
    }
}
