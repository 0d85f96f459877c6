// C[m, n] = op(A) op(B), an 8 x 8 block of C per thread: every element is
// `acc = acc + a * b` for p increasing from +0, flushed on store (kernels::matmul_naive),
// so the bits are the reference's; a vector add of vector products is that, lane by lane.
// The block is for speed on CPU-backed devices (lavapipe): each A and B value loaded is
// used eight times; one thread per element loaded two values per product and ran 5 to 9
// times slower on lavapipe.
// P: 0 threads = ceil(m / 8) * ceil(n / 8), 1 m, 2 k, 3 n, 4 transpose_a, 5 transpose_b.
// Thread t computes rows 8 (t / ceil(n / 8)) .. + 8 and columns 8 (t % ceil(n / 8)) .. + 8;
// rows and columns past the edge read a clamped index and are not stored.
@group(0) @binding(1) var<storage, read_write> A: array<f32>;
@group(0) @binding(2) var<storage, read_write> B: array<f32>;
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
    var a_p = 1u;
    var a_i = k;
    if pu(4u) != 0u {
        a_p = m;
        a_i = 1u;
    }
    var b_p = n;
    var b_j = 1u;
    if pu(5u) != 0u {
        b_p = 1u;
        b_j = k;
    }
    let tiles_n = (n + 7u) / 8u;
    let i0 = (idx / tiles_n) * 8u;
    let j0 = (idx % tiles_n) * 8u;
    let s = vec4<u32>(0u, 1u, 2u, 3u);
    let ilo = min(vec4<u32>(i0) + s, vec4<u32>(m - 1u)) * a_i;
    let ihi = min(vec4<u32>(i0 + 4u) + s, vec4<u32>(m - 1u)) * a_i;
    let jlo = min(vec4<u32>(j0) + s, vec4<u32>(n - 1u)) * b_j;
    let jhi = min(vec4<u32>(j0 + 4u) + s, vec4<u32>(n - 1u)) * b_j;
    var c: array<vec4<f32>, 16>;
    for (var p = 0u; p < k; p = p + 1u) {
        let ap = p * a_p;
        let bp = p * b_p;
        let al = vec4<f32>(A[ilo.x + ap], A[ilo.y + ap], A[ilo.z + ap], A[ilo.w + ap]);
        let ah = vec4<f32>(A[ihi.x + ap], A[ihi.y + ap], A[ihi.z + ap], A[ihi.w + ap]);
        let bl = vec4<f32>(B[bp + jlo.x], B[bp + jlo.y], B[bp + jlo.z], B[bp + jlo.w]);
        let bh = vec4<f32>(B[bp + jhi.x], B[bp + jhi.y], B[bp + jhi.z], B[bp + jhi.w]);
        c[0] = c[0] + al.x * bl;
        c[1] = c[1] + al.x * bh;
        c[2] = c[2] + al.y * bl;
        c[3] = c[3] + al.y * bh;
        c[4] = c[4] + al.z * bl;
        c[5] = c[5] + al.z * bh;
        c[6] = c[6] + al.w * bl;
        c[7] = c[7] + al.w * bh;
        c[8] = c[8] + ah.x * bl;
        c[9] = c[9] + ah.x * bh;
        c[10] = c[10] + ah.y * bl;
        c[11] = c[11] + ah.y * bh;
        c[12] = c[12] + ah.z * bl;
        c[13] = c[13] + ah.z * bh;
        c[14] = c[14] + ah.w * bl;
        c[15] = c[15] + ah.w * bh;
    }
    for (var r = 0u; r < 8u; r = r + 1u) {
        if i0 + r < m {
            for (var q = 0u; q < 8u; q = q + 1u) {
                if j0 + q < n {
                    C[(i0 + r) * n + j0 + q] = ftz(c[2u * r + q / 4u][q % 4u]);
                }
            }
        }
    }
}
