//! Weights repacked eight rows at a time (Q4_0, Q4_1, Q5_0, Q8_0), for the AVX-512 VNNI matrix
//! kernels.
//!
//! In the file's layout one byte-dot instruction covers 32 values of *one* weight row, and every
//! block then pays a float conversion, a scale product and a broadcast per (row, activation) pair.
//! Interleaving eight rows puts one row in each 32-bit lane: chunk `j` (values `4j..4j+4`) of the
//! eight rows fills one register and the activation's chunk `j` is broadcast against it, so each
//! instruction serves eight rows and each block's scales are converted once for all eight.
//!
//! The arithmetic is unchanged, not just close: every row still keeps eight float lanes (one per
//! chunk), fused-multiply-added per block with the same scale product and tree-summed in the same
//! order as `scalar::vec_dot`, so results are bit-equal to the unpacked kernels (and to
//! llama.cpp's AVX2 kernels for these types).
//!
//! Layouts: row groups of [`PACK_ROWS`], each a run of 32-value blocks of
//! [`group_block_bytes`]:
//! - Q4_1: the eight rows' f16 scales `d`, their f16 mins `m`, then four 32-byte chunk pairs,
//!   where bytes `4l..4l+4` of pair `c` are row `l`'s quant bytes `4c..4c+4` (low nibbles:
//!   values `4c..4c+4`; high nibbles: values `16+4c..16+4c+4`).
//! - Q8_0: the eight f16 scales, then eight 32-byte chunks, bytes `4l..4l+4` of chunk `j` being
//!   row `l`'s values `4j..4j+4` plus 128 (unsigned, as the byte-dot instruction wants); the
//!   kernel starts each lane at -128 × the activation chunk's sum, so the integer sums are exact.
//! - Q5_0: the Q8_0 layout with the values' unsigned 5-bit codes (value + 16) as bytes, the
//!   lanes starting at -16 × the chunk's sum (34 bytes per 32 values instead of the file's 22,
//!   for a kernel without per-block bit unpacking).
//! - Q4_0: the eight f16 scales, then the nibbles arranged as Q4_1's (four 32-byte chunk pairs),
//!   the lanes starting at -8 × the chunk's sum.

use super::GgmlType;

/// Weight rows interleaved per group.
pub const PACK_ROWS: usize = 8;
/// Bytes of one 32-value block of a row group of `ty` (Q4_0, Q4_1: eight file blocks; Q5_0 and
/// Q8_0: eight Q8_0 blocks).
pub fn group_block_bytes(ty: GgmlType) -> usize {
    match ty {
        GgmlType::Q4_0 => PACK_ROWS * 18,
        GgmlType::Q4_1 => PACK_ROWS * 20,
        _ => PACK_ROWS * 34,
    }
}

/// What an unsigned weight code of a packed `ty` exceeds the value it stands for by (the types
/// without a min; the kernel's lane offsets are -bias × the activation chunk's sum).
pub fn bias(ty: GgmlType) -> i32 {
    match ty {
        GgmlType::Q4_0 => 8,
        GgmlType::Q5_0 => 16,
        _ => 128,
    }
}

/// Whether a `rows`-row matrix of `ty` can be packed (and the packed kernel can run on `isa`).
pub fn packable(isa: super::Isa, ty: GgmlType, rows: usize) -> bool {
    isa == super::Isa::Avx512Vnni && matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q8_0) && rows.is_multiple_of(PACK_ROWS)
}

/// Repacks a matrix of a [`packable`] type given its rows in file layout. `progress` hears how
/// many rows are packed every 1,024 rows and at the end (so the caller can let the source
/// pages go as it goes, instead of holding the whole matrix twice).
pub fn pack<'a>(ty: GgmlType, rows: usize, cols: usize, row: impl Fn(usize) -> &'a [u8], mut progress: impl FnMut(usize)) -> Vec<u8> {
    let len = cols / 32 * group_block_bytes(ty);
    let mut out = vec![0u8; rows / PACK_ROWS * len];
    crate::mem::huge_pages(&mut out);
    let groups = out.len() / len.max(1);
    for (g, dst) in out.chunks_exact_mut(len).enumerate() {
        pack_group(ty, g, dst, &row);
        if (g + 1) % 128 == 0 || g + 1 == groups {
            progress((g + 1) * PACK_ROWS);
        }
    }
    out
}

