// Gradients of layer normalisation (kernels::layer_norm_backward): `rows_main` gives
// dx, one thread per row; `cols_main` gives dgamma and dbeta, one thread per column,
// rows in increasing order. xhat is recomputed the same way in both.
// P: 0 count (rows for rows_main, cols for cols_main), 1 rows, 2 cols.
@group(0) @binding(1) var<storage, read_write> X: array<f32>;
@group(0) @binding(2) var<storage, read_write> G: array<f32>;
@group(0) @binding(3) var<storage, read_write> MEAN: array<f32>;
@group(0) @binding(4) var<storage, read_write> RSTD: array<f32>;
@group(0) @binding(5) var<storage, read_write> DY: array<f32>;
@group(0) @binding(6) var<storage, read_write> DX: array<f32>;
@group(0) @binding(7) var<storage, read_write> DG: array<f32>;
@group(0) @binding(8) var<storage, read_write> DB: array<f32>;

@compute @workgroup_size(64)
fn rows_main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = thread_index(gid, nwg);
    if r >= pu(0u) {
        return;
    }
    let c = pu(2u);
    let inv_c = recip_count(c);
    let base = r * c;
    let mu = MEAN[r];
    let rs = RSTD[r];
    var s1 = 0.0;
    var s2 = 0.0;
    for (var j = 0u; j < c; j = j + 1u) {
        let xhat = (X[base + j] - mu) * rs;
        let g = DY[base + j] * G[j];
        s1 = s1 + g;
        s2 = s2 + g * xhat;
    }
    let m1 = s1 * inv_c;
    let m2 = s2 * inv_c;
    for (var j = 0u; j < c; j = j + 1u) {
        let xhat = (X[base + j] - mu) * rs;
        let g = DY[base + j] * G[j];
        DX[base + j] = ftz((g - m1 - xhat * m2) * rs);
    }
}

@compute @workgroup_size(64)
fn cols_main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let j = thread_index(gid, nwg);
    if j >= pu(0u) {
        return;
    }
    let rows = pu(1u);
    let c = pu(2u);
    var dg = 0.0;
    var db = 0.0;
    for (var r = 0u; r < rows; r = r + 1u) {
        let xhat = (X[r * c + j] - MEAN[r]) * RSTD[r];
        let dy = DY[r * c + j];
        dg = dg + dy * xhat;
        db = db + dy;
    }
    DG[j] = ftz(dg);
    DB[j] = ftz(db);
}
