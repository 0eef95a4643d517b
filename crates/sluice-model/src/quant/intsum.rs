//! The fast numerics ([`super::Numerics::Fast`]): kernels over packed weights (`packed`) that
//! sum each 32-value block's integer products whole, then do one float multiply-add per block
//! and row.
//!
//! The reference arithmetic (llama.cpp's, kept by `packed` and `scalar`) keeps eight float lanes
//! per block and row, so every block costs eight conversions and eight multiply-adds per
//! (row, activation) pair besides its byte dot products; batched matrix products are bound by
//! that float work. Here a block costs one conversion and one multiply-add, and two row groups
//! share each 512-bit instruction: about 1.6x the batched throughput. Results differ from the
//! reference only in float rounding (the integer sums are exact either way), which the 8-bit
//! activation encoding of later layers amplifies (see `Numerics::Fast`).
//!
//! Results do not depend on how many activation rows are computed together, nor on which kernel
//! computes them: [`dot`] defines them, and every path here is bit-equal to it. So a sequence
//! decodes to the same tokens alone or in any batch.

use super::{GgmlType, f16_at, scalar::unpack_q4_q5};

/// Activation rows a paired-group kernel takes at once.
pub const TOKENS: usize = 4;

/// The definition: dot product of one weight row (file layout, `n` values of `wt`, one of Q4_0,
/// Q4_1, Q5_0, Q8_0) with an activation row in `wt.dot_type()`.
pub fn dot(wt: GgmlType, n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (wb, ab) = (wt.block_bytes(), wt.dot_type().block_bytes());
    let (mut acc, mut mins) = (0f32, 0f32);
    for (wblk, ablk) in w.chunks_exact(wb).zip(a.chunks_exact(ab)).take(n / 32) {
        let aq = &ablk[ab - 32..];
        let value = |i: usize| -> i32 {
            match wt {
                GgmlType::Q8_0 => wblk[2 + i] as i8 as i32,
                GgmlType::Q4_0 => unpack_q4_q5(wt, wblk)[i] as i32 - 8,
                GgmlType::Q5_0 => unpack_q4_q5(wt, wblk)[i] as i32 - 16,
                _ => unpack_q4_q5(wt, wblk)[i] as i32,
            }
        };
        let isum: i32 = (0..32).map(|i| value(i) * aq[i] as i8 as i32).sum();
        acc = (f16_at(wblk, 0) * f16_at(ablk, 0)).mul_add(isum as f32, acc);
        if wt == GgmlType::Q4_1 {
            mins = f16_at(wblk, 2).mul_add(f16_at(ablk, 2), mins);
        }
    }
    if wt == GgmlType::Q4_1 { acc + mins } else { acc }
}

/// Per block of a Q8_0 activation row, -`bias` × the sum of its 32 values: the starting value
/// that turns the kernels' unsigned weight codes back into values.
pub fn block_offsets(a: &[u8], bias: i32, out: &mut [i32]) {
    for (blk, o) in a.chunks_exact(34).zip(out) {
        *o = -bias * blk[2..34].iter().map(|&q| q as i8 as i32).sum::<i32>();
    }
}

/// [`dot`] for one packed row group of `ty` (`out[r][l]`: row `l` against activation `r`), given
/// each activation row's block scales (`sc`: from `q8_1_scales` for Q4_1, else
/// `packed::q8_0_scales`) and, without mins, its [`block_offsets`]. `None` where the CPU lacks
/// the kernel or a slice is short.
#[inline]
pub fn group<const R: usize>(
    isa: super::Isa,
    ty: GgmlType,
    n: usize,
    grp: &[u8],
    a: [&[u8]; R],
    sc: [&[f32]; R],
    off: [&[i32]; R],
) -> Option<[[f32; super::packed::PACK_ROWS]; R]> {
    #[cfg(target_arch = "x86_64")]
    if isa == super::Isa::Avx512Vnni {
        // SAFETY: `Isa::Avx512Vnni` is only produced by `detect_isa` after checking the features.
        return unsafe {
            match ty {
                GgmlType::Q4_1 => avx512::group::<R, true, true>(n, grp, a, sc, off),
                GgmlType::Q4_0 => avx512::group::<R, true, false>(n, grp, a, sc, off),
                _ => avx512::group::<R, false, false>(n, grp, a, sc, off),
            }
        };
    }
    let _ = (isa, ty, n, grp, a, sc, off);
    None
}

