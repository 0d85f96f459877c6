// Deterministic scalar maths, a line-for-line port of lupus-prover's `det.rs`.
//
// Only `+ - *`, comparisons and integer/bit operations on f32 (DESIGN.md, Determinism):
// WGSL's exp, log, sqrt, division and fma may be inexact, expanded or fused. Constants
// are written as hexadecimal floats, which are exact, so that no decimal-to-binary
// conversion (which a shader compiler may do through f64, rounding twice) can change
// them. NaN and infinity are
// tested on the bits, never with `x != x`, which a compiler may assume false.

const CANONICAL_NAN: u32 = 0x7fc00000u;
const EXP_MASK: u32 = 0x7f800000u;
const SIGN_MASK: u32 = 0x80000000u;
const MANT_MASK: u32 = 0x007fffffu;

const ROUND_LIMIT: f32 = 0x1.000000p22f; // 2^22
const EXP_MAX: f32 = 0x1.600000p6f; // 88
const EXP_MIN: f32 = -0x1.5d589ep6f; // -87.33654
const LOG2E: f32 = 0x1.715476p0f;
const EXP_C1: f32 = 0x1.630000p-1f; // 0.693359375
const EXP_C2: f32 = -0x1.bd0106p-13f; // -2.1219444e-4
const E0: f32 = 0x1.a0d2cep-13f; // 1.9875691e-4
const E1: f32 = 0x1.6e879cp-10f; // 1.3981999e-3
const E2: f32 = 0x1.111210p-7f; // 8.333452e-3
const E3: f32 = 0x1.555382p-5f; // 4.1665796e-2
const E4: f32 = 0x1.555554p-3f; // 1.6666665e-1
const E5: f32 = 0x1.000000p-1f; // 5.0000001e-1 rounds to 0.5
const SQRT_HALF: f32 = 0x1.6a09e6p-1f;
const L0: f32 = 0x1.204376p-4f; // 7.0376836e-2
const L1: f32 = 0x1.d7a370p-4f; // 1.151461e-1
const L2: f32 = 0x1.de4a36p-4f; // 1.1676999e-1
const L3: f32 = 0x1.fcba9ep-4f; // 1.2420141e-1
const L4: f32 = 0x1.23d37ep-3f; // 1.4249323e-1
const L5: f32 = 0x1.555ca0p-3f; // 1.6668058e-1
const L6: f32 = 0x1.999d58p-3f; // 2.0000714e-1
const L7: f32 = 0x1.fffff8p-3f; // 2.4999994e-1
const L8: f32 = 0x1.555554p-2f; // 3.3333331e-1
const R0: f32 = 0x1.69696ap1f; // 48/17
const R1: f32 = 0x1.e1e1e2p0f; // 32/17
const FMAX_BITS: u32 = 0x7f7fffffu;
const FMIN: f32 = -0x1.fffffep127f;
const FMAX: f32 = 0x1.fffffep127f;
const POS_INF_BITS: u32 = 0x7f800000u;

fn is_nan(x: f32) -> bool {
    let b = bitcast<u32>(x);
    return (b & EXP_MASK) == EXP_MASK && (b & MANT_MASK) != 0u;
}

// Built at run time: Tint refuses a NaN constant ("value nan cannot be represented").
// Parameter word 15 is always zero.
// `x < 0.0` for a non-NaN x, on the bits: a device that treats subnormal inputs as zero
// (SwiftShader does) would otherwise call a negative subnormal non-negative.
fn is_negative(x: f32) -> bool {
    let b = bitcast<u32>(x);
    return (b & SIGN_MASK) != 0u && (b & 0x7fffffffu) != 0u;
}

fn canonical_nan() -> f32 {
    return bitcast<f32>(CANONICAL_NAN | pu(15u));
}

fn ftz(x: f32) -> f32 {
    let b = bitcast<u32>(x);
    if (b & EXP_MASK) == 0u {
        return bitcast<f32>(b & SIGN_MASK);
    }
    return x;
}

// `ftz` lane by lane, for the kernels that store four floats at a time.
fn ftz4(v: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(ftz(v.x), ftz(v.y), ftz(v.z), ftz(v.w));
}

// Rounds to the nearest integer, ties to even, for |x| < 2^22; larger magnitudes (and
// NaN, infinities) are returned unchanged. The reference adds and subtracts 1.5 * 2^23;
// shader compilers may fold `(x + c) - c` to `x` (Mesa does), so this computes the same
// value with exact steps: truncate, take the exact remainder, adjust by one. A zero
// result is +0, as in the reference.
fn round_ne(x: f32) -> f32 {
    let a = bitcast<f32>(bitcast<u32>(x) & 0x7fffffffu);
    if !(a < ROUND_LIMIT) {
        return x;
    }
    let t = i32(x);
    let frac = x - f32(t);
    var r = t;
    let odd = (t & 1) != 0;
    if frac > 0.5 || (frac == 0.5 && odd) {
        r = t + 1;
    } else if frac < -0.5 || (frac == -0.5 && odd) {
        r = t - 1;
    }
    return f32(r);
}

