//! Attention over an 8-bit cache ([`crate::KvDtype::Q8_0`]): every 32 dimensions of a key or
//! value row are codes with one scale. No reference fixes these sums, so ours are defined here
//! by the portable code, and the SIMD forms are bit-equal to it:
//! - scores: the query is encoded as the cache encodes (codes and a scale per 32 dimensions, as
//!   llama.cpp meets a `q8_0` key cache), each chunk's integer dot product is exact, and the
//!   chunks' scaled sums are added in order. With AVX-512 VNNI one byte-dot instruction takes four
//!   dimensions of sixteen positions (the key layout of `PagedKv`); with AVX2, 16-bit pairwise
//!   products of four positions.
//! - weighted sums: over positions in sixteen float lanes (position `p` feeding lane
//!   `p mod 16`), lanes `l` and `l + 8` added, then reduced as `SumOrder::Tiled` reduces; AVX2
//!   (two 8-lane halves) and AVX-512 (one register).

use crate::cache::Q8_CHUNK;
use crate::quant::Isa;

/// Sixteen lanes folded to eight (`l + (l+8)`), then `(l0+l4) + (l2+l6)` plus
/// `(l1+l5) + (l3+l7)`.
#[inline]
fn reduce16(a: &[f32; 16]) -> f32 {
    let h = |l: usize| (a[l] + a[l + 8]) + (a[l + 4] + a[l + 12]);
    (h(0) + h(2)) + (h(1) + h(3))
}

/// A task's queries encoded for the key codes: per head and 32-dimension chunk, codes and a
/// scale as the cache encodes (`crate::cache::encode_q8`), and the codes' sum.
#[derive(Debug, Default)]
pub struct QueryCodes {
    codes: Vec<i8>,
    scales: Vec<f32>,
    sums: Vec<i32>,
}

impl QueryCodes {
    /// Encodes `q` (heads back to back, each a multiple of 32 wide).
    pub fn encode(&mut self, q: &[f32]) {
        self.codes.clear();
        self.scales.clear();
        self.sums.clear();
        for x in q.chunks(Q8_CHUNK) {
            let (s, c) = crate::cache::encode_q8(x);
            self.codes.extend_from_slice(&c[..x.len()]);
            self.scales.push(s);
            self.sums.push(c.iter().map(|&v| v as i32).sum());
        }
    }
}

/// The byte of key dimension `d`, position `p` in a block of `bs` positions (layout of
/// `PagedKv`), as the signed code.
///
/// # Safety
/// `block` addresses the head's `dim × bs` codes and `d`, `p` lie inside.
#[inline]
unsafe fn key_code(block: *const u8, bs: usize, d: usize, p: usize) -> i32 {
    // SAFETY: the caller's contract.
    unsafe { *block.add((d / 4 * bs + p) * 4 + d % 4) as i32 - 128 }
}

