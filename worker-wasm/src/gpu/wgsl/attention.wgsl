// Causal attention (kernels::attention_*), one thread per output element.
// Layout: q, k, v, o are [batch*seq, heads*hd]; scores and probabilities are
// [batch*heads*seq, seq], row (b*heads + h)*seq + i, column j, zero above the diagonal.
// P: 0 count, 1 op, 2 batch, 3 seq, 4 heads, 5 head_dim.
// op 0 scores:          X q, Y k            -> O s
// op 1 values:          X p, Y v            -> O o
// op 2 values dp:       X do, Y v           -> O dp
// op 3 values dv:       X p, Y do           -> O dv
// op 4 scores dq:       X ds, Y k           -> O dq
// op 5 scores dk:       X ds, Y q           -> O dk
@group(0) @binding(1) var<storage, read_write> X: array<f32>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;
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
    if op == 0u || op == 2u {
        // An entry of a score-shaped matrix.
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
        let ai = (b * seq + i) * width + h * hd;
        let aj = (b * seq + j) * width + h * hd;
        var acc = 0.0;
        for (var c = 0u; c < hd; c = c + 1u) {
            acc = acc + X[ai + c] * Y[aj + c];
        }
        if op == 0u {
            O[idx] = ftz(acc * det_rsqrt(f32(hd)));
        } else {
            O[idx] = ftz(acc);
        }
        return;
    }
    // An entry of a [batch*seq, width] matrix: sequence b, position t, head h, column c.
    let r = idx / width;
    let col = idx % width;
    let b = r / seq;
    let t = r % seq;
    let h = col / hd;
    let c = col % hd;
    var acc = 0.0;
    switch op {
        case 1u: {
            // o[t] = sum_{j <= t} p[t, j] v[j]
            let srow = ((b * heads + h) * seq + t) * seq;
            for (var j = 0u; j <= t; j = j + 1u) {
                acc = acc + X[srow + j] * Y[(b * seq + j) * width + h * hd + c];
            }
            O[idx] = ftz(acc);
        }
        case 3u: {
            // dv[t] = sum_{i >= t} p[i, t] do[i]
            for (var i = t; i < seq; i = i + 1u) {
                let p = X[((b * heads + h) * seq + i) * seq + t];
                acc = acc + p * Y[(b * seq + i) * width + h * hd + c];
            }
            O[idx] = ftz(acc);
        }
        case 4u: {
            // dq[t] = (sum_{j <= t} ds[t, j] k[j]) * scale
            let srow = ((b * heads + h) * seq + t) * seq;
            for (var j = 0u; j <= t; j = j + 1u) {
                acc = acc + X[srow + j] * Y[(b * seq + j) * width + h * hd + c];
            }
            O[idx] = ftz(acc * det_rsqrt(f32(hd)));
        }
        default: {
            // dk[t] = (sum_{i >= t} ds[i, t] q[i]) * scale
            for (var i = t; i < seq; i = i + 1u) {
                let g = X[((b * heads + h) * seq + i) * seq + t];
                acc = acc + g * Y[(b * seq + i) * width + h * hd + c];
            }
            O[idx] = ftz(acc * det_rsqrt(f32(hd)));
        }
    }
}
