// One AdamW update per element (kernels::adamw), in the reference's exact order.
// P: 0 count, 1 lr, 2 beta1, 3 beta2, 4 eps, 5 weight_decay (bits), 6 step.
@group(0) @binding(1) var<storage, read_write> PARAM: array<f32>;
@group(0) @binding(2) var<storage, read_write> GRAD: array<f32>;
@group(0) @binding(3) var<storage, read_write> M: array<f32>;
@group(0) @binding(4) var<storage, read_write> V: array<f32>;
@group(0) @binding(5) var<storage, read_write> PO: array<f32>;
@group(0) @binding(6) var<storage, read_write> MO: array<f32>;
@group(0) @binding(7) var<storage, read_write> VO: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = thread_index(gid, nwg);
    if i >= pu(0u) {
        return;
    }
    let lr = pf(1u);
    let beta1 = pf(2u);
    let beta2 = pf(3u);
    let eps = pf(4u);
    let wd = pf(5u);
    let step = pu(6u);
    let c1 = 1.0 - beta1;
    let c2 = 1.0 - beta2;
    let ib1 = det_reciprocal(1.0 - det_powi(beta1, step));
    let ib2 = det_reciprocal(1.0 - det_powi(beta2, step));
    let decay = 1.0 - lr * wd;
    let gi = GRAD[i];
    let m1 = ftz(beta1 * M[i] + c1 * gi);
    let v1 = ftz(beta2 * V[i] + c2 * (gi * gi));
    let mhat = m1 * ib1;
    let vhat = v1 * ib2;
    let denom = det_sqrt(vhat) + eps;
    let upd = mhat * det_reciprocal(denom);
    PO[i] = ftz(PARAM[i] * decay - lr * upd);
    MO[i] = m1;
    VO[i] = v1;
}
