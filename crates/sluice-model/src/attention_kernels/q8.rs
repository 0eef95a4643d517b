//! Attention over an 8-bit cache ([`crate::KvDtype::Q8_0`]): every 32 dimensions of a key or
//! value row are codes with one scale. No reference fixes these sums' order, so ours is defined
//! here, by the portable code, and the AVX2 forms are bit-equal to it: eight lanes (element `i`
//! of a run feeding lane `i mod 8`), each score's lanes reduced as `SumOrder::Dot` reduces (so
//! eight rows reduce together), each output's as `SumOrder::Tiled` does.

use crate::cache::Q8_CHUNK;
use crate::quant::Isa;

/// `(l0+l4) + (l2+l6)` plus `(l1+l5) + (l3+l7)`.
#[inline]
fn reduce8(a: &[f32; 8]) -> f32 {
    let h = |l: usize| a[l] + a[l + 4];
    (h(0) + h(2)) + (h(1) + h(3))
}

/// `(l0+l4) + (l1+l5)` plus `(l2+l6) + (l3+l7)`.
#[inline]
fn reduce8_rows(a: &[f32; 8]) -> f32 {
    let h = |l: usize| a[l] + a[l + 4];
    (h(0) + h(1)) + (h(2) + h(3))
}

/// `out[h·n + p] = scale · Σ_c ks[p·C + c] · (q_h · codes_p)` over each 32-dimension chunk `c`
/// (`C` chunks per head), for every key row `p` and each of `heads` query heads (`q`:
/// `heads × dim`) sharing the keys.
///
/// # Safety
/// Every pointer in `rows` addresses `dim` readable codes; `ks` holds `rows.len() · dim / 32`
/// scales; `dim` is a multiple of 32.
pub unsafe fn scores(isa: Isa, heads: usize, q: &[f32], rows: &[*const u8], ks: &[f32], scale: f32, out: &mut [f32]) {
    let (dim, n) = (q.len() / heads.max(1), rows.len());
    let chunks = dim / Q8_CHUNK;
    debug_assert!(dim.is_multiple_of(Q8_CHUNK) && ks.len() >= n * chunks && out.len() == heads * n);
    #[cfg(target_arch = "x86_64")]
    if isa.has_avx2() {
        // SAFETY: AVX2/FMA detected; the rest is the caller's contract.
        unsafe { avx2::scores(heads, q, rows, ks, scale, out) };
        return;
    }
    let _ = isa;
    for (h, qh) in q.chunks_exact(dim.max(1)).enumerate() {
        for (p, &r) in rows.iter().enumerate() {
            let mut row = [0f32; 8];
            for c in 0..chunks {
                let mut acc = [0f32; 8];
                for i in c * Q8_CHUNK..(c + 1) * Q8_CHUNK {
                    // SAFETY: the row holds dim codes (caller contract).
                    let code = unsafe { *(r as *const i8).add(i) } as f32;
                    acc[i % 8] = qh[i].mul_add(code, acc[i % 8]);
                }
                let s = ks[p * chunks + c];
                row.iter_mut().zip(acc).for_each(|(r, a)| *r = a.mul_add(s, *r));
            }
            out[h * n + p] = reduce8_rows(&row) * scale;
        }
    }
}

