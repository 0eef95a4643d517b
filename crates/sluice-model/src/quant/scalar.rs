//! Portable reference kernels for every block format: the definition the fast paths are tested
//! against. Layouts follow ggml's `block_*` structs byte for byte.

use super::{GgmlType, QK_K, f16_at};

fn f32_at(b: &[u8], i: usize) -> f32 {
    f32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// 6-bit scale and min `j` (0..8) of a Q4_K / Q5_K super-block's 12 packed scale bytes.
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Integer values (0..31 or 0..15) of a 32-element Q4/Q5 block, in element order.
pub(crate) fn unpack_q4_q5(ty: GgmlType, blk: &[u8]) -> [u8; 32] {
    let (qs, qh) = match ty {
        GgmlType::Q4_0 => (&blk[2..18], 0u32),
        GgmlType::Q4_1 => (&blk[4..20], 0u32),
        GgmlType::Q5_0 => (&blk[6..22], u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]])),
        _ => (&blk[8..24], u32::from_le_bytes([blk[4], blk[5], blk[6], blk[7]])),
    };
    let mut q = [0u8; 32];
    for j in 0..16 {
        let hi0 = (((qh >> j) << 4) & 0x10) as u8;
        let hi1 = ((qh >> (j + 12)) & 0x10) as u8;
        q[j] = (qs[j] & 0xF) | hi0;
        q[j + 16] = (qs[j] >> 4) | hi1;
    }
    q
}

/// Q4_K / Q5_K super-block: integer values 0..31 in element order, 8 scales, 8 mins.
fn unpack_k45(ty: GgmlType, blk: &[u8]) -> ([u8; QK_K], [u8; 8], [u8; 8]) {
    let scales = &blk[4..16];
    let (qh, qs) = if ty == GgmlType::Q5_K { (Some(&blk[16..48]), &blk[48..176]) } else { (None, &blk[16..144]) };
    let mut q = [0u8; QK_K];
    let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
    for j in 0..8 {
        (sc[j], mn[j]) = scale_min_k4(j, scales);
    }
    for chunk in 0..4 {
        let ql = &qs[chunk * 32..chunk * 32 + 32];
        for l in 0..32 {
            let (mut lo, mut hi) = (ql[l] & 0xF, ql[l] >> 4);
            if let Some(qh) = qh {
                lo |= ((qh[l] >> (2 * chunk)) & 1) << 4;
                hi |= ((qh[l] >> (2 * chunk + 1)) & 1) << 4;
            }
            q[chunk * 64 + l] = lo;
            q[chunk * 64 + 32 + l] = hi;
        }
    }
    (q, sc, mn)
}

