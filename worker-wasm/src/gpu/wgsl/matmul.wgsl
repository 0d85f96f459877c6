// C[m, n] = op(A) op(B): one thread per element, `acc = acc + a * b` for p increasing
// from +0, flushed on store (kernels::matmul_naive).
// P: 0 count, 1 m, 2 k, 3 n, 4 transpose_a, 5 transpose_b.
@group(0) @binding(1) var<storage, read> A: array<f32>;
@group(0) @binding(2) var<storage, read> B: array<f32>;
@group(0) @binding(3) var<storage, read_write> C: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = thread_index(gid, nwg);
    if idx >= pu(0u) {
        return;
    }
    let m = pu(1u);
    let k = pu(2u);
    let n = pu(3u);
    let ta = pu(4u) != 0u;
    let tb = pu(5u) != 0u;
    let i = idx / n;
    let j = idx % n;
    var acc = 0.0;
    for (var p = 0u; p < k; p = p + 1u) {
        var a: f32;
        if ta {
            a = A[p * m + i];
        } else {
            a = A[i * k + p];
        }
        var b: f32;
        if tb {
            b = B[j * k + p];
        } else {
            b = B[p * n + j];
        }
        acc = acc + a * b;
    }
    C[idx] = ftz(acc);
}
