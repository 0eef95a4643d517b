//! x86 dot-product kernels (same arithmetic as `scalar`, integer sums exact), compiled twice
//! from one source: `avx2` (AVX2 + FMA + F16C) and `avx512vnni` (the same 256-bit code with
//! VNNI's fused multiply-add of bytes, which produces identical lane sums in fewer
//! instructions). Every function is `unsafe` because it requires its CPU features; callers
//! check them once through `detect_isa`.

macro_rules! x86_kernels {
    ($features:literal, $vnni:literal) => {
use std::arch::x86_64::*;

use crate::quant::GgmlType;

#[inline]
#[target_feature(enable = $features)]
fn f16_load(b: &[u8], i: usize) -> f32 {
    let bits = u16::from_le_bytes([b[i], b[i + 1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

#[inline]
#[target_feature(enable = $features)]
fn hsum(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps(v, 1);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// 32 nibbles of 16 bytes as 32 bytes in element order (low nibbles, then high nibbles).
#[inline]
#[target_feature(enable = $features)]
unsafe fn nibbles(p: *const u8) -> __m256i {
    // SAFETY: the caller passes a pointer to 16 readable bytes.
    let tmp = unsafe { _mm_loadu_si128(p as *const __m128i) };
    let both = _mm256_set_m128i(_mm_srli_epi16(tmp, 4), tmp);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

/// Sum of unsigned(x) * signed(y) over 32 byte pairs, as 8 floats.
#[inline]
#[target_feature(enable = $features)]
fn mul_sum_us8(x: __m256i, y: __m256i) -> __m256 {
    if $vnni {
        // One instruction for the same 8 lane sums (no 16-bit intermediate, same integers).
        #[allow(unused_unsafe, reason = "needed only in the copy compiled without VNNI, where this branch is dead")]
        // SAFETY: this branch only runs in the copy compiled with the VNNI target features.
        let sums = unsafe { _mm256_dpbusd_epi32(_mm256_setzero_si256(), x, y) };
        _mm256_cvtepi32_ps(sums)
    } else {
        let dot = _mm256_maddubs_epi16(x, y);
        _mm256_cvtepi32_ps(_mm256_madd_epi16(dot, _mm256_set1_epi16(1)))
    }
}

#[inline]
#[target_feature(enable = $features)]
unsafe fn load32(p: *const u8) -> __m256i {
    // SAFETY: the caller passes a pointer to 32 readable bytes.
    unsafe { _mm256_loadu_si256(p as *const __m256i) }
}

/// Dot products of one weight row with `R` activation rows, bit-equal per row to the scalar
/// kernel; each weight block is decoded once for all `R` rows. `None` when this type has no
/// AVX2 kernel (for this `R`): the caller then uses the scalar one.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = $features)]
pub unsafe fn dot_rows<const R: usize>(wt: GgmlType, n: usize, w: &[u8], a: [&[u8]; R]) -> Option<[f32; R]> {
    // Checked here so the pointer arithmetic in the kernels stays inside every slice.
    let arb = wt.dot_type().row_bytes(n);
    if w.len() < wt.row_bytes(n) || a.iter().any(|r| r.len() < arb) {
        return None;
    }
    let ap = a.map(<[u8]>::as_ptr);
    // SAFETY (all arms): lengths checked above; the CPU features are the caller's contract.
    unsafe {
        Some(match wt {
            GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => q8_family::<1, R>(wt, n, [w], a, ap)[0],
            GgmlType::Q4_1 => q4_1::<1, R, false>(n, [w], a, ap, [&[]; R])[0],
            GgmlType::Q4_K => q4_k::<R>(n, w, a, ap),
            GgmlType::Q6_K => q6_k::<R>(n, w, a, ap),
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 if R == 1 => {
                let mut out = [0f32; R];
                out[0] = float_dot(wt, n, w.as_ptr(), ap[0]);
                out
            }
            _ => return None,
        })
    }
}

/// Dot products of two weight rows with `R` activation rows (a 2 × R register tile: each
/// activation block is loaded once for both rows), bit-equal per pair to the scalar kernel.
/// `None` for types without a tiled kernel.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = $features)]
pub unsafe fn dot_tile<const R: usize>(wt: GgmlType, n: usize, w: [&[u8]; 2], a: [&[u8]; R]) -> Option<[[f32; R]; 2]> {
    let arb = wt.dot_type().row_bytes(n);
    if w.iter().any(|r| r.len() < wt.row_bytes(n)) || a.iter().any(|r| r.len() < arb) {
        return None;
    }
    let ap = a.map(<[u8]>::as_ptr);
    // SAFETY: lengths checked above; the CPU features are the caller's contract.
    unsafe {
        match wt {
            GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => Some(q8_family::<2, R>(wt, n, w, a, ap)),
            GgmlType::Q4_1 => Some(q4_1::<2, R, false>(n, w, a, ap, [&[]; R])),
            _ => None,
        }
    }
}

/// [`dot_tile`] for Q4_1 weights with the activations' block scales already in floats
/// (`sc[r]` = d, s of each block of row `r`, from [`crate::quant::q8_1_scales`]): converted once
/// per matmul instead of once per weight-row pair. Same results.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = $features)]
pub unsafe fn dot_tile_q4_1<const R: usize>(n: usize, w: [&[u8]; 2], a: [&[u8]; R], sc: [&[f32]; R]) -> Option<[[f32; R]; 2]> {
    let wt = GgmlType::Q4_1;
    let arb = wt.dot_type().row_bytes(n);
    if w.iter().any(|r| r.len() < wt.row_bytes(n)) || a.iter().any(|r| r.len() < arb) || sc.iter().any(|s| s.len() < 2 * (n / 32)) {
        return None;
    }
    let ap = a.map(<[u8]>::as_ptr);
    // SAFETY: lengths checked above; the CPU features are the caller's contract.
    Some(unsafe { q4_1::<2, R, true>(n, w, a, ap, sc) })
}

/// Blocks of 32 with one f16 scale and signed values: Q4_0 (value - 8), Q5_0 (value - 16),
/// Q8_0 (bytes), against Q8_0 activations; `W` weight rows × `R` activation rows.
#[inline]
#[target_feature(enable = $features)]
unsafe fn q8_family<const W: usize, const R: usize>(
    wt: GgmlType,
    n: usize,
    w: [&[u8]; W],
    a: [&[u8]; R],
    ap: [*const u8; R],
) -> [[f32; R]; W] {
    let bb = wt.block_bytes();
    let mut acc = [[_mm256_setzero_ps(); R]; W];
    for i in 0..n / 32 {
        let (wo, ao) = (i * bb, i * 34);
        let mut xs = [_mm256_setzero_si256(); W];
        let mut dws = [0f32; W];
        for (k, row) in w.iter().enumerate() {
            let wp = row.as_ptr();
            dws[k] = f16_load(row, wo);
            // SAFETY: block i lies inside every weight row.
            xs[k] = unsafe {
                match wt {
                    GgmlType::Q4_0 => _mm256_sub_epi8(nibbles(wp.add(wo + 2)), _mm256_set1_epi8(8)),
                    GgmlType::Q5_0 => {
                        let qh = u32::from_le_bytes([row[wo + 2], row[wo + 3], row[wo + 4], row[wo + 5]]);
                        // Value - 16 as a signed byte: set the high nibble where the fifth bit is clear.
                        let hi = _mm256_andnot_si256(bits_to_bytes(qh), _mm256_set1_epi8(0xF0u8 as i8));
                        _mm256_or_si256(nibbles(wp.add(wo + 6)), hi)
                    }
                    _ => load32(wp.add(wo + 2)),
                }
            };
        }
        for r in 0..R {
            // SAFETY: block i lies inside activation row r.
            let y = unsafe { load32(ap[r].add(ao + 2)) };
            let da = f16_load(a[r], ao);
            for k in 0..W {
                let x = xs[k];
                let prod = mul_sum_us8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
                acc[k][r] = _mm256_fmadd_ps(_mm256_set1_ps(dws[k] * da), prod, acc[k][r]);
            }
        }
    }
    acc.map(|row| row.map(|v| hsum(v)))
}

/// Q4_1 against Q8_1: scale and min per 32 values; `W` weight rows × `R` activation rows.
#[inline]
#[target_feature(enable = $features)]
unsafe fn q4_1<const W: usize, const R: usize, const PRE: bool>(
    n: usize,
    w: [&[u8]; W],
    a: [&[u8]; R],
    ap: [*const u8; R],
    sc: [&[f32]; R],
) -> [[f32; R]; W] {
    let mut acc = [[_mm256_setzero_ps(); R]; W];
    let mut summs = [[0f32; R]; W];
    for i in 0..n / 32 {
        let (wo, ao) = (i * 20, i * 36);
        let mut xs = [_mm256_setzero_si256(); W];
        let mut dm = [(0f32, 0f32); W];
        for (k, row) in w.iter().enumerate() {
            dm[k] = (f16_load(row, wo), f16_load(row, wo + 2));
            // SAFETY: block i lies inside every weight row.
            xs[k] = unsafe { nibbles(row.as_ptr().add(wo + 4)) };
        }
        for r in 0..R {
            let (da, sa) = if PRE {
                // SAFETY: the caller checked that `sc[r]` holds two floats per block.
                unsafe { (*sc[r].get_unchecked(2 * i), *sc[r].get_unchecked(2 * i + 1)) }
            } else {
                (f16_load(a[r], ao), f16_load(a[r], ao + 2))
            };
            // SAFETY: block i lies inside activation row r.
            let y = unsafe { load32(ap[r].add(ao + 4)) };
            for k in 0..W {
                summs[k][r] += dm[k].1 * sa;
                acc[k][r] = _mm256_fmadd_ps(_mm256_set1_ps(dm[k].0 * da), mul_sum_us8(xs[k], y), acc[k][r]);
            }
        }
    }
    let mut out = [[0f32; R]; W];
    for k in 0..W {
        for r in 0..R {
            out[k][r] = hsum(acc[k][r]) + summs[k][r];
        }
    }
    out
}

fn q8k_scale(a: &[u8], ao: usize) -> f32 {
    f32::from_le_bytes([a[ao], a[ao + 1], a[ao + 2], a[ao + 3]])
}

/// Q4_K against Q8_K: 256-value super-blocks, 8 sub-blocks with 6-bit scales and mins.
#[inline]
#[target_feature(enable = $features)]
unsafe fn q4_k<const R: usize>(n: usize, w: &[u8], a: [&[u8]; R], ap: [*const u8; R]) -> [f32; R] {
    let wp = w.as_ptr();
    let low = _mm256_set1_epi8(0x0F);
    let mut acc = [_mm256_setzero_ps(); R];
    let mut acc_m = [_mm_setzero_ps(); R];
    for i in 0..n / 256 {
        let (wo, ao) = (i * 144, i * 292);
        let (dw, dminw) = (f16_load(w, wo), f16_load(w, wo + 2));
        let mut sc = [0i16; 8];
        let mut mn = [0i16; 8];
        for j in 0..8 {
            let (s, m) = crate::quant::scalar::scale_min_k4(j, &w[wo + 4..wo + 16]);
            sc[j] = s as i16;
            mn[j] = m as i16;
        }
        // SAFETY: `mn` holds 8 i16.
        let mins = unsafe { _mm_loadu_si128(mn.as_ptr() as *const __m128i) };
        let mut sumi = [_mm256_setzero_si256(); R];
        for j in 0..4 {
            // SAFETY: chunk j of the 128 value bytes lies inside the super-block.
            let bits = unsafe { load32(wp.add(wo + 16 + 32 * j)) };
            let xlo = _mm256_and_si256(bits, low);
            let xhi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), low);
            let (slo, shi) = (_mm256_set1_epi16(sc[2 * j]), _mm256_set1_epi16(sc[2 * j + 1]));
            for r in 0..R {
                // SAFETY: 64 activation bytes of chunk j lie inside super-block i of row r.
                let (ylo, yhi) = unsafe { (load32(ap[r].add(ao + 4 + 64 * j)), load32(ap[r].add(ao + 36 + 64 * j))) };
                let plo = _mm256_madd_epi16(slo, _mm256_maddubs_epi16(xlo, ylo));
                let phi = _mm256_madd_epi16(shi, _mm256_maddubs_epi16(xhi, yhi));
                sumi[r] = _mm256_add_epi32(sumi[r], _mm256_add_epi32(plo, phi));
            }
        }
        for r in 0..R {
            let d8 = q8k_scale(a[r], ao);
            // Minimum terms: 4 lanes of mins · (pairs of block sums).
            // SAFETY: the 16 block sums lie inside super-block i of row r.
            let bsums = unsafe { _mm256_loadu_si256(ap[r].add(ao + 260) as *const __m256i) };
            let q8s = _mm_hadd_epi16(_mm256_castsi256_si128(bsums), _mm256_extracti128_si256(bsums, 1));
            acc_m[r] = _mm_fmadd_ps(_mm_set1_ps(-d8 * dminw), _mm_cvtepi32_ps(_mm_madd_epi16(mins, q8s)), acc_m[r]);
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d8 * dw), _mm256_cvtepi32_ps(sumi[r]), acc[r]);
        }
    }
    let mut out = [0f32; R];
    for r in 0..R {
        let m = _mm_add_ps(acc_m[r], _mm_movehl_ps(acc_m[r], acc_m[r]));
        let m = _mm_add_ss(m, _mm_movehdup_ps(m));
        out[r] = hsum(acc[r]) + _mm_cvtss_f32(m);
    }
    out
}

/// Q6_K against Q8_K: 256-value super-blocks, 16 signed 8-bit scales, values 0..63 offset by 32.
#[inline]
#[target_feature(enable = $features)]
unsafe fn q6_k<const R: usize>(n: usize, w: &[u8], a: [&[u8]; R], ap: [*const u8; R]) -> [f32; R] {
    let wp = w.as_ptr();
    let (m15, m3) = (_mm256_set1_epi8(15), _mm256_set1_epi8(3));
    let mut acc = [_mm256_setzero_ps(); R];
    for i in 0..n / 256 {
        let (wo, ao) = (i * 210, i * 292);
        let dw = f16_load(w, wo + 208);
        let sc = &w[wo + 192..wo + 208];
        // SAFETY: the 16 scale bytes lie inside the super-block.
        let scales16 = unsafe { _mm256_cvtepi8_epi16(_mm_loadu_si128(wp.add(wo + 192) as *const __m128i)) };
        let mut sumi = [_mm256_setzero_si256(); R];
        for half in 0..2 {
            let (ql, qh) = (wo + 64 * half, wo + 128 + 32 * half);
            // SAFETY: 64 ql bytes and 32 qh bytes of this half lie inside the super-block.
            let (b1, b2, bh) = unsafe { (load32(wp.add(ql)), load32(wp.add(ql + 32)), load32(wp.add(qh))) };
            // Two high bits per value, moved to bits 4..5.
            let h = |shift: i32| _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(bh, _mm_cvtsi32_si128(shift)), m3), 4);
            let q = [
                _mm256_or_si256(_mm256_and_si256(b1, m15), h(0)),
                _mm256_or_si256(_mm256_and_si256(b2, m15), h(2)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b1, 4), m15), h(4)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b2, 4), m15), h(6)),
            ];
            for (c, qc) in q.iter().enumerate() {
                let s_idx = 8 * half + 2 * c;
                let scale = _mm256_set_m128i(
                    _mm_set1_epi16(sc[s_idx + 1] as i8 as i16),
                    _mm_set1_epi16(sc[s_idx] as i8 as i16),
                );
                for r in 0..R {
                    // SAFETY: chunk c of this half lies inside super-block i of row r.
                    let yc = unsafe { load32(ap[r].add(ao + 4 + 128 * half + 32 * c)) };
                    sumi[r] = _mm256_add_epi32(sumi[r], _mm256_madd_epi16(scale, _mm256_maddubs_epi16(*qc, yc)));
                }
            }
        }
        for r in 0..R {
            // SAFETY: the 16 block sums lie inside super-block i of row r.
            let bsums = unsafe { _mm256_loadu_si256(ap[r].add(ao + 260) as *const __m256i) };
            let offset = _mm256_slli_epi32(_mm256_madd_epi16(bsums, scales16), 5);
            let v = _mm256_cvtepi32_ps(_mm256_sub_epi32(sumi[r], offset));
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(q8k_scale(a[r], ao) * dw), v, acc[r]);
        }
    }
    acc.map(|v| hsum(v))
}

