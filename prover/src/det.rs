//! Deterministic scalar maths: the only transcendental functions the kernels use.
//!
//! DESIGN.md (Determinism) forbids the platform's `exp`, `ln`, `sqrt`, division and
//! fused multiply-add in kernels, because WGSL and libm may implement them inexactly,
//! expanded or fused. Each function here is written with `+ - *`, comparisons and
//! integer/bit operations on `f32` only: an exact range reduction by bit tricks, a
//! fixed polynomial (Horner form, fixed order) and Newton steps. A WGSL port keeps the
//! same code shape line for line and so gets the same bits wherever the device does
//! IEEE 754 binary32 `+ - *` with round-to-nearest-even and no contraction.
//!
//! # Subnormals
//!
//! The storage rule of the whole runtime: every value written into a tensor is passed
//! through [`ftz`], so tensors never hold subnormals. Inside one kernel the arithmetic is
//! plain IEEE binary32 (gradual underflow); the results of the functions in this module
//! are themselves flushed. A device that flushes intermediate subnormals differs from
//! the reference only on inputs that reach the subnormal range mid-kernel; the
//! known-answer suite (`kat.rs`) includes such inputs, so that device lands in the
//! tolerant class instead of silently disagreeing.
//!
//! # Special inputs
//!
//! Tensors reject NaN and infinities at construction, so kernels never see them. The
//! functions are still total and documented per function: NaN in gives the canonical
//! NaN out; out-of-range inputs saturate to a finite value.
//!
//! # Accuracy (measured by the tests in this file against f64, which assert these bounds)
//!
//! | function | inputs checked | max error |
//! |---|---|---|
//! | [`exp`] | 200,001 evenly spaced points of [-87, 88] | 1 ULP |
//! | [`ln`] | every 997th positive normal float | 1 ULP |
//! | [`reciprocal`] | every 613th normal float, both signs | 1 ULP |
//! | [`rsqrt`] | every 577th positive normal float | 1 ULP |
//! | [`sqrt`] | every 4099th positive normal float | 2 ULP |

/// The canonical NaN bit pattern used everywhere a NaN could be hashed.
pub const CANONICAL_NAN_BITS: u32 = 0x7fc0_0000;

const EXP_MASK: u32 = 0x7f80_0000;
const SIGN_MASK: u32 = 0x8000_0000;
const MANT_MASK: u32 = 0x007f_ffff;

/// 2^-24 exactly: scales a 24-bit integer into [0, 1) without a division.
pub const TWO_POW_MINUS_24: f32 = 5.960_464_5e-8;

/// 1.5 * 2^23: adding and subtracting it rounds an `f32` with |x| < 2^22 to the nearest
/// integer, ties to even, by the IEEE rounding of the addition itself.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// Flushes a subnormal to zero of the same sign; every other value is returned as is.
#[inline(always)]
pub fn ftz(x: f32) -> f32 {
    let bits = x.to_bits();
    if bits & EXP_MASK == 0 {
        f32::from_bits(bits & SIGN_MASK)
    } else {
        x
    }
}

/// Returns the canonical bit pattern of `x` for hashing: NaN becomes `0x7fc00000`,
/// subnormals are flushed to a zero of the same sign, everything else is unchanged.
#[inline]
pub fn canonical_bits(x: f32) -> u32 {
    if x.is_nan() {
        CANONICAL_NAN_BITS
    } else {
        ftz(x).to_bits()
    }
}

/// Rounds to the nearest integer, ties to even, for |x| < 2^22 (exact bit trick).
/// Larger magnitudes are already integers and are returned unchanged.
#[inline(always)]
pub fn round_ne(x: f32) -> f32 {
    if x.abs() < 4_194_304.0 {
        (x + ROUND_MAGIC) - ROUND_MAGIC
    } else {
        x
    }
}

/// `2^n` for `n` in [-126, 127], built from its exponent bits.
#[inline(always)]
fn pow2i(n: i32) -> f32 {
    f32::from_bits(((n + 127) as u32) << 23)
}

/// Scales `x` by `2^n` for `n` in [-252, 254] with two exact multiplications, so that
/// neither factor leaves the normal range; the result is flushed.
#[inline(always)]
fn ldexp(x: f32, n: i32) -> f32 {
    let n1 = n >> 1;
    let n2 = n - n1;
    ftz(x * pow2i(n1) * pow2i(n2))
}