fn pow2i(n: i32) -> f32 {
    return bitcast<f32>(u32(n + 127) << 23u);
}

fn ldexp_det(x: f32, n: i32) -> f32 {
    let n1 = n >> 1u;
    let n2 = n - n1;
    return ftz(x * pow2i(n1) * pow2i(n2));
}

fn det_exp(x_in: f32) -> f32 {
    if is_nan(x_in) {
        return canonical_nan();
    }
    if x_in < EXP_MIN {
        return 0.0;
    }
    var x = x_in;
    if x > EXP_MAX {
        x = EXP_MAX;
    }
    // `one` is 1.0 that the compiler cannot see through (parameter word 15 is never
    // set), so it cannot fold or re-associate the constants of the reduction and the
    // polynomial (Mesa does, which changes the last bit).
    let one = f32(pu(15u) + 1u);
    let nf = round_ne(x * (LOG2E * one));
    let n = i32(nf);
    var r = x - nf * (EXP_C1 * one);
    r = r - nf * (EXP_C2 * one);
    let r2 = r * r;
    var p = E0 * one;
    p = p * r + E1 * one;
    p = p * r + E2 * one;
    p = p * r + E3 * one;
    p = p * r + E4 * one;
    p = p * r + E5 * one;
    let e = p * r2 + r + one;
    return ldexp_det(e, n);
}

fn det_ln(x: f32) -> f32 {
    if is_nan(x) || is_negative(x) {
        return canonical_nan();
    }
    let bits = bitcast<u32>(x);
    if (bits & EXP_MASK) == 0u {
        return FMIN;
    }
    if bits == POS_INF_BITS {
        return FMAX;
    }
    var e = i32((bits >> 23u) & 0xffu) - 126;
    let m = bitcast<f32>((bits & MANT_MASK) | 0x3f000000u);
    var f: f32;
    if m < SQRT_HALF {
        e = e - 1;
        f = m + m - 1.0;
    } else {
        f = m - 1.0;
    }
    let z = f * f;
    var p = L0;
    p = p * f - L1;
    p = p * f + L2;
    p = p * f - L3;
    p = p * f + L4;
    p = p * f - L5;
    p = p * f + L6;
    p = p * f - L7;
    p = p * f + L8;
    let fe = f32(e);
    var y = p * f * z;
    y = y + fe * EXP_C2;
    y = y + z * -0.5;
    let r = f + y;
    return ftz(r + fe * EXP_C1);
}

fn det_reciprocal(x: f32) -> f32 {
    if is_nan(x) {
        return canonical_nan();
    }
    let bits = bitcast<u32>(x);
    let sign = bits & SIGN_MASK;
    let ef = (bits & EXP_MASK) >> 23u;
    if ef == 0u {
        return bitcast<f32>(sign | FMAX_BITS);
    }
    if ef == 0xffu {
        return bitcast<f32>(sign);
    }
    let e = i32(ef) - 126;
    let m = bitcast<f32>((bits & MANT_MASK) | 0x3f000000u);
    var y = R0 - R1 * m;
    for (var i = 0; i < 3; i = i + 1) {
        let err = 1.0 - m * y;
        y = y + y * err;
    }
    let r = ldexp_det(y, -e);
    return bitcast<f32>(bitcast<u32>(r) | sign);
}

fn det_rsqrt(x: f32) -> f32 {
    if is_nan(x) || is_negative(x) {
        return canonical_nan();
    }
    let bits = bitcast<u32>(x);
    let ef = (bits & EXP_MASK) >> 23u;
    if ef == 0u {
        return FMAX;
    }
    if ef == 0xffu {
        return 0.0;
    }
    let e = i32(ef) - 127;
    let odd = e & 1;
    let k = (e - odd) >> 1u;
    let m = bitcast<f32>((bits & MANT_MASK) | (u32(127 + odd) << 23u));
    var y = bitcast<f32>(0x5f3759dfu - (bitcast<u32>(m) >> 1u));
    let h = 0.5 * m;
    for (var i = 0; i < 3; i = i + 1) {
        let t = 0.5 - h * y * y;
        y = y + y * t;
    }
    return ldexp_det(y, -k);
}

fn det_sqrt(x: f32) -> f32 {
    if is_nan(x) || is_negative(x) {
        return canonical_nan();
    }
    if ftz(x) == 0.0 {
        return 0.0;
    }
    if bitcast<u32>(x) == POS_INF_BITS {
        return FMAX;
    }
    return ftz(x * det_rsqrt(x));
}

fn recip_count(n: u32) -> f32 {
    return det_reciprocal(f32(n));
}

fn det_powi(base: f32, n_in: u32) -> f32 {
    var acc = 1.0;
    var b = base;
    var n = n_in;
    while n > 0u {
        if (n & 1u) == 1u {
            acc = ftz(acc * b);
        }
        b = ftz(b * b);
        n = n >> 1u;
    }
    return acc;
}
