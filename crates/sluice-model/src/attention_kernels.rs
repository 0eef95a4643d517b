//! Per-head attention arithmetic, in the summation order of ggml's 8-lane × 4-accumulator
//! `vec_dot_f32` (our numerical reference): q·k over the head dimension, and the softmax-weighted
//! sum of values accumulated per position lane (position `p` feeds lane `p mod 32`). Matching the
//! order keeps our attention outputs bit-identical to the reference's. AVX2 when available.

use crate::quant::Isa;

/// Lanes of the reference's accumulation: 4 accumulators × 8 floats.
const LANES: usize = 32;

/// Reduces 32 lane sums in the reference's tree order.
#[inline]
fn reduce_lanes(acc: &[f32; LANES]) -> f32 {
    let mut v = [0f32; 8];
    for (l, x) in v.iter_mut().enumerate() {
        *x = (acc[l] + acc[16 + l]) + (acc[8 + l] + acc[24 + l]);
    }
    let t = [v[0] + v[4], v[1] + v[5], v[2] + v[6], v[3] + v[7]];
    (t[0] + t[1]) + (t[2] + t[3])
}

/// `Σ a[i]·b[i]`, lane-ordered (missing elements count as zero).
#[inline]
pub fn dot(isa: Isa, a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if isa.has_avx2() && a.len() == b.len() && a.len().is_multiple_of(LANES) {
        // SAFETY: AVX2/FMA were detected (Isa::Avx2) and the lengths are checked.
        return unsafe { avx2::dot(a, b) };
    }
    let _ = isa;
    let mut acc = [0f32; LANES];
    for (ca, cb) in a.chunks(LANES).zip(b.chunks(LANES)) {
        for (i, (x, y)) in ca.iter().zip(cb).enumerate() {
            acc[i] = x.mul_add(*y, acc[i]);
        }
    }
    reduce_lanes(&acc)
}

/// `out[d] = Σ_{p ≥ first} w[p] · v(p)[d]` where `v(p)` is the `d`-wide row of position `p`,
/// lane-ordered by absolute position. `scratch` holds `LANES × out.len()` floats.
pub fn weighted_sum(
    isa: Isa,
    first: usize,
    w: &[f32],
    v: impl Fn(usize) -> *const f32,
    out: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    let d = out.len();
    scratch.clear();
    scratch.resize(LANES * d, 0.0);
    #[cfg(target_arch = "x86_64")]
    if isa.has_avx2() && d.is_multiple_of(8) {
        for (p, &wp) in w.iter().enumerate().skip(first) {
            let acc = &mut scratch[(p % LANES) * d..(p % LANES + 1) * d];
            // SAFETY: AVX2/FMA detected; `v(p)` points at `d` readable floats (caller contract).
            unsafe { avx2::axpy(acc, wp, v(p)) };
        }
        return finish(scratch, out);
    }
    let _ = isa;
    for (p, &wp) in w.iter().enumerate().skip(first) {
        let acc = &mut scratch[(p % LANES) * d..(p % LANES + 1) * d];
        // SAFETY: `v(p)` points at `d` readable floats (caller contract).
        let row = unsafe { std::slice::from_raw_parts(v(p), d) };
        for (a, x) in acc.iter_mut().zip(row) {
            *a = wp.mul_add(*x, *a);
        }
    }
    finish(scratch, out)
}

fn finish(scratch: &[f32], out: &mut [f32]) {
    let d = out.len();
    for (i, o) in out.iter_mut().enumerate() {
        let mut lanes = [0f32; LANES];
        for (l, x) in lanes.iter_mut().enumerate() {
            *x = scratch[l * d + i];
        }
        *o = reduce_lanes(&lanes);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX2 and FMA required; `a.len() == b.len()`, a multiple of 32.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut s = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i < a.len() {
            for (k, acc) in s.iter_mut().enumerate() {
                // SAFETY: i + 8k + 8 <= len (len is a multiple of 32).
                let (x, y) = unsafe { (_mm256_loadu_ps(pa.add(i + 8 * k)), _mm256_loadu_ps(pb.add(i + 8 * k))) };
                *acc = _mm256_fmadd_ps(x, y, *acc);
            }
            i += 32;
        }
        let v = _mm256_add_ps(_mm256_add_ps(s[0], s[2]), _mm256_add_ps(s[1], s[3]));
        let t = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let h = _mm_hadd_ps(t, t);
        _mm_cvtss_f32(_mm_hadd_ps(h, h))
    }

    /// `acc += w * x` over `acc.len()` floats (a multiple of 8).
    ///
    /// # Safety
    /// AVX2 and FMA required; `x` points at `acc.len()` readable floats.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn axpy(acc: &mut [f32], w: f32, x: *const f32) {
        let wv = _mm256_set1_ps(w);
        let pa = acc.as_mut_ptr();
        let mut i = 0;
        while i + 8 <= acc.len() {
            // SAFETY: i + 8 <= len for both buffers.
            unsafe {
                let a = _mm256_loadu_ps(pa.add(i));
                _mm256_storeu_ps(pa.add(i), _mm256_fmadd_ps(wv, _mm256_loadu_ps(x.add(i)), a));
            }
            i += 8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simd_and_scalar_agree_bit_for_bit() {
        let a: Vec<f32> = (0..64).map(|i| ((i * 37 % 17) as f32 - 8.0) * 0.013).collect();
        let b: Vec<f32> = (0..64).map(|i| ((i * 11 % 23) as f32 - 11.0) * 0.07).collect();
        let isa = crate::quant::detect_isa();
        assert_eq!(dot(isa, &a, &b).to_bits(), dot(Isa::Scalar, &a, &b).to_bits());
        let naive: f64 = a.iter().zip(&b).map(|(x, y)| (*x as f64) * (*y as f64)).sum();
        assert!((dot(isa, &a, &b) as f64 - naive).abs() < 1e-5);
        let w: Vec<f32> = (0..45).map(|i| 1.0 / (i as f32 + 1.0)).collect();
        let rows: Vec<f32> = (0..45 * 16).map(|i| (i % 7) as f32 - 3.0).collect();
        let (mut o1, mut o2, mut s) = (vec![0f32; 16], vec![0f32; 16], Vec::new());
        weighted_sum(isa, 0, &w, |p| rows[p * 16..].as_ptr(), &mut o1, &mut s);
        weighted_sum(Isa::Scalar, 0, &w, |p| rows[p * 16..].as_ptr(), &mut o2, &mut s);
        assert_eq!(o1, o2);
        for d in 0..16 {
            let naive: f32 = (0..45).map(|p| w[p] * rows[p * 16 + d]).sum();
            assert!((o1[d] - naive).abs() < 1e-4);
        }
    }
}