/// Packs row group `g` into `group`.
fn pack_group<'a>(ty: GgmlType, g: usize, group: &mut [u8], row: &impl Fn(usize) -> &'a [u8]) {
    let (bb, gbb) = (ty.block_bytes(), group_block_bytes(ty));
    // Q4_0 / Q4_1: bytes before the quants (d, and Q4_1's m) in the block.
    let head = bb.saturating_sub(16);
    for (b, dst) in group.chunks_exact_mut(gbb).enumerate() {
        for l in 0..PACK_ROWS {
            let src = &row(g * PACK_ROWS + l)[b * bb..(b + 1) * bb];
            dst[2 * l..2 * l + 2].copy_from_slice(&src[0..2]);
            match ty {
                GgmlType::Q4_0 | GgmlType::Q4_1 => {
                    if ty == GgmlType::Q4_1 {
                        dst[16 + 2 * l..16 + 2 * l + 2].copy_from_slice(&src[2..4]);
                    }
                    for c in 0..4 {
                        let at = 8 * head + 32 * c + 4 * l;
                        dst[at..at + 4].copy_from_slice(&src[head + 4 * c..head + 4 * c + 4]);
                    }
                }
                _ => {
                    // Unsigned codes: Q8_0's signed bytes + 128, Q5_0's 5-bit codes as they are.
                    let codes: [u8; 32] = match ty {
                        GgmlType::Q5_0 => super::scalar::unpack_q4_q5(ty, src),
                        _ => std::array::from_fn(|i| src[2 + i] ^ 0x80),
                    };
                    for j in 0..8 {
                        let at = 16 + 32 * j + 4 * l;
                        dst[at..at + 4].copy_from_slice(&codes[4 * j..4 * j + 4]);
                    }
                }
            }
        }
    }
}

/// Per block of a Q8_0 activation row, -`bias` × the sum of each 4-value chunk (eight per
/// block): the starting values that turn the kernel's unsigned weight codes back into values.
pub fn q8_0_offsets(a: &[u8], bias: i32, out: &mut [i32]) {
    for (blk, o) in a.chunks_exact(34).zip(out.chunks_exact_mut(8)) {
        for (j, o) in o.iter_mut().enumerate() {
            *o = -bias * blk[2 + 4 * j..6 + 4 * j].iter().map(|&q| q as i8 as i32).sum::<i32>();
        }
    }
}

/// The f32 scales of a Q8_0 activation row's blocks.
pub fn q8_0_scales(a: &[u8], out: &mut [f32]) {
    for (blk, o) in a.chunks_exact(34).zip(out) {
        *o = super::f16_at(blk, 0);
    }
}

/// The bytes of row group `g` of a packed matrix of `ty` with `cols` columns.
pub fn group(packed: &[u8], ty: GgmlType, cols: usize, g: usize) -> &[u8] {
    let len = cols / 32 * group_block_bytes(ty);
    &packed[g * len..(g + 1) * len]
}

/// Dot products of one packed row group with `R` Q8_1 activation rows whose block scales are
/// `sc` (from [`super::q8_1_scales`]): `out[r][l]` is row `l` of the group against row `r`,
/// bit-equal to `vec_dot`. `None` where the CPU lacks the kernel's features or a slice is short.
#[inline]
pub fn dot_group_q4_1<const R: usize>(
    isa: super::Isa,
    n: usize,
    grp: &[u8],
    a: [&[u8]; R],
    sc: [&[f32]; R],
) -> Option<[[f32; PACK_ROWS]; R]> {
    #[cfg(target_arch = "x86_64")]
    if isa == super::Isa::Avx512Vnni {
        // SAFETY: `Isa::Avx512Vnni` is only produced by `detect_isa` after checking the features.
        return unsafe { avx512::dot_group_q4_1::<R>(n, grp, a, sc) };
    }
    let _ = (isa, n, grp, a, sc);
    None
}