/// Largest input of [`exp`]; above it the result saturates at `exp(EXP_MAX_INPUT)`.
pub const EXP_MAX_INPUT: f32 = 88.0;
/// Below this input `exp` underflows to the subnormal range and returns `+0`.
pub const EXP_MIN_INPUT: f32 = -87.336_54;

/// e^x: Cody-Waite reduction by n = round(x / ln 2) (exact: `n * C1` has at most 17
/// significant bits), the cephes `expf` polynomial on [-ln2/2, ln2/2], then scaling by
/// `2^n` through exponent bits. NaN gives NaN; x > 88 saturates to e^88; x below
/// [`EXP_MIN_INPUT`] gives +0.
pub fn exp(x: f32) -> f32 {
    if x.is_nan() {
        return f32::from_bits(CANONICAL_NAN_BITS);
    }
    if x < EXP_MIN_INPUT {
        return 0.0;
    }
    let x = if x > EXP_MAX_INPUT { EXP_MAX_INPUT } else { x };
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // C1 = 355/512 exactly (the literal is its shortest decimal form).
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    let nf = (x * LOG2E + ROUND_MAGIC) - ROUND_MAGIC;
    let n = nf as i32;
    let r = x - nf * C1;
    let r = r - nf * C2;
    let r2 = r * r;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5e-1;
    let e = p * r2 + r + 1.0;
    ldexp(e, n)
}

/// Natural logarithm: split x = m * 2^e with m in [sqrt(1/2), sqrt(2)) by exponent
/// bits, the cephes `logf` polynomial in (m - 1), and e * ln 2 added in two parts.
/// NaN or x < 0 gives NaN; x = 0 (or subnormal) saturates to `f32::MIN`;
/// +inf saturates to `f32::MAX`.
pub fn ln(x: f32) -> f32 {
    if x.is_nan() || x < 0.0 {
        return f32::from_bits(CANONICAL_NAN_BITS);
    }
    let bits = x.to_bits();
    if bits & EXP_MASK == 0 {
        return f32::MIN;
    }
    if x == f32::INFINITY {
        return f32::MAX;
    }
    // frexp: m in [0.5, 1), x = m * 2^e.
    let mut e = ((bits >> 23) & 0xff) as i32 - 126;
    let m = f32::from_bits((bits & MANT_MASK) | 0x3f00_0000);
    const SQRT_HALF: f32 = std::f32::consts::FRAC_1_SQRT_2;
    let f = if m < SQRT_HALF {
        e -= 1;
        m + m - 1.0
    } else {
        m - 1.0
    };
    let z = f * f;
    let mut p = 7.037_683_6e-2;
    p = p * f - 1.151_461e-1;
    p = p * f + 1.167_699_9e-1;
    p = p * f - 1.242_014_1e-1;
    p = p * f + 1.424_932_3e-1;
    p = p * f - 1.666_805_8e-1;
    p = p * f + 2.000_071_4e-1;
    p = p * f - 2.499_999_4e-1;
    p = p * f + 3.333_333e-1;
    let fe = e as f32;
    let mut y = p * f * z;
    y += fe * -2.121_944_4e-4;
    y += z * -0.5;
    let r = f + y;
    ftz(r + fe * 0.693_359_4)
}

/// 1/x: split x = m * 2^e with m in [0.5, 1), a linear first guess (48/17 - 32/17 m,
/// relative error under 1/17), three Newton steps `y + y(1 - m y)`, then scaling by
/// 2^-e through exponent bits. NaN gives NaN; ±0 or a subnormal saturates to
/// ±`f32::MAX`; ±inf gives ±0; results in the subnormal range are flushed.
pub fn reciprocal(x: f32) -> f32 {
    if x.is_nan() {
        return f32::from_bits(CANONICAL_NAN_BITS);
    }
    let bits = x.to_bits();
    let sign = bits & SIGN_MASK;
    let ef = (bits & EXP_MASK) >> 23;
    if ef == 0 {
        return f32::from_bits(sign | f32::MAX.to_bits());
    }
    if ef == 0xff {
        return f32::from_bits(sign);
    }
    // x = m * 2^e with m in [0.5, 1).
    let e = ef as i32 - 126;
    let m = f32::from_bits((bits & MANT_MASK) | 0x3f00_0000);
    let mut y = 2.823_529_4 - 1.882_353 * m;
    for _ in 0..3 {
        let err = 1.0 - m * y;
        y = y + y * err;
    }
    let r = ldexp(y, -e);
    f32::from_bits(r.to_bits() | sign)
}

