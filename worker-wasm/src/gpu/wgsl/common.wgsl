// Shared by every kernel: the parameter block and the thread index.
//
// Parameters are 16 u32 words in a uniform buffer (floats travel as their bits). Word 0
// is always the number of threads the dispatch needs; threads past it return at once.
// Word 15 is always zero: `det_exp` builds from it a 1.0 the compiler cannot fold.
// A dispatch larger than 65535 workgroups spreads over y, so the index is
// `x + y * (workgroups along x) * 64`.
//
// Every storage binding, inputs included, is `read_write`: the whole step
// (`gpu::whole`) binds regions of one arena buffer as a kernel's inputs and outputs, and
// WebGPU refuses a buffer bound both read-only and writable in one dispatch. Kernels
// never write their inputs.

@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 4>;

fn pu(i: u32) -> u32 {
    return P[i / 4u][i % 4u];
}

fn pf(i: u32) -> f32 {
    return bitcast<f32>(pu(i));
}

fn thread_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 64u;
}