/// Q6_K super-block: signed values -32..31 in element order and 16 scales.
fn unpack_q6k(blk: &[u8]) -> ([i8; QK_K], [i8; 16]) {
    let (ql, qh, sc) = (&blk[0..128], &blk[128..192], &blk[192..208]);
    let mut q = [0i8; QK_K];
    for half in 0..2 {
        let (ql, qh, y) = (&ql[half * 64..], &qh[half * 32..], half * 128);
        for l in 0..32 {
            q[y + l] = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
            q[y + l + 32] = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            q[y + l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            q[y + l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
        }
    }
    let mut s = [0i8; 16];
    for (d, &b) in s.iter_mut().zip(sc) {
        *d = b as i8;
    }
    (q, s)
}

/// Decodes one block of a quantized type.
pub fn dequantize_block(ty: GgmlType, blk: &[u8], out: &mut [f32]) {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 => {
            let d = f16_at(blk, 0);
            let off = if ty == GgmlType::Q4_0 { 8.0 } else { 16.0 };
            for (o, &q) in out.iter_mut().zip(unpack_q4_q5(ty, blk).iter()) {
                *o = (q as f32 - off) * d;
            }
        }
        GgmlType::Q4_1 | GgmlType::Q5_1 => {
            let (d, m) = (f16_at(blk, 0), f16_at(blk, 2));
            for (o, &q) in out.iter_mut().zip(unpack_q4_q5(ty, blk).iter()) {
                *o = q as f32 * d + m;
            }
        }
        GgmlType::Q8_0 => {
            let d = f16_at(blk, 0);
            for (o, &q) in out.iter_mut().zip(&blk[2..34]) {
                *o = q as i8 as f32 * d;
            }
        }
        GgmlType::Q8_1 => {
            let d = f16_at(blk, 0);
            for (o, &q) in out.iter_mut().zip(&blk[4..36]) {
                *o = q as i8 as f32 * d;
            }
        }
        GgmlType::Q4_K | GgmlType::Q5_K => {
            let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
            let (q, sc, mn) = unpack_k45(ty, blk);
            for (j, o) in out.chunks_exact_mut(32).enumerate() {
                let (d1, m1) = (d * sc[j] as f32, dmin * mn[j] as f32);
                for (o, &q) in o.iter_mut().zip(&q[j * 32..j * 32 + 32]) {
                    *o = d1 * q as f32 - m1;
                }
            }
        }
        GgmlType::Q6_K => {
            let d = f16_at(blk, 208);
            let (q, sc) = unpack_q6k(blk);
            for (i, o) in out.iter_mut().enumerate() {
                *o = d * sc[i / 16] as f32 * q[i] as f32;
            }
        }
        GgmlType::Q8_K => {
            let d = f32_at(blk, 0);
            for (o, &q) in out.iter_mut().zip(&blk[4..4 + QK_K]) {
                *o = q as i8 as f32 * d;
            }
        }
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
            super::dequantize(ty, blk, out);
        }
    }
}

/// Round half to even, as ggml's SIMD quantizers and `nearest_int` do.
#[inline(always)]
fn round_even(v: f32) -> i32 {
    v.round_ties_even() as i32
}

/// Encodes one block of activations as Q8_0, Q8_1 or Q8_K.
pub fn quantize_block(ty: GgmlType, x: &[f32], out: &mut [u8]) {
    quantize_block_impl(ty, x, out)
}

/// The same, compiled for AVX2 so rounding is an instruction rather than a libm call.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_block_avx2(ty: GgmlType, x: &[f32], out: &mut [u8]) {
    if matches!(ty, GgmlType::Q8_0 | GgmlType::Q8_1) && x.len() == 32 && out.len() >= ty.block_bytes() {
        // SAFETY: the features are this function's own contract; lengths checked.
        return unsafe { q8_block_avx2(ty, x, out) };
    }
    quantize_block_impl(ty, x, out)
}

/// Q8_0 / Q8_1 block by hand (the generic code does not vectorize): the same maximum, the same
/// products rounded half to even, the same bytes as [`quantize_block`].
///
/// # Safety
/// AVX2, FMA and F16C required; `x` holds 32 floats, `out` one block of `ty`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_block_avx2(ty: GgmlType, x: &[f32], out: &mut [u8]) {
    use std::arch::x86_64::*;
    // SAFETY (loads and the store): 32 floats in `x`, 32 quant bytes at `qoff` in `out`.
    let v = [0, 1, 2, 3].map(|i| unsafe { _mm256_loadu_ps(x.as_ptr().add(8 * i)) });
    let sign = _mm256_set1_ps(-0.0);
    let m = v.iter().fold(_mm256_setzero_ps(), |m, x| _mm256_max_ps(m, _mm256_andnot_ps(sign, *x)));
    let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
    let d = amax / 127.0;
    let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
    let q = v.map(|x| _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(x, id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)));
    let s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
    let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let sum = _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01)));
    // Values are within ±127, so the saturating packs are exact; the permute undoes their
    // per-128-bit interleaving.
    let bytes = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    let bytes = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    let qoff = if ty == GgmlType::Q8_0 { 2 } else { 4 };
    // SAFETY: as above.
    unsafe { _mm256_storeu_si256(out.as_mut_ptr().add(qoff) as *mut __m256i, bytes) };
    out[0..2].copy_from_slice(&half::f16::from_f32(d).to_bits().to_le_bytes());
    if ty == GgmlType::Q8_1 {
        out[2..4].copy_from_slice(&half::f16::from_f32(sum as f32 * d).to_bits().to_le_bytes());
    }
}