/// Float weights against f32 activations, 4 × 8 lanes.
#[inline]
#[target_feature(enable = $features)]
fn float_dot(wt: GgmlType, n: usize, wp: *const u8, ap: *const u8) -> f32 {
    let load_w = |i: usize| -> __m256 {
        // SAFETY: i + 8 <= n; the caller checked both rows hold n elements.
        unsafe {
            match wt {
                GgmlType::F32 => _mm256_loadu_ps(wp.add(4 * i) as *const f32),
                GgmlType::F16 => _mm256_cvtph_ps(_mm_loadu_si128(wp.add(2 * i) as *const __m128i)),
                _ => {
                    let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(wp.add(2 * i) as *const __m128i));
                    _mm256_castsi256_ps(_mm256_slli_epi32(h, 16))
                }
            }
        }
    };
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (k, a) in acc.iter_mut().enumerate() {
            // SAFETY: as above.
            let x = unsafe { _mm256_loadu_ps(ap.add(4 * (i + 8 * k)) as *const f32) };
            *a = _mm256_fmadd_ps(load_w(i + 8 * k), x, *a);
        }
        i += 32;
    }
    while i + 8 <= n {
        // SAFETY: as above.
        let x = unsafe { _mm256_loadu_ps(ap.add(4 * i) as *const f32) };
        acc[0] = _mm256_fmadd_ps(load_w(i), x, acc[0]);
        i += 8;
    }
    let mut sum = hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[2]), _mm256_add_ps(acc[1], acc[3])));
    let mut tail = [0f32; 8];
    for (j, t) in tail.iter_mut().enumerate().take(n - i) {
        let mut w = [0f32; 8];
        // SAFETY: element i + j < n.
        unsafe { _mm256_storeu_ps(w.as_mut_ptr(), load_w_scalar(wt, wp, i + j)) };
        // SAFETY: element i + j < n.
        *t = w[0] * unsafe { *(ap.add(4 * (i + j)) as *const f32) };
    }
    sum += tail.iter().sum::<f32>();
    sum
}

