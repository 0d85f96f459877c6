// `softmax.wgsl`'s causal ops 0 (causal_softmax) and 1 (causal_softmax_backward) for a
// row width that is a multiple of 4: one thread per row, as there, reading and writing
// four floats at a time. Each pass takes the four elements of a load in j order and
// does to each exactly what `softmax.wgsl` does to it, skipping those past the row's
// causal length (j > i), so every output has the reference's bits. On lavapipe each
// load or store of a lane costs about the same whatever its width, and these passes are
// loads and stores.
// P as `softmax.wgsl`: 0 rows, 1 op, 2 row width, 3 seq.
// op 0: X4 scores -> O4 probs (Y4 a placeholder). op 1: X4 p, Y4 dp -> O4 ds.
@group(0) @binding(1) var<storage, read_write> X4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> Y4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> O4: array<vec4<f32>>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = thread_index(gid, nwg);
    if r >= pu(0u) {
        return;
    }
    let width4 = pu(2u) / 4u;
    let base = r * width4;
    // Row r is position i of its sequence: elements 0 ..= i are live, the rest zero.
    let i = r % pu(3u);
    let live4 = i / 4u + 1u;
    if pu(1u) == 0u {
        // kernels::softmax_into over 0 ..= i: the max, the exponentials and their sum,
        // then each scaled by the sum's reciprocal.
        var mx = X4[base].x;
        for (var q = 0u; q < live4; q = q + 1u) {
            let v = X4[base + q];
            for (var e = 0u; e < 4u; e = e + 1u) {
                if 4u * q + e <= i && v[e] > mx {
                    mx = v[e];
                }
            }
        }
        var sum = 0.0;
        for (var q = 0u; q < live4; q = q + 1u) {
            let v = X4[base + q];
            var ex = vec4<f32>(0.0);
            for (var e = 0u; e < 4u; e = e + 1u) {
                if 4u * q + e <= i {
                    ex[e] = det_exp(v[e] - mx);
                    sum = sum + ex[e];
                }
            }
            O4[base + q] = ex;
        }
        let inv = det_reciprocal(sum);
        for (var q = 0u; q < live4; q = q + 1u) {
            let ex = O4[base + q];
            var o = vec4<f32>(0.0);
            for (var e = 0u; e < 4u; e = e + 1u) {
                if 4u * q + e <= i {
                    o[e] = ftz(ex[e] * inv);
                }
            }
            O4[base + q] = o;
        }
    } else {
        // ds[j] = p[j] * (dp[j] - sum_{k <= i} p[k] dp[k]) for j <= i.
        var dot = 0.0;
        for (var q = 0u; q < live4; q = q + 1u) {
            let p = X4[base + q];
            let d = Y4[base + q];
            for (var e = 0u; e < 4u; e = e + 1u) {
                if 4u * q + e <= i {
                    dot = dot + p[e] * d[e];
                }
            }
        }
        for (var q = 0u; q < live4; q = q + 1u) {
            let p = X4[base + q];
            let d = Y4[base + q];
            var o = vec4<f32>(0.0);
            for (var e = 0u; e < 4u; e = e + 1u) {
                if 4u * q + e <= i {
                    o[e] = ftz(p[e] * (d[e] - dot));
                }
            }
            O4[base + q] = o;
        }
    }
    for (var q = live4; q < width4; q = q + 1u) {
        O4[base + q] = vec4<f32>(0.0);
    }
}