#[inline(always)]
fn quantize_block_impl(ty: GgmlType, x: &[f32], out: &mut [u8]) {
    match ty {
        GgmlType::Q8_0 | GgmlType::Q8_1 => {
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            let qoff = if ty == GgmlType::Q8_0 { 2 } else { 4 };
            let mut sum = 0i32;
            for (o, &v) in out[qoff..qoff + 32].iter_mut().zip(x) {
                let q = round_even(v * id);
                sum += q;
                *o = q as i8 as u8;
            }
            out[0..2].copy_from_slice(&half::f16::from_f32(d).to_bits().to_le_bytes());
            if ty == GgmlType::Q8_1 {
                out[2..4].copy_from_slice(&half::f16::from_f32(sum as f32 * d).to_bits().to_le_bytes());
            }
        }
        GgmlType::Q8_K => {
            let (mut amax, mut max) = (0f32, 0f32);
            for &v in x {
                if v.abs() > amax {
                    amax = v.abs();
                    max = v;
                }
            }
            if amax == 0.0 {
                out.fill(0);
                return;
            }
            let iscale = -127.0 / max;
            let qs = &mut out[4..4 + QK_K];
            for (o, &v) in qs.iter_mut().zip(x) {
                *o = round_even(iscale * v).min(127) as i8 as u8;
            }
            let mut bsums = [0i16; 16];
            for (j, s) in bsums.iter_mut().enumerate() {
                *s = qs[j * 16..j * 16 + 16].iter().map(|&q| q as i8 as i16).sum();
            }
            out[0..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
            for (j, s) in bsums.iter().enumerate() {
                out[4 + QK_K + 2 * j..4 + QK_K + 2 * j + 2].copy_from_slice(&s.to_le_bytes());
            }
        }
        _ => debug_assert!(false, "not an activation block type: {ty:?}"),
    }
}

fn q8k_parts(a: &[u8]) -> (f32, &[u8], [i32; 16]) {
    let mut bsums = [0i32; 16];
    for (j, s) in bsums.iter_mut().enumerate() {
        let o = 4 + QK_K + 2 * j;
        *s = i16::from_le_bytes([a[o], a[o + 1]]) as i32;
    }
    (f32_at(a, 0), &a[4..4 + QK_K], bsums)
}

/// Horizontal sum of 8 lanes in the reference's tree order: halves, then pairs.
pub(crate) fn hsum8(v: &[f32; 8]) -> f32 {
    let t = [v[0] + v[4], v[1] + v[5], v[2] + v[6], v[3] + v[7]];
    (t[0] + t[2]) + (t[1] + t[3])
}

/// Integer dot products of a 32-element chunk split into 8 lanes of 4 consecutive elements
/// (the lanes of a `maddubs` + `madd` pair).
fn lane_dots(x: impl Fn(usize) -> i32, y: &[u8]) -> [i32; 8] {
    let mut l = [0i32; 8];
    for (k, lane) in l.iter_mut().enumerate() {
        *lane = (4 * k..4 * k + 4).map(|e| x(e) * y[e] as i8 as i32).sum();
    }
    l
}

/// Reference dot product of a weight row with an activation row in the weight's `dot_type`.
///
/// Every quantized kernel accumulates per lane exactly as the AVX2 kernels do (8 float lanes,
/// one FMA per block or super-block, then a tree sum), so scalar and SIMD results are bit-equal.
pub fn vec_dot(wt: GgmlType, n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = [0f32; 8];
    let fma = |acc: &mut [f32; 8], d: f32, lanes: &[i32; 8]| {
        for (a, &l) in acc.iter_mut().zip(lanes) {
            *a = d.mul_add(l as f32, *a);
        }
    };
    match wt {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
            let mut wf = vec![0f32; n];
            super::dequantize(wt, w, &mut wf);
            wf.iter().zip(a.chunks_exact(4)).map(|(x, c)| x * f32_at(c, 0)).sum()
        }
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => {
            for (wb, ab) in w.chunks_exact(wt.block_bytes()).zip(a.chunks_exact(34)) {
                let aq = &ab[2..34];
                let lanes = if wt == GgmlType::Q8_0 {
                    lane_dots(|e| wb[2 + e] as i8 as i32, aq)
                } else {
                    let off = if wt == GgmlType::Q4_0 { 8 } else { 16 };
                    let q = unpack_q4_q5(wt, wb);
                    lane_dots(|e| q[e] as i32 - off, aq)
                };
                fma(&mut acc, f16_at(wb, 0) * f16_at(ab, 0), &lanes);
            }
            hsum8(&acc)
        }
        GgmlType::Q4_1 | GgmlType::Q5_1 => {
            let mut summs = 0f32;
            for (wb, ab) in w.chunks_exact(wt.block_bytes()).zip(a.chunks_exact(36)) {
                let q = unpack_q4_q5(wt, wb);
                summs += f16_at(wb, 2) * f16_at(ab, 2);
                let lanes = lane_dots(|e| q[e] as i32, &ab[4..36]);
                fma(&mut acc, f16_at(wb, 0) * f16_at(ab, 0), &lanes);
            }
            hsum8(&acc) + summs
        }
        GgmlType::Q4_K | GgmlType::Q5_K => {
            let mut acc_m = [0f32; 4];
            for (wb, ab) in w.chunks_exact(wt.block_bytes()).zip(a.chunks_exact(292)) {
                let (d8, aq, bsums) = q8k_parts(ab);
                let (q, sc, mn) = unpack_k45(wt, wb);
                let mut sumi = [0i32; 8];
                for j in 0..8 {
                    let l = lane_dots(|e| q[32 * j + e] as i32, &aq[32 * j..32 * j + 32]);
                    for (s, v) in sumi.iter_mut().zip(l) {
                        *s += sc[j] as i32 * v;
                    }
                }
                fma(&mut acc, d8 * f16_at(wb, 0), &sumi);
                let dmin = -d8 * f16_at(wb, 2);
                for (m, am) in acc_m.iter_mut().enumerate() {
                    let pair = |k: usize| mn[k] as i32 * (bsums[2 * k] + bsums[2 * k + 1]);
                    *am = dmin.mul_add((pair(2 * m) + pair(2 * m + 1)) as f32, *am);
                }
            }
            hsum8(&acc) + ((acc_m[0] + acc_m[2]) + (acc_m[1] + acc_m[3]))
        }
        GgmlType::Q6_K => {
            for (wb, ab) in w.chunks_exact(210).zip(a.chunks_exact(292)) {
                let (d8, aq, bsums) = q8k_parts(ab);
                let (q, sc) = unpack_q6k(wb);
                let mut sumi = [0i32; 8];
                for c in 0..8 {
                    // Unsigned values (q + 32); the offset is taken out through the block sums.
                    let l = lane_dots(|e| q[32 * c + e] as i32 + 32, &aq[32 * c..32 * c + 32]);
                    for (k, (s, v)) in sumi.iter_mut().zip(l).enumerate() {
                        *s += sc[2 * c + k / 4] as i32 * v;
                    }
                }
                for (k, s) in sumi.iter_mut().enumerate() {
                    *s -= 32 * (bsums[2 * k] * sc[2 * k] as i32 + bsums[2 * k + 1] * sc[2 * k + 1] as i32);
                }
                fma(&mut acc, d8 * f16_at(wb, 208), &sumi);
            }
            hsum8(&acc)
        }
        GgmlType::Q8_1 | GgmlType::Q8_K => {
            debug_assert!(false, "activation type used as weight");
            0.0
        }
    }
}
