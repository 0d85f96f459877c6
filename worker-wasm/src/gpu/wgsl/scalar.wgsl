// The known-answer suite's scalar sweeps: one `det` function over an array of inputs.
// P: 0 count, 1 function (0 exp, 1 ln, 2 reciprocal, 3 rsqrt, 4 sqrt, 5 round_ne, 6 ftz).
@group(0) @binding(1) var<storage, read_write> X: array<f32>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = thread_index(gid, nwg);
    if i >= pu(0u) {
        return;
    }
    let x = X[i];
    var y: f32;
    switch pu(1u) {
        case 0u: { y = det_exp(x); }
        case 1u: { y = det_ln(x); }
        case 2u: { y = det_reciprocal(x); }
        case 3u: { y = det_rsqrt(x); }
        case 4u: { y = det_sqrt(x); }
        case 5u: { y = round_ne(x); }
        default: { y = ftz(x); }
    }
    // Stored as bits so that a NaN result keeps its exact pattern.
    Y[i] = y;
}
