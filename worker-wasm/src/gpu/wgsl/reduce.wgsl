// Reductions over rows in increasing order, one thread per output element.
// P: 0 count, 1 op (0 bias_backward: column sums of X [rows, cols];
// 1 add_position_backward: out[t, c] = sum of X rows r with r % seq == t, zero for
// t >= seq; 2 embedding_backward: out[v, c] = sum of X rows n with ids[n] == v, in
// increasing n, read from the ids' index; 3 embedding: out[n, c] = table[ids[n], c]),
// 2 rows, 3 cols, 4 seq (add_position_backward) or vocab (embedding_backward).
// X is the matrix read, Y the ids (embedding) or their index (embedding_backward), X
// the table for `embedding`.
@group(0) @binding(1) var<storage, read_write> X: array<f32>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;
@group(0) @binding(3) var<storage, read_write> O: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = thread_index(gid, nwg);
    if i >= pu(0u) {
        return;
    }
    let rows = pu(2u);
    let cols = pu(3u);
    let r0 = i / cols;
    let c = i % cols;
    switch pu(1u) {
        case 0u: {
            var acc = 0.0;
            for (var r = 0u; r < rows; r = r + 1u) {
                acc = acc + X[r * cols + c];
            }
            O[i] = ftz(acc);
        }
        case 1u: {
            let seq = pu(4u);
            var acc = 0.0;
            if r0 < seq {
                for (var r = r0; r < rows; r = r + seq) {
                    acc = acc + X[r * cols + c];
                }
            }
            O[i] = ftz(acc);
        }
        case 2u: {
            // Y is the ids' index (`ops::id_index`): the rows n with ids[n] == r0 are
            // Y[vocab + 1 + q] for q in Y[r0] .. Y[r0 + 1], in increasing n.
            var acc = 0.0;
            let vocab = pu(4u);
            for (var q = u32(Y[r0]); q < u32(Y[r0 + 1u]); q = q + 1u) {
                acc = acc + X[u32(Y[vocab + 1u + q]) * cols + c];
            }
            O[i] = ftz(acc);
        }
        default: {
            O[i] = X[u32(Y[r0]) * cols + c];
        }
    }
}
