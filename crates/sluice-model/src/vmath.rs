//! `exp` and SiLU as our numerical reference (ggml's AVX2 build) computes them in softmax and in
//! the gated feed-forward: a range reduction to `2^n · e^b` and a degree-5 polynomial, about one
//! ulp from the correctly rounded value. The library `exp` differs from it in the last bit for
//! many inputs, and such bits grow into logit differences through every layer's 8-bit activation
//! quantization, so we use the same polynomial. The scalar form and the AVX2 form agree bit for
//! bit (every step is a correctly rounded add, multiply or fused multiply-add).

use crate::quant::Isa;

const SHIFTER: u32 = 0x4b40_0000; // 1.5 · 2^23: adding it rounds to an integer
const LOG2E: u32 = 0x3fb8_aa3b;
const LN2_HI: u32 = 0x3f31_7200;
const LN2_LO: u32 = 0x35bf_be8e;
const P5: u32 = 0x3c07_2010;
const P4: u32 = 0x3d2b_9f17;
const P3: u32 = 0x3e2a_af33;
const P2: u32 = 0x3eff_fedb;
const P1: u32 = 0x3f7f_fff6;

#[inline]
fn f(bits: u32) -> f32 {
    f32::from_bits(bits)
}

/// `e^x`, the reference's polynomial (0 for -inf, inf beyond the float range).
#[inline]
pub fn expf(x: f32) -> f32 {
    let z = x.mul_add(f(LOG2E), f(SHIFTER));
    let n = z - f(SHIFTER);
    let b = (-n).mul_add(f(LN2_LO), (-n).mul_add(f(LN2_HI), x));
    let e = z.to_bits() << 23;
    let k = f(e.wrapping_add(1f32.to_bits()));
    let u = b * b;
    let j = f(P5).mul_add(b, f(P4)).mul_add(u, f(P3).mul_add(b, f(P2))).mul_add(u, f(P1) * b);
    if n.abs() <= 126.0 {
        return j.mul_add(k, k);
    }
    // Scale in two steps so that 2^n does not overflow or underflow on the way.
    let g = if n <= 0.0 { 0x8200_0000u32 } else { 0 };
    let s1 = f(g.wrapping_add(0x7f00_0000));
    if n.abs() > 192.0 {
        return s1 * s1;
    }
    let s2 = f(e.wrapping_sub(g));
    s2.mul_add(j, s2) * s1
}

/// `x / (1 + e^-x)`.
#[inline]
fn silu(x: f32) -> f32 {
    x / (1.0 + expf(-x))
}

