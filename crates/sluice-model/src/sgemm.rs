//! f32 matrix products for float weights held as f32 (the BERT encoder):
//! `out[t][r] = Σ_k w[r][k] · x[t][k]`, register-tiled — AVX-512: 4 weight rows × 4 tokens,
//! AVX2 + FMA: 2 × 4 — so each loaded vector feeds several FMAs; row bands are split across the
//! thread pool. Unlike the decoder's kernels these are not bit-equal to a one-row dot product
//! (embeddings need only be close; the golden test checks how close).

use rayon::prelude::*;

use crate::weights::OutPtr;

/// Weight rows per task.
const BAND: usize = 16;

/// `out` (`n × rows`) = `x` (`n × k`) · `w`ᵀ (`w` is `rows × k`), all row-major.
pub fn sgemm_nt(w: &[f32], x: &[f32], k: usize, out: &mut [f32]) {
    let rows = w.len() / k;
    let n = x.len() / k;
    assert_eq!(out.len(), n * rows, "sgemm_nt: output shape");
    let ptr = OutPtr(out.as_mut_ptr());
    (0..rows.div_ceil(BAND)).into_par_iter().for_each(|b| {
        let (r0, r1) = (b * BAND, ((b + 1) * BAND).min(rows));
        #[cfg(target_arch = "x86_64")]
        {
            if k.is_multiple_of(16) && std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the feature was detected; indexes stay inside w, x (shapes above) and
                // this task's columns r0..r1 of out.
                unsafe { x86::band_avx512(w, x, k, rows, r0, r1, ptr) };
                return;
            }
            if k.is_multiple_of(8) && std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                // SAFETY: as above.
                unsafe { x86::band_avx2(w, x, k, rows, r0, r1, ptr) };
                return;
            }
        }
        for t in 0..n {
            for r in r0..r1 {
                let v = w[r * k..(r + 1) * k].iter().zip(&x[t * k..(t + 1) * k]).map(|(a, b)| a * b).sum();
                // SAFETY: in bounds; only this task writes columns r0..r1.
                unsafe { *ptr.at(t * rows + r) = v };
            }
        }
    });
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use crate::weights::OutPtr;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum256(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    }

    /// Rows r0..r1 of `out` for every token, AVX-512 (`k` a multiple of 16).
    ///
    /// # Safety
    /// AVX-512F must be available; `w` is `rows × k`, `x` is `n × k`, `out` is `n × rows`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn band_avx512(w: &[f32], x: &[f32], k: usize, rows: usize, r0: usize, r1: usize, out: OutPtr) {
        let n = x.len() / k;
        let (wp, xp) = (w.as_ptr(), x.as_ptr());
        let mut t = 0;
        while t + 4 <= n {
            let mut r = r0;
            while r + 4 <= r1 {
                let mut acc = [_mm512_setzero_ps(); 16];
                let mut i = 0;
                while i < k {
                    // SAFETY (loads): rows r..r+4 and tokens t..t+4 exist; i + 16 <= k.
                    let (w0, w1, w2, w3) = unsafe {
                        (
                            _mm512_loadu_ps(wp.add(r * k + i)),
                            _mm512_loadu_ps(wp.add((r + 1) * k + i)),
                            _mm512_loadu_ps(wp.add((r + 2) * k + i)),
                            _mm512_loadu_ps(wp.add((r + 3) * k + i)),
                        )
                    };
                    for tt in 0..4 {
                        // SAFETY: as above.
                        let xv = unsafe { _mm512_loadu_ps(xp.add((t + tt) * k + i)) };
                        acc[tt] = _mm512_fmadd_ps(w0, xv, acc[tt]);
                        acc[4 + tt] = _mm512_fmadd_ps(w1, xv, acc[4 + tt]);
                        acc[8 + tt] = _mm512_fmadd_ps(w2, xv, acc[8 + tt]);
                        acc[12 + tt] = _mm512_fmadd_ps(w3, xv, acc[12 + tt]);
                    }
                    i += 16;
                }
                for j in 0..4 {
                    for tt in 0..4 {
                        // SAFETY: in bounds; only this task writes columns r0..r1.
                        unsafe { *out.at((t + tt) * rows + r + j) = _mm512_reduce_add_ps(acc[4 * j + tt]) };
                    }
                }
                r += 4;
            }
            for r in r..r1 {
                for tt in 0..4 {
                    // SAFETY: as above.
                    unsafe { *out.at((t + tt) * rows + r) = dot512(wp.add(r * k), xp.add((t + tt) * k), k) };
                }
            }
            t += 4;
        }
        for t in t..n {
            for r in r0..r1 {
                // SAFETY: as above.
                unsafe { *out.at(t * rows + r) = dot512(wp.add(r * k), xp.add(t * k), k) };
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn dot512(a: *const f32, b: *const f32, k: usize) -> f32 {
        let mut acc = _mm512_setzero_ps();
        let mut i = 0;
        while i < k {
            // SAFETY: the caller passes rows of k elements; i + 16 <= k.
            acc = unsafe { _mm512_fmadd_ps(_mm512_loadu_ps(a.add(i)), _mm512_loadu_ps(b.add(i)), acc) };
            i += 16;
        }
        _mm512_reduce_add_ps(acc)
    }

    /// Rows r0..r1 of `out` for every token, AVX2 + FMA (`k` a multiple of 8).
    ///
    /// # Safety
    /// AVX2 and FMA must be available; shapes as for `band_avx512`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn band_avx2(w: &[f32], x: &[f32], k: usize, rows: usize, r0: usize, r1: usize, out: OutPtr) {
        let n = x.len() / k;
        let (wp, xp) = (w.as_ptr(), x.as_ptr());
        let mut t = 0;
        while t + 4 <= n {
            let mut r = r0;
            while r + 2 <= r1 {
                let mut acc = [_mm256_setzero_ps(); 8];
                let mut i = 0;
                while i < k {
                    // SAFETY (loads): rows r, r+1 and tokens t..t+4 exist; i + 8 <= k.
                    let (w0, w1) = unsafe { (_mm256_loadu_ps(wp.add(r * k + i)), _mm256_loadu_ps(wp.add((r + 1) * k + i))) };
                    for tt in 0..4 {
                        // SAFETY: as above.
                        let xv = unsafe { _mm256_loadu_ps(xp.add((t + tt) * k + i)) };
                        acc[tt] = _mm256_fmadd_ps(w0, xv, acc[tt]);
                        acc[4 + tt] = _mm256_fmadd_ps(w1, xv, acc[4 + tt]);
                    }
                    i += 8;
                }
                for j in 0..2 {
                    for tt in 0..4 {
                        // SAFETY: in bounds; only this task writes columns r0..r1.
                        unsafe { *out.at((t + tt) * rows + r + j) = hsum256(acc[4 * j + tt]) };
                    }
                }
                r += 2;
            }
            for r in r..r1 {
                for tt in 0..4 {
                    // SAFETY: as above.
                    unsafe { *out.at((t + tt) * rows + r) = dot256(wp.add(r * k), xp.add((t + tt) * k), k) };
                }
            }
            t += 4;
        }
        for t in t..n {
            for r in r0..r1 {
                // SAFETY: as above.
                unsafe { *out.at(t * rows + r) = dot256(wp.add(r * k), xp.add(t * k), k) };
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot256(a: *const f32, b: *const f32, k: usize) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i < k {
            // SAFETY: the caller passes rows of k elements; i + 8 <= k.
            acc = unsafe { _mm256_fmadd_ps(_mm256_loadu_ps(a.add(i)), _mm256_loadu_ps(b.add(i)), acc) };
            i += 8;
        }
        hsum256(acc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_plain_product_on_every_shape() {
        for (rows, k, n) in [(384usize, 384usize, 1usize), (1536, 384, 7), (384, 1536, 13), (6, 32, 5), (5, 24, 9), (3, 10, 2)] {
            let w: Vec<f32> = (0..rows * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 97.0).collect();
            let x: Vec<f32> = (0..n * k).map(|i| ((i * 53 % 89) as f32 - 44.0) / 71.0).collect();
            let mut out = vec![0f32; n * rows];
            sgemm_nt(&w, &x, k, &mut out);
            for t in 0..n {
                for r in 0..rows {
                    let want: f64 = (0..k).map(|i| f64::from(w[r * k + i]) * f64::from(x[t * k + i])).sum();
                    let got = f64::from(out[t * rows + r]);
                    assert!((got - want).abs() < 1e-4 * (1.0 + want.abs()), "{rows}x{k}, n={n}, t={t} r={r}: {got} vs {want}");
                }
            }
        }
    }
}
