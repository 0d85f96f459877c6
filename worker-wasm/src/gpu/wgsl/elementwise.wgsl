// Elementwise operators, one thread per output element.
// P: 0 count, 1 op (0 add, 1 relu, 2 relu_backward, 3 add_bias, 4 add_position,
// 5 softmax_cross_entropy_backward), 2 columns (add_bias, add_position: dim;
// softmax_cross_entropy_backward: vocab), 3 seq (add_position), 4 rows
// (softmax_cross_entropy_backward).
@group(0) @binding(1) var<storage, read_write> X: array<f32>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;
@group(0) @binding(3) var<storage, read_write> O: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = thread_index(gid, nwg);
    if i >= pu(0u) {
        return;
    }
    let cols = pu(2u);
    switch pu(1u) {
        case 0u: {
            O[i] = ftz(X[i] + Y[i]);
        }
        case 1u: {
            let a = X[i];
            O[i] = select(0.0, a, a > 0.0);
        }
        case 2u: {
            O[i] = select(0.0, Y[i], X[i] > 0.0);
        }
        case 3u: {
            O[i] = ftz(X[i] + Y[i % cols]);
        }
        case 4u: {
            let seq = pu(3u);
            let r = i / cols;
            let c = i % cols;
            let t = r % seq;
            O[i] = ftz(X[i] + Y[t * cols + c]);
        }
        default: {
            // dlogits = (p - [c == t]) * (1/rows); Y holds the targets.
            let r = i / cols;
            let c = i % cols;
            let t = u32(Y[r]);
            let y = select(0.0, 1.0, c == t);
            O[i] = ftz((X[i] - y) * recip_count(pu(4u)));
        }
    }
}
