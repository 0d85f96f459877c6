// dgamma and dbeta of layer normalisation (`layer_norm_backward.wgsl`'s `cols_main`)
// for a CPU adapter and a column count that is a multiple of 4: workgroups of 8 lanes,
// four adjacent columns a lane, so that the 64 columns of the GPT job spread over two
// workgroups (one core each on lavapipe) where `cols_main` ran them all in one, and
// each row's mean and reciprocal deviation is one load for the lane's four columns.
// Lane by lane every output is `cols_main`'s: xhat recomputed the same way, rows in
// increasing order, flushed on store.
// P: word 0 the workgroup count times 64 (`Pass::groups`), 1 rows, 2 cols.
@group(0) @binding(1) var<storage, read_write> X4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> MEAN: array<f32>;
@group(0) @binding(3) var<storage, read_write> RSTD: array<f32>;
@group(0) @binding(4) var<storage, read_write> DY4: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> DG4: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> DB4: array<vec4<f32>>;

@compute @workgroup_size(8)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let rows = pu(1u);
    let c4 = pu(2u) / 4u;
    let j4 = (wid.x + wid.y * nwg.x) * 8u + lane;
    if j4 >= c4 {
        return;
    }
    var dg = vec4<f32>(0.0);
    var db = vec4<f32>(0.0);
    for (var r = 0u; r < rows; r = r + 1u) {
        let xhat = (X4[r * c4 + j4] - vec4<f32>(MEAN[r])) * vec4<f32>(RSTD[r]);
        let dy = DY4[r * c4 + j4];
        dg = dg + dy * xhat;
        db = db + dy;
    }
    DG4[j4] = ftz4(dg);
    DB4[j4] = ftz4(db);
}
