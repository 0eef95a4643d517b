//! Hints to the memory system: cache prefetches and page backing. None changes a result; each
//! is best effort and a no-op where the platform lacks it.

/// Asks for the `bytes` from `p` on to be brought into the first-level cache. A prefetch reads
/// nothing architecturally and never faults, so `p` may point anywhere (past a buffer too).
#[inline(always)]
pub(crate) fn prefetch_l1(p: *const u8, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p, bytes);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, bytes);
}

/// [`prefetch_l1`] into the second-level cache.
#[inline(always)]
pub(crate) fn prefetch_l2(p: *const u8, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(p, bytes);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, bytes);
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch<const HINT: i32>(p: *const u8, bytes: usize) {
    for off in (0..bytes).step_by(64) {
        // SAFETY: a prefetch reads nothing architecturally and never faults.
        unsafe { std::arch::x86_64::_mm_prefetch::<HINT>(p.wrapping_add(off) as *const i8) };
    }
}

/// The whole 4 KiB pages inside `len` bytes from `p`, as (start, length), if any.
#[cfg(target_os = "linux")]
fn whole_pages(p: *const u8, len: usize) -> Option<(usize, usize)> {
    const PAGE: usize = 4096;
    let start = (p as usize).next_multiple_of(PAGE);
    let end = (p as usize + len) / PAGE * PAGE;
    (end > start).then(|| (start, end - start))
}

/// Asks the kernel to back `buf` with 2 MiB pages where it can; call before the pages are
/// first touched. A large matrix streams from memory every step: with 4 KiB pages it costs a
/// TLB miss every 4 KiB (SmolLM2-135M's output head, 30 MB: its product ~14% faster on 2 MiB
/// pages, single-sequence decode ~8%). Only whole 2 MiB-aligned stretches can be backed so:
/// small buffers gain nothing (nor did the model's other matrices, measured all on 2 MiB).
pub(crate) fn huge_pages(buf: &mut [u8]) {
    #[cfg(target_os = "linux")]
    if let Some((start, len)) = whole_pages(buf.as_ptr(), buf.len()) {
        // SAFETY: the range lies inside `buf`; HUGEPAGE changes the backing, never contents.
        unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE) };
    }
    let _ = buf;
}

/// Asks the kernel to drop the pages of `bytes` from this process's resident set (whole pages
/// inside the range only). `MADV_PAGEOUT` never loses data: file pages are re-read and anonymous
/// ones swapped, so it is safe whatever `bytes` is backed by.
pub(crate) fn release_pages(bytes: &[u8]) {
    #[cfg(target_os = "linux")]
    if let Some((start, len)) = whole_pages(bytes.as_ptr(), bytes.len()) {
        // SAFETY: the range lies inside `bytes`; PAGEOUT changes residency, never contents.
        unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_PAGEOUT) };
    }
    let _ = bytes;
}