/// 1/sqrt(x): split x = m * 2^(2k) with m in [1, 4), the classic bit-trick first guess
/// on m, three Newton steps `y + y(1/2 - (m/2) y^2)`, then scaling by 2^-k. NaN or
/// x < 0 gives NaN; x = 0 or a subnormal saturates to `f32::MAX`; +inf gives +0.
pub fn rsqrt(x: f32) -> f32 {
    if x.is_nan() || x < 0.0 {
        return f32::from_bits(CANONICAL_NAN_BITS);
    }
    let bits = x.to_bits();
    let ef = (bits & EXP_MASK) >> 23;
    if ef == 0 {
        return f32::MAX;
    }
    if ef == 0xff {
        return 0.0;
    }
    let e = ef as i32 - 127;
    let odd = e & 1;
    let k = (e - odd) >> 1;
    let m = f32::from_bits((bits & MANT_MASK) | (((127 + odd) as u32) << 23));
    let mut y = f32::from_bits(0x5f37_59df - (m.to_bits() >> 1));
    let h = 0.5 * m;
    for _ in 0..3 {
        let t = 0.5 - h * y * y;
        y = y + y * t;
    }
    ldexp(y, -k)
}

/// sqrt(x) as `x * rsqrt(x)`, with sqrt(0) = 0. Same special cases as [`rsqrt`]
/// otherwise; +inf saturates to `f32::MAX`.
pub fn sqrt(x: f32) -> f32 {
    if x.is_nan() || x < 0.0 {
        return f32::from_bits(CANONICAL_NAN_BITS);
    }
    if ftz(x) == 0.0 {
        return 0.0;
    }
    if x == f32::INFINITY {
        return f32::MAX;
    }
    ftz(x * rsqrt(x))
}

/// 1/n for a count, through [`reciprocal`] (n < 2^24 converts to `f32` exactly).
pub fn recip_count(n: usize) -> f32 {
    reciprocal(n as f32)
}

