// Layer normalisation, one thread per row (kernels::layer_norm).
// P: 0 rows, 1 cols, 2 eps bits.
@group(0) @binding(1) var<storage, read_write> X: array<f32>;
@group(0) @binding(2) var<storage, read_write> G: array<f32>;
@group(0) @binding(3) var<storage, read_write> B: array<f32>;
@group(0) @binding(4) var<storage, read_write> Y: array<f32>;
@group(0) @binding(5) var<storage, read_write> MEAN: array<f32>;
@group(0) @binding(6) var<storage, read_write> RSTD: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = thread_index(gid, nwg);
    if r >= pu(0u) {
        return;
    }
    let c = pu(1u);
    let eps = pf(2u);
    let inv_c = recip_count(c);
    let base = r * c;
    var s = 0.0;
    for (var j = 0u; j < c; j = j + 1u) {
        s = s + X[base + j];
    }
    let mu = ftz(s * inv_c);
    var q = 0.0;
    for (var j = 0u; j < c; j = j + 1u) {
        let d = X[base + j] - mu;
        q = q + d * d;
    }
    let var_ = q * inv_c;
    let rs = det_rsqrt(var_ + eps);
    for (var j = 0u; j < c; j = j + 1u) {
        Y[base + j] = ftz((X[base + j] - mu) * rs * G[j] + B[j]);
    }
    MEAN[r] = mu;
    RSTD[r] = rs;
}