/// `out[h·np + i] = scale · Σ_c (qs_hc · ks_c(i)) · (qc_h · K_i)` for every position `i` of the
/// key blocks (`np` = `blocks.len() · bs`), chunk `c`'s integer dot product exact, the chunks
/// added in order by fused multiply-adds. Each block pointer addresses one head's keys in the
/// layout of `PagedKv`; `ks[b]` its key scales, chunk `c` of position `p` at `ks[b] + c·bs + p`
/// (positions past the last written have stale or zero scales: their scores are meaningless
/// but finite).
///
/// # Safety
/// Every block addresses `dim × bs` readable codes (`dim` = the query width per head, a
/// multiple of 32) and every scale pointer `dim / 32 · bs` readable scales.
#[allow(clippy::too_many_arguments)]
pub unsafe fn scores(isa: Isa, heads: usize, q: &QueryCodes, blocks: &[*const u8], ks: &[*const f32], bs: usize, scale: f32, out: &mut [f32]) {
    let dim = q.codes.len() / heads.max(1);
    let (chunks, np) = (dim / Q8_CHUNK, blocks.len() * bs);
    debug_assert!(dim.is_multiple_of(Q8_CHUNK) && ks.len() == blocks.len() && out.len() >= heads * np);
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni && bs.is_multiple_of(16) {
        // SAFETY: AVX-512 VNNI detected; the rest is the caller's contract.
        unsafe { avx512::scores(heads, q, blocks, ks, bs, scale, out) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if isa.has_avx2() && bs.is_multiple_of(8) {
        // SAFETY: AVX2/FMA/F16C detected; the rest is the caller's contract.
        unsafe { avx2::scores(heads, q, blocks, ks, bs, scale, out) };
        return;
    }
    let _ = isa;
    for h in 0..heads {
        for (bi, &b) in blocks.iter().enumerate() {
            for p in 0..bs {
                let i = bi * bs + p;
                let mut acc = 0f32;
                for c in 0..chunks {
                    let at = h * dim + c * Q8_CHUNK;
                    // SAFETY: the block holds dim × bs codes and its scales chunks × bs (caller
                    // contract).
                    let (isum, kscale): (i32, f32) = unsafe {
                        ((0..Q8_CHUNK).map(|k| q.codes[at + k] as i32 * key_code(b, bs, c * Q8_CHUNK + k, p)).sum(), *ks[bi].add(c * bs + p))
                    };
                    acc = (q.scales[h * chunks + c] * kscale).mul_add(isum as f32, acc);
                }
                out[h * np + i] = acc * scale;
            }
        }
    }
}

/// `out[h·dim + d] = Σ_p (probs[h·np + p] · vs_c(p)) · V(p)[d]` over the `np` =
/// `blocks.len() · bs` positions of the value blocks, `c` = `d / 32`: each weight times the
/// position's value scale for the chunk, rounded, then multiplied-added into lane `p mod 16`.
/// Values are stored transposed per block: dimension `d` of block `b`'s positions is the run of
/// `bs` codes at `blocks[b] + d·bs`; chunk `c`'s scales of its positions the run at
/// `vs[b] + c·bs`. Positions to leave out have probability zero (their terms add exact zeros).
///
/// # Safety
/// Every block addresses `dim × bs` readable codes and every scale pointer `dim / 32 · bs`
/// readable scales; `probs` holds `heads · np`; `bs` is a multiple of 8.
#[allow(clippy::too_many_arguments)]
pub unsafe fn weighted_sum(isa: Isa, heads: usize, probs: &[f32], blocks: &[*const u8], vs: &[*const f32], bs: usize, out: &mut [f32]) {
    let (dim, np) = (out.len() / heads.max(1), blocks.len() * bs);
    debug_assert!(bs.is_multiple_of(8) && probs.len() >= heads * np && vs.len() == blocks.len());
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni && bs.is_multiple_of(16) {
        let mut h0 = 0;
        for take in super::passes(heads) {
            // SAFETY: AVX-512 detected; the rest is the caller's contract.
            unsafe {
                match take {
                    1 => avx512::weighted_sum::<1>(h0, probs, blocks, vs, bs, out, dim),
                    2 => avx512::weighted_sum::<2>(h0, probs, blocks, vs, bs, out, dim),
                    _ => avx512::weighted_sum::<3>(h0, probs, blocks, vs, bs, out, dim),
                }
            }
            h0 += take;
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if isa.has_avx2() {
        // SAFETY: AVX2/FMA detected; the rest is the caller's contract.
        unsafe { avx2::weighted_sum(heads, probs, blocks, vs, bs, out) };
        return;
    }
    let _ = isa;
    for (h, oh) in out.chunks_exact_mut(dim.max(1)).enumerate() {
        for (d, o) in oh.iter_mut().enumerate() {
            let c = d / Q8_CHUNK;
            let mut acc = [0f32; 16];
            for p in 0..np {
                let (b, i) = (p / bs, p % bs);
                // SAFETY: block b holds dimension d of its positions, and their scales (caller
                // contract).
                let (code, vscale) = unsafe { (*(blocks[b] as *const i8).add(d * bs + i) as f32, *vs[b].add(c * bs + i)) };
                acc[p % 16] = (probs[h * np + p] * vscale).mul_add(code, acc[p % 16]);
            }
            *o = reduce16(&acc);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Q8_CHUNK, QueryCodes};

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

    /// See [`super::scores`], eight positions at a time: four dimensions of four positions
    /// widened to 16 bits and multiplied pairwise (`madd`), exact in 32-bit sums.
    ///
    /// # Safety
    /// AVX2/FMA/F16C required; `bs` a multiple of 8; the parent's contract.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn scores(heads: usize, q: &QueryCodes, blocks: &[*const u8], ks: &[*const f32], bs: usize, scale: f32, out: &mut [f32]) {
        let dim = q.codes.len() / heads;
        let (chunks, np) = (dim / Q8_CHUNK, blocks.len() * bs);
        let sc = _mm256_set1_ps(scale);
        // Pairs of 32-bit sums, (p0 p0 p1 p1 | p2 p2 p3 p3) and (p4 .. | ..), added to eight.
        let order = _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7);
        for h in 0..heads {
            for (bi, &b) in blocks.iter().enumerate() {
                for p0 in (0..bs).step_by(8) {
                    let i = bi * bs + p0;
                    let mut f = _mm256_setzero_ps();
                    for c in 0..chunks {
                        let (mut lo, mut hi) = (_mm256_setzero_si256(), _mm256_setzero_si256());
                        for j in 0..8 {
                            let at = h * dim + c * Q8_CHUNK + 4 * j;
                            let qj = &q.codes[at..at + 4];
                            // The four query codes as 16-bit values, repeated for four positions.
                            let pattern = (qj[0] as i16 as u16 as i64)
                                | (qj[1] as i16 as u16 as i64) << 16
                                | (qj[2] as i16 as u16 as i64) << 32
                                | (qj[3] as i16 as u16 as i64) << 48;
                            let y = _mm256_set1_epi64x(pattern);
                            // SAFETY: dimensions 4(8c+j)..+4 of positions p0..p0+8 lie in the block.
                            let (k0, k1) = unsafe {
                                let kp = b.add(((c * 8 + j) * bs + p0) * 4);
                                (_mm_loadu_si128(kp as *const __m128i), _mm_loadu_si128(kp.add(16) as *const __m128i))
                            };
                            lo = _mm256_add_epi32(lo, _mm256_madd_epi16(_mm256_cvtepu8_epi16(k0), y));
                            hi = _mm256_add_epi32(hi, _mm256_madd_epi16(_mm256_cvtepu8_epi16(k1), y));
                        }
                        // The keys are stored plus 128: take 128 × the query codes' sum away.
                        let sums = _mm256_permutevar8x32_epi32(_mm256_hadd_epi32(lo, hi), order);
                        let isum = _mm256_sub_epi32(sums, _mm256_set1_epi32(128 * q.sums[h * chunks + c]));
                        // SAFETY: eight scales of chunk c from position p0 of the block.
                        let kscale = unsafe { _mm256_loadu_ps(ks[bi].add(c * bs + p0)) };
                        let s = _mm256_mul_ps(_mm256_set1_ps(q.scales[h * chunks + c]), kscale);
                        f = _mm256_fmadd_ps(s, _mm256_cvtepi32_ps(isum), f);
                    }
                    // SAFETY: out holds heads × np floats; i + 8 <= np.
                    unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(h * np + i), _mm256_mul_ps(f, sc)) };
                }
            }
        }
    }

    /// See [`super::weighted_sum`], eight positions at a time: two dimensions at a time for two
    /// heads, even and odd groups of eight in their own accumulators (the sixteen lanes' halves).
    ///
    /// # Safety
    /// AVX2/FMA/F16C required; the parent's contract.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn weighted_sum(heads: usize, probs: &[f32], blocks: &[*const u8], vs: &[*const f32], bs: usize, out: &mut [f32]) {
        const D: usize = 2;
        let dim = out.len() / heads;
        let np = blocks.len() * bs;
        let groups = np / 8;
        for h0 in (0..heads).step_by(2) {
            let hs = (heads - h0).min(2);
            let pp: [*const f32; 2] = std::array::from_fn(|j| probs[(h0 + j.min(hs - 1)) * np..].as_ptr());
            for d0 in (0..dim).step_by(D) {
                let c = d0 / Q8_CHUNK;
                // acc[head][dimension][group parity]
                let mut acc = [[[_mm256_setzero_ps(); 2]; D]; 2];
                // `$par`: g mod 2, spelled out so every accumulator index is a constant.
                macro_rules! group {
                    ($g:expr, $par:literal) => {
                        let g: usize = $g;
                        let (b, at) = (8 * g / bs, 8 * g % bs);
                        // SAFETY: group g's block holds dimensions d0..d0+D of eight positions
                        // from `at` (bs a multiple of 8), and their scales; probs holds np per head.
                        unsafe {
                            let vp = blocks.get_unchecked(b).add(at);
                            let s = _mm256_loadu_ps(vs.get_unchecked(b).add(c * bs + at));
                            let v: [__m256; D] = std::array::from_fn(|k| codes8(vp.add((d0 + k) * bs)));
                            for (j, a) in acc.iter_mut().enumerate().take(hs) {
                                let wv = _mm256_mul_ps(_mm256_loadu_ps(pp[j].add(8 * g)), s);
                                for (a, v) in a.iter_mut().zip(&v) {
                                    a[$par] = _mm256_fmadd_ps(wv, *v, a[$par]);
                                }
                            }
                        }
                    };
                }
                let mut g = 0;
                while g + 2 <= groups {
                    group!(g, 0);
                    group!(g + 1, 1);
                    g += 2;
                }
                if g < groups {
                    group!(g, 0);
                }
                for (j, a) in acc.iter().enumerate().take(hs) {
                    for (k, a) in a.iter().enumerate() {
                        out[(h0 + j) * dim + d0 + k] = crate::attention_kernels::avx2::reduce_tiled(_mm256_add_ps(a[0], a[1]));
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Q8_CHUNK, QueryCodes};

    /// See [`super::scores`]: sixteen positions at a time, each chunk's eight 64-byte key loads
    /// shared by every head (up to eight heads per pass).
    ///
    /// # Safety
    /// AVX-512 F/VNNI required; `bs` a multiple of 16; the parent's contract.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn scores(heads: usize, q: &QueryCodes, blocks: &[*const u8], ks: &[*const f32], bs: usize, scale: f32, out: &mut [f32]) {
        let dim = q.codes.len() / heads;
        let (chunks, np) = (dim / Q8_CHUNK, blocks.len() * bs);
        let sc = _mm512_set1_ps(scale);
        for h0 in (0..heads).step_by(8) {
            let hs = (heads - h0).min(8);
            for (bi, &b) in blocks.iter().enumerate() {
                for p0 in (0..bs).step_by(16) {
                    let i = bi * bs + p0;
                    let mut f = [_mm512_setzero_ps(); 8];
                    for c in 0..chunks {
                        // SAFETY: dimensions 4j..4j+4 of positions p0..p0+16 lie in the block.
                        let k: [__m512i; 8] = std::array::from_fn(|j| unsafe { _mm512_loadu_si512(b.add(((c * 8 + j) * bs + p0) * 4) as *const _) });
                        // SAFETY: sixteen scales of chunk c from position p0 of the block.
                        let kscale = unsafe { _mm512_loadu_ps(ks[bi].add(c * bs + p0)) };
                        for (hi, f) in f.iter_mut().enumerate().take(hs) {
                            let h = h0 + hi;
                            let qp = q.codes[h * dim + c * Q8_CHUNK..].as_ptr();
                            // The keys are stored plus 128: start at -128 × the query codes' sum.
                            let mut acc = _mm512_set1_epi32(-128 * q.sums[h * chunks + c]);
                            for (j, k) in k.iter().enumerate() {
                                // SAFETY: four query codes of chunk c.
                                let y = _mm512_set1_epi32(unsafe { std::ptr::read_unaligned(qp.add(4 * j) as *const i32) });
                                acc = _mm512_dpbusd_epi32(acc, *k, y);
                            }
                            let s = _mm512_mul_ps(_mm512_set1_ps(q.scales[h * chunks + c]), kscale);
                            *f = _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(acc), *f);
                        }
                    }
                    for (hi, f) in f.iter().enumerate().take(hs) {
                        // SAFETY: out holds heads × np floats; i + 16 <= np.
                        unsafe { _mm512_storeu_ps(out.as_mut_ptr().add((h0 + hi) * np + i), _mm512_mul_ps(*f, sc)) };
                    }
                }
            }
        }
    }

    /// See [`super::weighted_sum`] for `H` heads from `h0` (`out`: every head's, `dim` each),
    /// sixteen positions at a time (lane `p mod 16` a lane of one register): eight dimensions
    /// per pass, eight outputs' trees reduced together.
    ///
    /// # Safety
    /// AVX-512 F/BW/VL, AVX2, FMA required; `bs` a multiple of 16; `dim` a multiple of 32; the
    /// parent's contract.
    #[allow(clippy::needless_range_loop, reason = "accumulators indexed by head and dimension together")]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn weighted_sum<const H: usize>(h0: usize, probs: &[f32], blocks: &[*const u8], vs: &[*const f32], bs: usize, out: &mut [f32], dim: usize) {
        let np = blocks.len() * bs;
        let pp: [*const f32; H] = std::array::from_fn(|j| probs[(h0 + j) * np..].as_ptr());
        for d0 in (0..dim).step_by(8) {
            let c = d0 / Q8_CHUNK;
            let mut acc = [[_mm512_setzero_ps(); 8]; H];
            for g in 0..np / 16 {
                let (b, at) = (16 * g / bs, 16 * g % bs);
                // SAFETY: group g's sixteen positions lie in block b (bs a multiple of 16),
                // which holds dimensions d0..d0+8 of them and their scales; probs holds np per
                // head.
                unsafe {
                    let vp = blocks.get_unchecked(b).add(at);
                    let s = _mm512_loadu_ps(vs.get_unchecked(b).add(c * bs + at));
                    let wv: [__m512; H] = std::array::from_fn(|j| _mm512_mul_ps(_mm512_loadu_ps(pp[j].add(16 * g)), s));
                    for k in 0..8 {
                        let v = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(vp.add((d0 + k) * bs) as *const __m128i)));
                        for j in 0..H {
                            acc[j][k] = _mm512_fmadd_ps(wv[j], v, acc[j][k]);
                        }
                    }
                }
            }
            for (j, acc) in acc.iter().enumerate() {
                // Lanes l and l + 8 added, then the eight dimensions' trees together.
                let x: [__m256; 8] = std::array::from_fn(|k| crate::attention_kernels::avx512::add_halves(acc[k]));
                // SAFETY: out holds every head's dim floats; d0 + 8 <= dim.
                unsafe { _mm256_storeu_ps(out.as_mut_ptr().add((h0 + j) * dim + d0), crate::attention_kernels::avx2::reduce8_tiled(&x)) };
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

    /// Every SIMD form equals the portable definition bit for bit, and all approximate the float
    /// sums over the decoded values closely.
    #[test]
    fn simd_and_portable_agree_and_approximate_the_float_sums() {
        let isa = crate::quant::detect_isa();
        let families: Vec<Isa> = [Isa::Avx2, isa].into_iter().filter(|f| f.has_avx2() && isa.has_avx2()).collect();
        let value = |p: usize, i: usize| ((p * 31 + i * 17) % 29) as f32 * 0.07 - 1.0;
        for bs in [16usize, 32] {
            for dim in [32usize, 64, 256] {
                let chunks = dim / Q8_CHUNK;
                for n in [1usize, 7, 8, 45, 130] {
                    let nb = n.div_ceil(bs);
                    let np = nb * bs;
                    // Keys in the cache's layout (four dimensions of every position in a run, plus
                    // 128), values transposed per block; each block's scales chunk after chunk.
                    let (mut kcodes, mut vcodes) = (vec![0u8; np * dim], vec![0i8; np * dim]);
                    let (mut ks, mut vs) = (vec![0f32; np * chunks], vec![0f32; np * chunks]);
                    for p in 0..n {
                        let (b, i) = (p / bs, p % bs);
                        for c in 0..chunks {
                            let (k, v) = [0, 3].map(|o| (0..Q8_CHUNK).map(|j| value(p + o, c * Q8_CHUNK + j)).collect::<Vec<f32>>()).into();
                            let ((sk, qk), (sv, qv)) = (encode_q8(&k), encode_q8(&v));
                            ks[(b * chunks + c) * bs + i] = sk;
                            vs[(b * chunks + c) * bs + i] = sv;
                            for j in 0..Q8_CHUNK {
                                let d = c * Q8_CHUNK + j;
                                kcodes[b * bs * dim + (d / 4 * bs + i) * 4 + d % 4] = (qk[j] as u8) ^ 0x80;
                                vcodes[(b * dim + d) * bs + i] = qv[j];
                            }
                        }
                    }
                    let kblocks: Vec<*const u8> = (0..nb).map(|b| kcodes[b * bs * dim..].as_ptr()).collect();
                    let vblocks: Vec<*const u8> = (0..nb).map(|b| vcodes[b * bs * dim..].as_ptr() as *const u8).collect();
                    let (kruns, vruns): (Vec<*const f32>, Vec<*const f32>) = (0..nb).map(|b| (ks[b * chunks * bs..].as_ptr(), vs[b * chunks * bs..].as_ptr())).unzip();
                    for heads in [1usize, 2, 3, 4, 9] {
                        let q: Vec<f32> = (0..heads * dim).map(|i| ((i * 13 % 11) as f32 - 5.0) * 0.1).collect();
                        let mut qc = QueryCodes::default();
                        qc.encode(&q);
                        let (mut s1, mut s2) = (vec![0f32; heads * np], vec![0f32; heads * np]);
                        // SAFETY: every block holds dim × bs codes and chunks × bs scales.
                        unsafe { scores(Isa::Scalar, heads, &qc, &kblocks, &kruns, bs, 0.125, &mut s2) };
                        for &family in &families {
                            // SAFETY: as above.
                            unsafe { scores(family, heads, &qc, &kblocks, &kruns, bs, 0.125, &mut s1) };
                            assert_eq!(bits(&s1), bits(&s2), "{family:?} scores: {heads} heads, {n} rows, {dim} wide, blocks of {bs}");
                        }
                        for h in 0..heads {
                            for p in 0..n {
                                let exact: f32 = (0..dim).map(|i| q[h * dim + i] * value(p, i)).sum::<f32>() * 0.125;
                                let got = s2[h * np + p];
                                assert!((got - exact).abs() < 0.03 * (1.0 + exact.abs()), "score {got} vs {exact}");
                            }
                        }
                        // Weights over a window from `first` (zero elsewhere, past n too).
                        for first in [0, 9, 21, 40].into_iter().filter(|&f| f < n) {
                            let prob = |h: usize, p: usize| if p < first || p >= n { 0.0 } else { (1 + h) as f32 / (p + 2) as f32 };
                            let probs: Vec<f32> = (0..heads * np).map(|i| prob(i / np, i % np)).collect();
                            let (mut o1, mut o2) = (vec![0f32; heads * dim], vec![0f32; heads * dim]);
                            // SAFETY: every block holds dim × bs codes and chunks × bs scales.
                            unsafe { weighted_sum(Isa::Scalar, heads, &probs, &vblocks, &vruns, bs, &mut o2) };
                            for &family in &families {
                                // SAFETY: as above.
                                unsafe { weighted_sum(family, heads, &probs, &vblocks, &vruns, bs, &mut o1) };
                                let what = format!("{heads} heads, {n} positions, first {first}, {dim} wide, blocks of {bs}");
                                assert_eq!(bits(&o1), bits(&o2), "{family:?} weighted sum: {what}");
                            }
                            for h in 0..heads {
                                for d in 0..dim {
                                    let exact: f32 = (0..n).map(|p| prob(h, p) * value(p + 3, d)).sum();
                                    let got = o2[h * dim + d];
                                    assert!((got - exact).abs() < 0.02 * (1.0 + exact.abs()), "output {got} vs {exact}");
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