/// `base^n` by exponentiation by squaring (fixed sequence of `*`, flushed each step).
pub fn powi(base: f32, mut n: u64) -> f32 {
    let mut acc = 1.0f32;
    let mut b = base;
    while n > 0 {
        if n & 1 == 1 {
            acc = ftz(acc * b);
        }
        b = ftz(b * b);
        n >>= 1;
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place between an f32 result and the f64 truth
    /// rounded to f32.
    fn ulp_err(got: f32, truth: f64) -> u64 {
        let t = truth as f32;
        let a = got.to_bits() as i64;
        let b = t.to_bits() as i64;
        if got.is_sign_negative() != t.is_sign_negative() {
            return (a & 0x7fff_ffff) as u64 + (b & 0x7fff_ffff) as u64;
        }
        (a - b).unsigned_abs()
    }

    /// A deterministic sweep of `n` floats between `lo` and `hi`.
    fn sweep(lo: f32, hi: f32, n: usize) -> impl Iterator<Item = f32> {
        (0..=n).map(move |i| lo + (hi - lo) * (i as f32 / n as f32))
    }

    /// Every positive normal float with a stride through the bit patterns.
    fn positive_normals(stride: u32) -> impl Iterator<Item = f32> {
        (0x0080_0000u32..0x7f80_0000)
            .step_by(stride as usize)
            .map(f32::from_bits)
    }

    #[test]
    fn exp_within_one_ulp() {
        let mut worst = 0;
        for x in sweep(-87.0, 88.0, 200_000) {
            let e = ulp_err(exp(x), (x as f64).exp());
            worst = worst.max(e);
        }
        assert!(worst <= 1, "exp worst error {worst} ulp");
    }

    #[test]
    fn exp_edges() {
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-0.0), 1.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(-87.5), 0.0);
        assert_eq!(exp(1000.0), exp(88.0));
        assert!(exp(88.0).is_finite());
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(f32::NAN).to_bits(), CANONICAL_NAN_BITS);
        // Results near the bottom of the range never come out subnormal.
        for x in sweep(-87.4, -86.0, 10_000) {
            let y = exp(x);
            assert!(y == 0.0 || y.is_normal(), "exp({x}) = {y:e} is subnormal");
        }
    }

    #[test]
    fn ln_within_one_ulp() {
        let mut worst = 0;
        for x in positive_normals(997) {
            let truth = (x as f64).ln();
            let e = ulp_err(ln(x), truth);
            worst = worst.max(e);
        }
        assert!(worst <= 1, "ln worst error {worst} ulp");
        assert_eq!(ln(1.0), 0.0);
    }

    #[test]
    fn ln_edges() {
        assert_eq!(ln(0.0), f32::MIN);
        assert_eq!(ln(1e-40), f32::MIN);
        assert_eq!(ln(f32::INFINITY), f32::MAX);
        assert_eq!(ln(-1.0).to_bits(), CANONICAL_NAN_BITS);
        assert_eq!(ln(f32::NAN).to_bits(), CANONICAL_NAN_BITS);
    }

    #[test]
    fn reciprocal_within_one_ulp() {
        let mut worst = 0;
        for x in positive_normals(613) {
            let truth = 1.0 / x as f64;
            let got = reciprocal(x);
            if (truth as f32).is_normal() {
                worst = worst.max(ulp_err(got, truth));
            } else {
                assert_eq!(got, 0.0, "1/{x:e} must flush");
            }
            assert_eq!(reciprocal(-x).to_bits(), got.to_bits() | SIGN_MASK);
        }
        assert!(worst <= 1, "reciprocal worst error {worst} ulp");
        for n in 1..5000usize {
            assert!(ulp_err(recip_count(n), 1.0 / n as f64) <= 1);
        }
        assert_eq!(reciprocal(1.0), 1.0);
        assert_eq!(reciprocal(2.0), 0.5);
        assert_eq!(reciprocal(0.25), 4.0);
    }

    #[test]
    fn reciprocal_edges() {
        assert_eq!(reciprocal(0.0), f32::MAX);
        assert_eq!(reciprocal(-0.0), -f32::MAX);
        assert_eq!(reciprocal(1e-40), f32::MAX);
        assert_eq!(reciprocal(f32::INFINITY), 0.0);
        assert_eq!(reciprocal(f32::NEG_INFINITY).to_bits(), SIGN_MASK);
        assert_eq!(reciprocal(f32::NAN).to_bits(), CANONICAL_NAN_BITS);
        assert_eq!(reciprocal(f32::MAX), 0.0);
    }

    #[test]
    fn rsqrt_within_one_ulp() {
        let mut worst = 0;
        for x in positive_normals(577) {
            let truth = 1.0 / (x as f64).sqrt();
            worst = worst.max(ulp_err(rsqrt(x), truth));
        }
        assert!(worst <= 1, "rsqrt worst error {worst} ulp");
        assert_eq!(rsqrt(4.0), 0.5);
        assert_eq!(rsqrt(1.0), 1.0);
    }

    #[test]
    fn rsqrt_and_sqrt_edges() {
        assert_eq!(rsqrt(0.0), f32::MAX);
        assert_eq!(rsqrt(1e-42), f32::MAX);
        assert_eq!(rsqrt(f32::INFINITY), 0.0);
        assert_eq!(rsqrt(-1.0).to_bits(), CANONICAL_NAN_BITS);
        assert_eq!(sqrt(0.0), 0.0);
        assert_eq!(sqrt(16.0), 4.0);
        assert_eq!(sqrt(f32::INFINITY), f32::MAX);
        assert_eq!(sqrt(-2.0).to_bits(), CANONICAL_NAN_BITS);
        let mut worst = 0;
        for x in positive_normals(4099) {
            worst = worst.max(ulp_err(sqrt(x), (x as f64).sqrt()));
        }
        assert!(worst <= 2, "sqrt worst error {worst} ulp");
    }

    #[test]
    fn ftz_round_and_powers() {
        assert_eq!(ftz(1e-40), 0.0);
        assert_eq!(ftz(-1e-40).to_bits(), SIGN_MASK);
        assert_eq!(ftz(f32::MIN_POSITIVE), f32::MIN_POSITIVE);
        assert_eq!(
            canonical_bits(f32::from_bits(0x7fc0_1234)),
            CANONICAL_NAN_BITS
        );
        assert_eq!(round_ne(2.5), 2.0);
        assert_eq!(round_ne(3.5), 4.0);
        assert_eq!(round_ne(-2.5), -2.0);
        assert_eq!(round_ne(-0.4), 0.0);
        assert_eq!(round_ne(1e9), 1e9);
        assert_eq!(powi(0.5, 10), 1.0 / 1024.0);
        assert_eq!(TWO_POW_MINUS_24.to_bits(), 0x3380_0000);
        assert_eq!(powi(3.0, 0), 1.0);
        assert_eq!(powi(0.9, 100_000), 0.0);
        let p = powi(0.999, 1000) as f64;
        assert!((p - 0.999f64.powi(1000)).abs() < 1e-4);
    }
}