/// [`dot_group_q4_1`] for a packed group of a type without mins (Q8_0, Q5_0, or with `nibbles`
/// Q4_0) against `R` Q8_0 activation rows, given each row's block scales (`sc`, from
/// [`q8_0_scales`]) and chunk offsets (`off`, from [`q8_0_offsets`]).
#[inline]
pub fn dot_group_q8_0<const R: usize>(
    nibbles: bool,
    isa: super::Isa,
    n: usize,
    grp: &[u8],
    a: [&[u8]; R],
    sc: [&[f32]; R],
    off: [&[i32]; R],
) -> Option<[[f32; PACK_ROWS]; R]> {
    #[cfg(target_arch = "x86_64")]
    if isa == super::Isa::Avx512Vnni {
        // SAFETY: `Isa::Avx512Vnni` is only produced by `detect_isa` after checking the features.
        return unsafe {
            if nibbles {
                avx512::dot_group_q8_0::<R, true>(n, grp, a, sc, off)
            } else {
                avx512::dot_group_q8_0::<R, false>(n, grp, a, sc, off)
            }
        };
    }
    let _ = (nibbles, isa, n, grp, a, sc, off);
    None
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx512 {
    use std::arch::x86_64::*;

    use super::PACK_ROWS;

    /// See [`super::dot_group_q4_1`].
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn dot_group_q4_1<const R: usize>(
        n: usize,
        grp: &[u8],
        a: [&[u8]; R],
        sc: [&[f32]; R],
    ) -> Option<[[f32; PACK_ROWS]; R]> {
        let (nb, gbb) = (n / 32, PACK_ROWS * 20);
        if grp.len() < nb * gbb
            || a.iter().any(|r| r.len() < nb * 36)
            || sc.iter().any(|s| s.len() < 2 * nb)
        {
            return None;
        }
        // acc[r][j]: lane l is row l's float lane j (chunk j's running sum), as in `scalar::vec_dot`.
        let mut acc = [[_mm256_setzero_ps(); 8]; R];
        let mut summs = [_mm256_setzero_ps(); R];
        for b in 0..nb {
            // SAFETY (whole block): block b of the group and of every activation row, and two
            // scales per block of every `sc` row, are in bounds (checked above).
            unsafe {
                let gp = grp.as_ptr().add(b * gbb);
                // With several activation rows, the block of the group two ahead: a band's
                // weights stream in from memory ahead of the arithmetic instead of stalling
                // it (+8% on a 16-sequence decode step). One row streams fast enough
                // without: there the hints cost 10%.
                if R > 1 {
                    crate::mem::prefetch_l1(gp.wrapping_add(2 * nb * gbb), gbb);
                }
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(gp as *const __m128i));
                let mw = _mm256_cvtph_ps(_mm_loadu_si128(gp.add(16) as *const __m128i));
                let wq = nibbles(gp.add(32));
                for r in 0..R {
                    let ap = a[r].as_ptr().add(b * 36 + 4);
                    let da = _mm256_set1_ps(*sc[r].get_unchecked(2 * b));
                    let sa = _mm256_set1_ps(*sc[r].get_unchecked(2 * b + 1));
                    summs[r] = _mm256_add_ps(summs[r], _mm256_mul_ps(mw, sa));
                    let dd = _mm256_mul_ps(dw, da);
                    for (j, w) in wq.iter().enumerate() {
                        let y = _mm256_set1_epi32(std::ptr::read_unaligned(ap.add(4 * j) as *const i32));
                        let s = _mm256_dpbusd_epi32(_mm256_setzero_si256(), *w, y);
                        acc[r][j] = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(s), acc[r][j]);
                    }
                }
            }
        }
        let mut out = [[0f32; PACK_ROWS]; R];
        for (o, (v, s)) in out.iter_mut().zip(acc.iter().zip(summs)) {
            // SAFETY: `o` holds eight floats.
            unsafe { _mm256_storeu_ps(o.as_mut_ptr(), _mm256_add_ps(tree_sum(v), s)) };
        }
        Some(out)
    }

    /// The eight chunk registers of a block's nibbles laid out as four 32-byte chunk pairs at `p`
    /// (low nibbles: chunks 0-3, high nibbles: chunks 4-7).
    ///
    /// # Safety
    /// `p` points at 128 readable bytes; the CPU features as the kernels'.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(in crate::quant) unsafe fn nibbles(p: *const u8) -> [__m256i; 8] {
        let low = _mm256_set1_epi8(0x0F);
        let mut wq = [_mm256_setzero_si256(); 8];
        for c in 0..4 {
            // SAFETY: chunk pair c lies inside the 128 bytes at `p`.
            let v = unsafe { _mm256_loadu_si256(p.add(32 * c) as *const __m256i) };
            wq[c] = _mm256_and_si256(v, low);
            wq[c + 4] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
        }
        wq
    }

    /// The tree order of `scalar::hsum8`, for eight rows at once.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    fn tree_sum(v: &[__m256; 8]) -> __m256 {
        let even = _mm256_add_ps(_mm256_add_ps(v[0], v[4]), _mm256_add_ps(v[2], v[6]));
        let odd = _mm256_add_ps(_mm256_add_ps(v[1], v[5]), _mm256_add_ps(v[3], v[7]));
        _mm256_add_ps(even, odd)
    }

    /// See [`super::dot_group_q8_0`].
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn dot_group_q8_0<const R: usize, const NIBBLES: bool>(
        n: usize,
        grp: &[u8],
        a: [&[u8]; R],
        sc: [&[f32]; R],
        off: [&[i32]; R],
    ) -> Option<[[f32; PACK_ROWS]; R]> {
        let nb = n / 32;
        let gbb = PACK_ROWS * if NIBBLES { 18 } else { 34 };
        if grp.len() < nb * gbb
            || a.iter().any(|r| r.len() < nb * 34)
            || sc.iter().any(|s| s.len() < nb)
            || off.iter().any(|o| o.len() < 8 * nb)
        {
            return None;
        }
        let mut acc = [[_mm256_setzero_ps(); 8]; R];
        for b in 0..nb {
            // SAFETY (whole block): block b of the group, of every activation row and of its
            // scales and offsets are in bounds (checked above).
            unsafe {
                let gp = grp.as_ptr().add(b * gbb);
                // As in `dot_group_q4_1`.
                if R > 1 {
                    crate::mem::prefetch_l1(gp.wrapping_add(2 * nb * gbb), gbb);
                }
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(gp as *const __m128i));
                let mut wq = [_mm256_setzero_si256(); 8];
                if NIBBLES {
                    wq = nibbles(gp.add(16));
                } else {
                    for (j, w) in wq.iter_mut().enumerate() {
                        *w = _mm256_loadu_si256(gp.add(16 + 32 * j) as *const __m256i);
                    }
                }
                for r in 0..R {
                    let ap = a[r].as_ptr().add(b * 34 + 2);
                    let op = off[r].as_ptr().add(8 * b);
                    let dd = _mm256_mul_ps(dw, _mm256_set1_ps(*sc[r].get_unchecked(b)));
                    for (j, w) in wq.iter().enumerate() {
                        let y = _mm256_set1_epi32(std::ptr::read_unaligned(ap.add(4 * j) as *const i32));
                        let s = _mm256_dpbusd_epi32(_mm256_set1_epi32(*op.add(j)), *w, y);
                        acc[r][j] = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(s), acc[r][j]);
                    }
                }
            }
        }
        let mut out = [[0f32; PACK_ROWS]; R];
        for (o, v) in out.iter_mut().zip(acc.iter()) {
            // SAFETY: `o` holds eight floats.
            unsafe { _mm256_storeu_ps(o.as_mut_ptr(), tree_sum(v)) };
        }
        Some(out)
    }
}
