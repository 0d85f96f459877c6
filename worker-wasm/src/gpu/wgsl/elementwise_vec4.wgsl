// `elementwise.wgsl`'s ops 0 (add), 1 (relu; the second binding a placeholder of one
// vec4), 2 (relu_backward), 3 (add_bias) and 4
// (add_position), four adjacent elements a thread, for tensors whose element count
// (and, for add_bias and add_position, whose column count) is a multiple of 4. Lane by
// lane every output is the scalar kernel's. On lavapipe a vector load costs about what
// one scalar load did, and these kernels are loads and stores.
// P as `elementwise.wgsl`, word 0 the number of threads (elements / 4).
@group(0) @binding(1) var<storage, read_write> X4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> Y4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> O4: array<vec4<f32>>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = thread_index(gid, nwg);
    if i >= pu(0u) {
        return;
    }
    let cols4 = pu(2u) / 4u;
    switch pu(1u) {
        case 0u: {
            O4[i] = ftz4(X4[i] + Y4[i]);
        }
        case 1u: {
            let a = X4[i];
            O4[i] = select(vec4<f32>(0.0), a, a > vec4<f32>(0.0));
        }
        case 2u: {
            O4[i] = select(vec4<f32>(0.0), Y4[i], X4[i] > vec4<f32>(0.0));
        }
        case 3u: {
            O4[i] = ftz4(X4[i] + Y4[i % cols4]);
        }
        default: {
            // add_position: row r of x takes row r % seq of the table.
            let seq = pu(3u);
            let r = i / cols4;
            let c4 = i % cols4;
            let t = r % seq;
            O4[i] = ftz4(X4[i] + Y4[t * cols4 + c4]);
        }
    }
}