/// [`group`] for two row groups at once (`out[r]`: `g0`'s eight rows, then `g1`'s).
#[inline]
pub fn group_pair<const R: usize>(
    isa: super::Isa,
    ty: GgmlType,
    n: usize,
    g: [&[u8]; 2],
    a: [&[u8]; R],
    sc: [&[f32]; R],
    off: [&[i32]; R],
) -> Option<[[f32; 2 * super::packed::PACK_ROWS]; R]> {
    #[cfg(target_arch = "x86_64")]
    if isa == super::Isa::Avx512Vnni {
        // SAFETY: as in `group`.
        return unsafe {
            match ty {
                GgmlType::Q4_1 => avx512::group_pair::<R, true, true>(n, g[0], g[1], a, sc, off),
                GgmlType::Q4_0 => avx512::group_pair::<R, true, false>(n, g[0], g[1], a, sc, off),
                _ => avx512::group_pair::<R, false, false>(n, g[0], g[1], a, sc, off),
            }
        };
    }
    let _ = (isa, ty, n, g, a, sc, off);
    None
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::super::packed::{
        PACK_ROWS,
        avx512::nibbles,
    };

    /// Byte layout of one block of a packed group and of an activation row: (group block bytes,
    /// offset of the weight codes in it, activation block bytes, offset of the activation values).
    const fn layout(nibbles: bool, mins: bool) -> (usize, usize, usize, usize) {
        match (nibbles, mins) {
            (_, true) => (PACK_ROWS * 20, 32, 36, 4),
            (true, false) => (PACK_ROWS * 18, 16, 34, 2),
            (false, false) => (PACK_ROWS * 34, 16, 34, 2),
        }
    }

    /// Whether the slices hold `nb` blocks: `grps` packed, every activation row and its scales
    /// (two per block with mins) and block offsets (without).
    fn fits(nb: usize, nibbles: bool, mins: bool, grps: &[&[u8]], a: &[&[u8]], sc: &[&[f32]], off: &[&[i32]]) -> bool {
        let (gbb, _, ab, _) = layout(nibbles, mins);
        grps.iter().all(|g| g.len() >= nb * gbb)
            && a.iter().all(|r| r.len() >= nb * ab)
            && sc.iter().all(|s| s.len() >= nb * if mins { 2 } else { 1 })
            && (mins || off.iter().all(|o| o.len() >= nb))
    }

    /// One row group (eight rows, one per 32-bit lane) against `R` activation rows: `out[r][l]`
    /// is row `l` against activation `r`, bit-equal to [`super::dot`]. `NIBBLES`: Q4_0 / Q4_1
    /// codes; `MINS`: Q4_1 (Q8_1 activations, scales `sc` as d, s per block; `off` unused).
    /// Otherwise Q8_0 activations with one scale per block and the [`super::block_offsets`].
    /// `None` where a slice is short.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn group<const R: usize, const NIBBLES: bool, const MINS: bool>(
        n: usize,
        grp: &[u8],
        a: [&[u8]; R],
        sc: [&[f32]; R],
        off: [&[i32]; R],
    ) -> Option<[[f32; PACK_ROWS]; R]> {
        let nb = n / 32;
        if !fits(nb, NIBBLES, MINS, &[grp], &a, &sc, &off) {
            return None;
        }
        let (gbb, wq_at, ab, aq_at) = layout(NIBBLES, MINS);
        let mut acc = [_mm256_setzero_ps(); R];
        let mut mins = [_mm256_setzero_ps(); R];
        for b in 0..nb {
            // SAFETY (whole block): block b of the group, of every activation row, its scales
            // and offsets are in bounds (checked above).
            unsafe {
                let gp = grp.as_ptr().add(b * gbb);
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(gp as *const __m128i));
                let mw = if MINS { _mm256_cvtph_ps(_mm_loadu_si128(gp.add(16) as *const __m128i)) } else { dw };
                let wq = if NIBBLES {
                    nibbles(gp.add(wq_at))
                } else {
                    std::array::from_fn(|j| _mm256_loadu_si256(gp.add(wq_at + 32 * j) as *const __m256i))
                };
                for r in 0..R {
                    let ap = a[r].as_ptr().add(b * ab + aq_at);
                    let y = |j: usize| _mm256_set1_epi32(std::ptr::read_unaligned(ap.add(4 * j) as *const i32));
                    let (da, start) = if MINS {
                        let s = _mm256_set1_ps(*sc[r].get_unchecked(2 * b + 1));
                        mins[r] = _mm256_fmadd_ps(mw, s, mins[r]);
                        (*sc[r].get_unchecked(2 * b), _mm256_setzero_si256())
                    } else {
                        (*sc[r].get_unchecked(b), _mm256_set1_epi32(*off[r].get_unchecked(b)))
                    };
                    // Two chains of byte dot products, so each waits on half as many.
                    let (mut s0, mut s1) = (start, _mm256_setzero_si256());
                    for j in (0..8).step_by(2) {
                        s0 = _mm256_dpbusd_epi32(s0, wq[j], y(j));
                        s1 = _mm256_dpbusd_epi32(s1, wq[j + 1], y(j + 1));
                    }
                    let dd = _mm256_mul_ps(dw, _mm256_set1_ps(da));
                    acc[r] = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(_mm256_add_epi32(s0, s1)), acc[r]);
                }
            }
        }
        let mut out = [[0f32; PACK_ROWS]; R];
        for (o, (v, m)) in out.iter_mut().zip(acc.iter().zip(mins)) {
            let v = if MINS { _mm256_add_ps(*v, m) } else { *v };
            // SAFETY: `o` holds eight floats.
            unsafe { _mm256_storeu_ps(o.as_mut_ptr(), v) };
        }
        Some(out)
    }

    /// [`group`] over two row groups at once (sixteen rows: `g0`'s in lanes 0-7, `g1`'s in lanes
    /// 8-15 of 512-bit registers): each activation broadcast serves sixteen rows.
    ///
    /// # Safety
    /// As [`group`].
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn group_pair<const R: usize, const NIBBLES: bool, const MINS: bool>(
        n: usize,
        g0: &[u8],
        g1: &[u8],
        a: [&[u8]; R],
        sc: [&[f32]; R],
        off: [&[i32]; R],
    ) -> Option<[[f32; 2 * PACK_ROWS]; R]> {
        let nb = n / 32;
        if !fits(nb, NIBBLES, MINS, &[g0, g1], &a, &sc, &off) {
            return None;
        }
        let (gbb, wq_at, ab, aq_at) = layout(NIBBLES, MINS);
        let mut acc = [_mm512_setzero_ps(); R];
        let mut mins = [_mm512_setzero_ps(); R];
        let low = _mm512_set1_epi8(0x0F);
        for b in 0..nb {
            // SAFETY (whole block): as in `group`, for both groups.
            unsafe {
                let (p0, p1) = (g0.as_ptr().add(b * gbb), g1.as_ptr().add(b * gbb));
                // The next pair of a packed matrix's groups (this pair's are adjacent).
                crate::mem::prefetch_l1(p0.wrapping_add(2 * nb * gbb), gbb);
                crate::mem::prefetch_l1(p1.wrapping_add(2 * nb * gbb), gbb);
                let halves = |at: usize| {
                    let lo = _mm256_castsi128_si256(_mm_loadu_si128(p0.add(at) as *const __m128i));
                    _mm256_inserti128_si256::<1>(lo, _mm_loadu_si128(p1.add(at) as *const __m128i))
                };
                let both = |at: usize| {
                    let lo = _mm512_castsi256_si512(_mm256_loadu_si256(p0.add(at) as *const __m256i));
                    _mm512_inserti64x4::<1>(lo, _mm256_loadu_si256(p1.add(at) as *const __m256i))
                };
                let dw = _mm512_cvtph_ps(halves(0));
                let mw = if MINS { _mm512_cvtph_ps(halves(16)) } else { dw };
                let mut wq = [_mm512_setzero_si512(); 8];
                if NIBBLES {
                    for c in 0..4 {
                        let v = both(wq_at + 32 * c);
                        wq[c] = _mm512_and_si512(v, low);
                        wq[c + 4] = _mm512_and_si512(_mm512_srli_epi16::<4>(v), low);
                    }
                } else {
                    for (j, w) in wq.iter_mut().enumerate() {
                        *w = both(wq_at + 32 * j);
                    }
                }
                for r in 0..R {
                    let ap = a[r].as_ptr().add(b * ab + aq_at);
                    let y = |j: usize| _mm512_set1_epi32(std::ptr::read_unaligned(ap.add(4 * j) as *const i32));
                    let (da, start) = if MINS {
                        let s = _mm512_set1_ps(*sc[r].get_unchecked(2 * b + 1));
                        mins[r] = _mm512_fmadd_ps(mw, s, mins[r]);
                        (*sc[r].get_unchecked(2 * b), _mm512_setzero_si512())
                    } else {
                        (*sc[r].get_unchecked(b), _mm512_set1_epi32(*off[r].get_unchecked(b)))
                    };
                    let (mut s0, mut s1) = (start, _mm512_setzero_si512());
                    for j in (0..8).step_by(2) {
                        s0 = _mm512_dpbusd_epi32(s0, wq[j], y(j));
                        s1 = _mm512_dpbusd_epi32(s1, wq[j + 1], y(j + 1));
                    }
                    let dd = _mm512_mul_ps(dw, _mm512_set1_ps(da));
                    acc[r] = _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1)), acc[r]);
                }
            }
        }
        let mut out = [[0f32; 2 * PACK_ROWS]; R];
        for (o, (v, m)) in out.iter_mut().zip(acc.iter().zip(mins)) {
            let v = if MINS { _mm512_add_ps(*v, m) } else { *v };
            // SAFETY: `o` holds sixteen floats.
            unsafe { _mm512_storeu_ps(o.as_mut_ptr(), v) };
        }
        Some(out)
    }
}