/// `out[h·dim + d] = Σ_p w[(h·C + d/32)·n_pad + p] · V(p)[d]` over positions `p < n`: weights
/// already multiplied by each position's value scale for the chunk (`C` chunks per head;
/// `n_pad` = `n` rounded up to 8, the weights past `n` zero). Values are stored transposed per
/// block: dimension `d` of the block holding positions `i·bs..(i+1)·bs` is the run of `bs`
/// codes at `blocks[i] + d·bs`. Groups of eight positions below `first` (zero weights) are
/// skipped: their terms add exact zeros.
///
/// # Safety
/// `blocks` holds `n.div_ceil(bs)` pointers, each to `dim × bs` readable codes; `bs` is a
/// multiple of 8.
#[allow(clippy::too_many_arguments)]
pub unsafe fn weighted_sum(isa: Isa, first: usize, heads: usize, n: usize, w: &[f32], blocks: &[*const u8], bs: usize, out: &mut [f32]) {
    let dim = out.len() / heads.max(1);
    let (chunks, n_pad) = (dim / Q8_CHUNK, n.next_multiple_of(8));
    debug_assert!(bs.is_multiple_of(8) && w.len() >= heads * chunks * n_pad && blocks.len() >= n.div_ceil(bs));
    #[cfg(target_arch = "x86_64")]
    if isa.has_avx2() {
        // SAFETY: AVX2/FMA detected; the rest is the caller's contract.
        unsafe { avx2::weighted_sum(first / 8, heads, n_pad, w, blocks, bs, out) };
        return;
    }
    let _ = isa;
    for (h, oh) in out.chunks_exact_mut(dim.max(1)).enumerate() {
        for (d, o) in oh.iter_mut().enumerate() {
            let wd = &w[(h * chunks + d / Q8_CHUNK) * n_pad..][..n_pad];
            let mut acc = [0f32; 8];
            for p in first / 8 * 8..n {
                // SAFETY: position p's block holds dimension d (caller contract).
                let code = unsafe { *(blocks[p / bs] as *const i8).add(d * bs + p % bs) } as f32;
                acc[p % 8] = wd[p].mul_add(code, acc[p % 8]);
            }
            *o = reduce8(&acc);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::Q8_CHUNK;

    /// Eight codes from `p` as floats.
    ///
    /// # Safety
    /// AVX2 required; eight codes readable at `p`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn codes8(p: *const u8) -> __m256 {
        // SAFETY: the caller's contract.
        unsafe { _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i))) }
    }

    /// The parent's `reduce8` of one register.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn reduce8(a: __m256) -> f32 {
        let t = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        let t = _mm_add_ps(t, _mm_movehl_ps(t, t));
        _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)))
    }

    /// See [`super::scores`]: each row's codes are converted once for every head (up to eight
    /// at a time), and eight rows' lanes are reduced together.
    ///
    /// # Safety
    /// AVX2/FMA/F16C required; the parent's contract.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn scores(heads: usize, q: &[f32], rows: &[*const u8], ks: &[f32], scale: f32, out: &mut [f32]) {
        let (dim, n) = (q.len() / heads, rows.len());
        if heads > 8 {
            for (qs, os) in q.chunks(8 * dim).zip(out.chunks_mut(8 * n)) {
                // SAFETY: as this call.
                unsafe { scores(qs.len() / dim, qs, rows, ks, scale, os) };
            }
            return;
        }
        let chunks = dim / Q8_CHUNK;
        let sc = _mm256_set1_ps(scale);
        for (g, group) in rows.chunks(8).enumerate() {
            // v[h][i]: head h's lanes for row 8g + i.
            let mut v = [[_mm256_setzero_ps(); 8]; 8];
            for (i, &r) in group.iter().enumerate() {
                let p = 8 * g + i;
                for c in 0..chunks {
                    // SAFETY: the row holds dim codes; chunk c's 32 lie inside.
                    let y: [__m256; 4] = std::array::from_fn(|k| unsafe { codes8(r.add(c * Q8_CHUNK + 8 * k)) });
                    let s = _mm256_set1_ps(ks[p * chunks + c]);
                    for (h, vh) in v.iter_mut().enumerate().take(heads) {
                        let qp = q[h * dim + c * Q8_CHUNK..].as_ptr();
                        let mut acc = _mm256_setzero_ps();
                        for (k, y) in y.iter().enumerate() {
                            // SAFETY: eight query values of head h's chunk c.
                            acc = _mm256_fmadd_ps(unsafe { _mm256_loadu_ps(qp.add(8 * k)) }, *y, acc);
                        }
                        vh[i] = _mm256_fmadd_ps(acc, s, vh[i]);
                    }
                }
            }
            for (h, vh) in v.iter().enumerate().take(heads) {
                let mut res = [0f32; 8];
                // SAFETY: `res` holds eight floats.
                unsafe { _mm256_storeu_ps(res.as_mut_ptr(), _mm256_mul_ps(crate::attention_kernels::avx2::reduce8_dot(vh), sc)) };
                let o = &mut out[h * n + 8 * g..h * n + (8 * g + 8).min(n)];
                o.copy_from_slice(&res[..o.len()]);
            }
        }
    }

    /// See [`super::weighted_sum`], from group `g0` of eight positions: four dimensions at a
    /// time for every head (up to eight heads in registers per pass).
    ///
    /// # Safety
    /// AVX2/FMA/F16C required; the parent's contract.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn weighted_sum(g0: usize, heads: usize, n_pad: usize, w: &[f32], blocks: &[*const u8], bs: usize, out: &mut [f32]) {
        const D: usize = 4;
        let dim = out.len() / heads;
        let chunks = dim / Q8_CHUNK;
        for h0 in (0..heads).step_by(2) {
            let hs = (heads - h0).min(2);
            for d0 in (0..dim).step_by(D) {
                let mut acc = [[_mm256_setzero_ps(); D]; 2];
                let wp: [*const f32; 2] = std::array::from_fn(|j| w[((h0 + j.min(hs - 1)) * chunks + d0 / Q8_CHUNK) * n_pad..].as_ptr());
                for g in g0..n_pad / 8 {
                    let (b, at) = (8 * g / bs, 8 * g % bs);
                    // SAFETY: group g's block holds dimensions d0..d0+D, eight positions from
                    // `at` (bs a multiple of 8); the weights hold n_pad per chunk.
                    unsafe {
                        let vp = blocks.get_unchecked(b).add(at);
                        let v: [__m256; D] = std::array::from_fn(|k| codes8(vp.add((d0 + k) * bs)));
                        for (j, a) in acc.iter_mut().enumerate().take(hs) {
                            let wv = _mm256_loadu_ps(wp[j].add(8 * g));
                            for (a, v) in a.iter_mut().zip(&v) {
                                *a = _mm256_fmadd_ps(wv, *v, *a);
                            }
                        }
                    }
                }
                for (j, a) in acc.iter().enumerate().take(hs) {
                    for (k, a) in a.iter().enumerate() {
                        out[(h0 + j) * dim + d0 + k] = reduce8(*a);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::encode_q8;

    fn bits(o: &[f32]) -> Vec<u32> {
        o.iter().map(|v| v.to_bits()).collect()
    }

    /// The AVX2 kernels equal the portable definition bit for bit, and both approximate the
    /// float sums over the decoded values closely.
    #[test]
    fn simd_and_portable_agree_and_approximate_the_float_sums() {
        let isa = crate::quant::detect_isa();
        let value = |p: usize, i: usize| ((p * 31 + i * 17) % 29) as f32 * 0.07 - 1.0;
        for dim in [32usize, 64, 256] {
            let chunks = dim / Q8_CHUNK;
            for n in [1usize, 7, 8, 45, 130] {
                // Keys row by row, each with its scales.
                let (mut codes, mut ks) = (vec![0i8; n * dim], vec![0f32; n * chunks]);
                for p in 0..n {
                    for c in 0..chunks {
                        let x: Vec<f32> = (0..Q8_CHUNK).map(|i| value(p, c * Q8_CHUNK + i)).collect();
                        let (s, q) = encode_q8(&x);
                        ks[p * chunks + c] = s;
                        codes[p * dim + c * Q8_CHUNK..][..Q8_CHUNK].copy_from_slice(&q);
                    }
                }
                let rows: Vec<*const u8> = (0..n).map(|p| codes[p * dim..].as_ptr() as *const u8).collect();
                for heads in 1..=3 {
                    let q: Vec<f32> = (0..heads * dim).map(|i| ((i * 13 % 11) as f32 - 5.0) * 0.1).collect();
                    let (mut s1, mut s2) = (vec![0f32; heads * n], vec![0f32; heads * n]);
                    // SAFETY: every row holds dim codes; ks holds n · chunks scales.
                    unsafe {
                        scores(isa, heads, &q, &rows, &ks, 0.125, &mut s1);
                        scores(Isa::Scalar, heads, &q, &rows, &ks, 0.125, &mut s2);
                    }
                    assert_eq!(bits(&s1), bits(&s2), "scores: {heads} heads, {n} rows, {dim} wide");
                    for h in 0..heads {
                        for p in 0..n {
                            let exact: f32 = (0..dim).map(|i| q[h * dim + i] * value(p, i)).sum::<f32>() * 0.125;
                            let got = s1[h * n + p];
                            assert!((got - exact).abs() < 0.02 * (1.0 + exact.abs()), "score {got} vs {exact}");
                        }
                    }
                }
                // Values transposed in blocks of 16 positions.
                let bs = 16;
                let blocks_n = n.div_ceil(bs);
                let mut vcodes = vec![0i8; blocks_n * bs * dim];
                let mut vs = vec![0f32; blocks_n * bs * chunks];
                for p in 0..n {
                    for c in 0..chunks {
                        let x: Vec<f32> = (0..Q8_CHUNK).map(|i| value(p + 3, c * Q8_CHUNK + i)).collect();
                        let (s, q) = encode_q8(&x);
                        vs[p * chunks + c] = s;
                        for (i, &v) in q.iter().enumerate() {
                            vcodes[(p / bs * dim + c * Q8_CHUNK + i) * bs + p % bs] = v;
                        }
                    }
                }
                let blocks: Vec<*const u8> = (0..blocks_n).map(|b| vcodes[b * bs * dim..].as_ptr() as *const u8).collect();
                let n_pad = n.next_multiple_of(8);
                for heads in 1..=3 {
                    for first in [0, 9] {
                        let prob = |h: usize, p: usize| if p < first { 0.0 } else { (1 + h) as f32 / (p + 2) as f32 };
                        let mut w = vec![0f32; heads * chunks * n_pad];
                        for h in 0..heads {
                            for c in 0..chunks {
                                for p in 0..n {
                                    w[(h * chunks + c) * n_pad + p] = prob(h, p) * vs[p * chunks + c];
                                }
                            }
                        }
                        let (mut o1, mut o2) = (vec![0f32; heads * dim], vec![0f32; heads * dim]);
                        // SAFETY: each block holds dim × bs codes; bs is a multiple of 8.
                        unsafe {
                            weighted_sum(isa, first, heads, n, &w, &blocks, bs, &mut o1);
                            weighted_sum(Isa::Scalar, first, heads, n, &w, &blocks, bs, &mut o2);
                        }
                        assert_eq!(bits(&o1), bits(&o2), "weighted sum: {heads} heads, {n} positions, first {first}, {dim} wide");
                        for h in 0..heads {
                            for d in 0..dim {
                                let exact: f32 = (0..n).map(|p| prob(h, p) * value(p + 3, d)).sum();
                                let got = o1[h * dim + d];
                                assert!((got - exact).abs() < 0.02 * (1.0 + exact.abs()), "output {got} vs {exact}");
                            }
                        }
                    }
                }
            }
        }
    }
}