#[inline]
#[target_feature(enable = $features)]
unsafe fn load_w_scalar(wt: GgmlType, wp: *const u8, i: usize) -> __m256 {
    let mut v = [0f32; 1];
    // SAFETY: the caller passes an in-bounds element index.
    let b = unsafe { std::slice::from_raw_parts(wp.add(i * wt.block_bytes()), wt.block_bytes()) };
    crate::quant::dequantize(wt, b, &mut v);
    _mm256_set1_ps(v[0])
}

/// 32 bits as 32 bytes: 0xFF where the bit is set.
#[inline]
#[target_feature(enable = $features)]
fn bits_to_bytes(bits: u32) -> __m256i {
    let v = _mm256_set1_epi32(bits as i32);
    // Byte i takes source byte i / 8.
    let shuf = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
    );
    let bytes = _mm256_shuffle_epi8(v, shuf);
    let mask = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    _mm256_cmpeq_epi8(_mm256_and_si256(bytes, mask), mask)
}


    };
}

/// AVX2 + FMA + F16C.
pub mod avx2 {
    x86_kernels!("avx2,fma,f16c", false);
}

/// AVX2 + FMA + F16C + AVX-512 VNNI (on 256-bit vectors).
pub mod avx512vnni {
    x86_kernels!("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni", true);
}