/// `gate[i] = silu(gate[i]) · up[i]`: whole groups of eight with the polynomial, a remainder
/// with the library `exp` (as the reference's vector loop and its scalar tail do).
pub fn silu_mul(isa: Isa, gate: &mut [f32], up: &[f32]) {
    let n = gate.len().min(up.len());
    let groups = n / 8 * 8;
    #[cfg(target_arch = "x86_64")]
    let done = if isa.has_avx2() {
        // SAFETY: AVX2/FMA were detected.
        unsafe { avx2::silu_mul(&mut gate[..groups], &up[..groups]) }
    } else {
        0
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    let _ = isa;
    for (g, u) in gate[done..groups].iter_mut().zip(&up[done..groups]) {
        *g = silu(*g) * u;
    }
    for (g, u) in gate[groups..n].iter_mut().zip(&up[groups..n]) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// Rounds every value to the nearest half-precision value (ties to even), in place.
pub fn round_to_half(isa: Isa, x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    let done = if isa.has_avx2() {
        // SAFETY: AVX2/F16C were detected.
        unsafe { avx2::round_to_half(x) }
    } else {
        0
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    let _ = isa;
    x[done..].iter_mut().for_each(|v| *v = half::f16::from_f32(*v).to_f32());
}

/// The half-precision bit patterns of `x` (nearest, ties to even) into `out` (as long as `x`).
pub fn to_half_bits(isa: Isa, x: &[f32], out: &mut [u16]) {
    debug_assert_eq!(x.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    let done = if isa.has_avx2() {
        // SAFETY: AVX2/F16C were detected (`Isa::has_avx2`).
        unsafe { avx2::to_half_bits(x, out) }
    } else {
        0
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = {
        let _ = isa;
        0
    };
    for (o, v) in out[done..].iter_mut().zip(&x[done..]) {
        *o = half::f16::from_f32(*v).to_bits();
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn splat(bits: u32) -> __m256 {
        _mm256_set1_ps(f32::from_bits(bits))
    }

    /// Eight lanes of [`expf`].
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub fn expf8(x: __m256) -> __m256 {
        let r = splat(SHIFTER);
        let z = _mm256_fmadd_ps(x, splat(LOG2E), r);
        let n = _mm256_sub_ps(z, r);
        let b = _mm256_fnmadd_ps(n, splat(LN2_LO), _mm256_fnmadd_ps(n, splat(LN2_HI), x));
        let e = _mm256_slli_epi32::<23>(_mm256_castps_si256(z));
        let k = _mm256_castsi256_ps(_mm256_add_epi32(e, _mm256_castps_si256(_mm256_set1_ps(1.0))));
        let abs_n = _mm256_andnot_ps(_mm256_set1_ps(-0.0), n);
        let c = _mm256_cmp_ps::<_CMP_GT_OQ>(abs_n, _mm256_set1_ps(126.0));
        let u = _mm256_mul_ps(b, b);
        let j = _mm256_fmadd_ps(
            _mm256_fmadd_ps(_mm256_fmadd_ps(splat(P5), b, splat(P4)), u, _mm256_fmadd_ps(splat(P3), b, splat(P2))),
            u,
            _mm256_mul_ps(splat(P1), b),
        );
        if _mm256_movemask_ps(c) == 0 {
            return _mm256_fmadd_ps(j, k, k);
        }
        let g = _mm256_and_si256(
            _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(n, _mm256_setzero_ps())),
            _mm256_set1_epi32(0x8200_0000u32 as i32),
        );
        let s1 = _mm256_castsi256_ps(_mm256_add_epi32(g, _mm256_set1_epi32(0x7f00_0000)));
        let s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
        let d = _mm256_cmp_ps::<_CMP_GT_OQ>(abs_n, _mm256_set1_ps(192.0));
        _mm256_or_ps(
            _mm256_and_ps(d, _mm256_mul_ps(s1, s1)),
            _mm256_andnot_ps(
                d,
                _mm256_or_ps(
                    _mm256_and_ps(c, _mm256_mul_ps(_mm256_fmadd_ps(s2, j, s2), s1)),
                    _mm256_andnot_ps(c, _mm256_fmadd_ps(k, j, k)),
                ),
            ),
        )
    }

    /// [`super::round_to_half`] over whole groups of eight; returns how many elements it did.
    ///
    /// # Safety
    /// AVX2 and F16C required.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn round_to_half(x: &mut [f32]) -> usize {
        let n = x.len() / 8 * 8;
        for i in (0..n).step_by(8) {
            // SAFETY: `i + 8 <= n <= x.len()`.
            unsafe {
                let p = x.as_mut_ptr().add(i);
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(p));
                _mm256_storeu_ps(p, _mm256_cvtph_ps(h));
            }
        }
        n
    }

    /// [`super::to_half_bits`] over whole groups of eight; returns how many elements it did.
    ///
    /// # Safety
    /// AVX2 and F16C required.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn to_half_bits(x: &[f32], out: &mut [u16]) -> usize {
        let n = x.len().min(out.len()) / 8 * 8;
        for i in (0..n).step_by(8) {
            // SAFETY: `i + 8 <= n`, within both slices.
            unsafe {
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(x.as_ptr().add(i)));
                _mm_storeu_si128(out.as_mut_ptr().add(i) as *mut __m128i, h);
            }
        }
        n
    }

    /// SiLU times `up` over whole groups of eight; returns how many elements it did.
    ///
    /// # Safety
    /// AVX2 and FMA required; `gate.len() == up.len()`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn silu_mul(gate: &mut [f32], up: &[f32]) -> usize {
        let n = gate.len() / 8 * 8;
        let one = _mm256_set1_ps(1.0);
        for i in (0..n).step_by(8) {
            // SAFETY: `i + 8 <= n <= len` for both slices.
            unsafe {
                let x = _mm256_loadu_ps(gate.as_ptr().add(i));
                let e = expf8(_mm256_sub_ps(_mm256_setzero_ps(), x));
                let s = _mm256_div_ps(x, _mm256_add_ps(one, e));
                _mm256_storeu_ps(gate.as_mut_ptr().add(i), _mm256_mul_ps(s, _mm256_loadu_ps(up.as_ptr().add(i))));
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn polynomial_exp_is_within_two_ulp_of_the_library_exp() {
        for i in -2000..=2000 {
            let x = i as f32 * 0.0437;
            let (a, b) = (expf(x), x.exp());
            let ulp = (b.to_bits() as i64 - a.to_bits() as i64).abs();
            assert!(ulp <= 2 || (a == 0.0 && b < 1e-37), "exp({x}) = {a}, library {b}");
        }
        assert_eq!(expf(f32::NEG_INFINITY), 0.0);
        assert_eq!(expf(0.0), 1.0);
        assert_eq!(expf(100.0), f32::INFINITY);
    }

    #[test]
    fn rounding_to_half_precision_matches_the_scalar_conversion() {
        let isa = crate::quant::detect_isa();
        let xs: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 1.37e-3 + (i % 7) as f32 * 3.1e-6).chain([1e-7, 7e4, -7e4, 6.1e-5]).collect();
        let mut v = xs.clone();
        round_to_half(isa, &mut v);
        for (x, r) in xs.iter().zip(&v) {
            assert_eq!(r.to_bits(), half::f16::from_f32(*x).to_f32().to_bits(), "{x}");
        }
    }

    #[test]
    fn half_bits_match_the_scalar_conversion() {
        let xs: Vec<f32> = (0..1003).map(|i| (i as f32 - 500.0) * 2.9e-3 + (i % 5) as f32 * 1.3e-6).chain([1e-8, 7e4, -7e4, 6.1e-5, f32::INFINITY]).collect();
        for isa in [crate::quant::detect_isa(), Isa::Scalar] {
            let mut bits = vec![0u16; xs.len()];
            to_half_bits(isa, &xs, &mut bits);
            for (x, b) in xs.iter().zip(&bits) {
                assert_eq!(*b, half::f16::from_f32(*x).to_bits(), "{x} ({isa:?})");
            }
        }
    }

    #[test]
    fn simd_and_scalar_agree_bit_for_bit() {
        let isa = crate::quant::detect_isa();
        if !isa.has_avx2() {
            return;
        }
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut xs: Vec<f32> = (0..40_000)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                ((rng >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 260.0
            })
            .collect();
        xs.extend([f32::NEG_INFINITY, -150.0, -126.5, -88.0, 88.7, 126.5, 0.0, -0.0]);
        xs.truncate(xs.len() / 8 * 8);
        for c in xs.chunks_exact(8) {
            let mut got = [0f32; 8];
            // SAFETY: AVX2/FMA detected; `c` and `got` hold eight floats.
            unsafe {
                use std::arch::x86_64::*;
                _mm256_storeu_ps(got.as_mut_ptr(), avx2::expf8(_mm256_loadu_ps(c.as_ptr())));
            }
            for (x, g) in c.iter().zip(got) {
                assert_eq!(g.to_bits(), expf(*x).to_bits(), "exp({x})");
            }
        }
        let up: Vec<f32> = xs.iter().map(|x| x * 0.01 + 0.3).collect();
        let mut g = xs.iter().map(|x| x * 0.1).collect::<Vec<_>>();
        silu_mul(isa, &mut g, &up);
        for ((x, u), got) in xs.iter().zip(&up).zip(&g) {
            assert_eq!(got.to_bits(), (silu(x * 0.1) * u).to_bits(), "silu({})", x * 0.1);
        }
    }
}
