// Row softmaxes (kernels::causal_softmax, causal_softmax_backward,
// softmax_cross_entropy), one thread per row.
// P: 0 rows, 1 op (0 causal_softmax, 1 causal_softmax_backward, 2 cross-entropy rows,
// 3 cross-entropy total), 2 row width (seq or vocab), 3 seq (causal ops).
// causal_softmax: X scores -> O probs. causal_softmax_backward: X p, Y dp -> O ds.
// cross-entropy rows: X logits, Y targets -> O probs, L[r] = lse - x[t].
// cross-entropy total (one thread): L -> LOSS[0] = (sum_r L[r]) * (1/rows).
@group(0) @binding(1) var<storage, read_write> X: array<f32>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;
@group(0) @binding(3) var<storage, read_write> O: array<f32>;
@group(0) @binding(4) var<storage, read_write> L: array<f32>;
@group(0) @binding(5) var<storage, read_write> LOSS: array<f32>;

// Softmax of X[base .. base + len] into O (kernels::softmax_into); returns the sum.
fn softmax_into(base: u32, len: u32) -> f32 {
    var mx = X[base];
    for (var j = 0u; j < len; j = j + 1u) {
        let v = X[base + j];
        if v > mx {
            mx = v;
        }
    }
    var sum = 0.0;
    for (var j = 0u; j < len; j = j + 1u) {
        let e = det_exp(X[base + j] - mx);
        O[base + j] = e;
        sum = sum + e;
    }
    let inv = det_reciprocal(sum);
    for (var j = 0u; j < len; j = j + 1u) {
        O[base + j] = ftz(O[base + j] * inv);
    }
    return sum;
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = thread_index(gid, nwg);
    if r >= pu(0u) {
        return;
    }
    let width = pu(2u);
    let base = r * width;
    switch pu(1u) {
        case 0u: {
            let i = r % pu(3u);
            softmax_into(base, i + 1u);
            for (var j = i + 1u; j < width; j = j + 1u) {
                O[base + j] = 0.0;
            }
        }
        case 1u: {
            let i = r % pu(3u);
            var dot = 0.0;
            for (var j = 0u; j <= i; j = j + 1u) {
                dot = dot + X[base + j] * Y[base + j];
            }
            for (var j = 0u; j < width; j = j + 1u) {
                if j <= i {
                    O[base + j] = ftz(X[base + j] * (Y[base + j] - dot));
                } else {
                    O[base + j] = 0.0;
                }
            }
        }
        case 2u: {
            let sum = softmax_into(base, width);
            var mx = X[base];
            for (var j = 0u; j < width; j = j + 1u) {
                let v = X[base + j];
                if v > mx {
                    mx = v;
                }
            }
            let lse = mx + det_ln(sum);
            L[r] = lse - X[base + u32(Y[r])];
        }
        default: {
            let rows = pu(4u);
            var total = 0.0;
            for (var k = 0u; k < rows; k = k + 1u) {
                total = total + L[k];
            }
            LOSS[0] = ftz(total * recip_count(rows));
        }
    }
}
