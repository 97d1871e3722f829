//! A hint to the processor to start loading memory a loop will read a few
//! iterations later.
//!
//! Encoding a checkpoint reads records in key order from wherever a backend
//! keeps them, and restoring writes them wherever their shard's arena is:
//! one cache miss per record, which the hardware prefetcher cannot guess
//! because consecutive records are not at consecutive addresses. Asking for
//! the lines of the record a few steps ahead overlaps those misses.

/// Asks for the cache line holding the first byte of `bytes` (nothing for
/// an empty slice). Only a hint: it reads nothing the program sees, cannot
/// fault, and is a no-op on targets without a prefetch instruction.
#[inline(always)]
pub fn read(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    if !bytes.is_empty() {
        // SAFETY: `_mm_prefetch` is a hint that never dereferences its
        // argument in a way the program can observe (it does not fault on
        // any address); it is `unsafe` only because it is a target-feature
        // function, and SSE is part of every x86_64 target.
        #[allow(unsafe_code)]
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                bytes.as_ptr().cast(),
            );
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

/// [`read`] of the first and the last cache line of `bytes`: a record's
/// value of a few hundred bytes spans several lines, and the processor
/// fetches the ones between on its own once it streams through.
#[inline(always)]
pub fn read_ends(bytes: &[u8]) {
    read(bytes);
    if let Some(last) = bytes.len().checked_sub(1) {
        read(&bytes[last..]);
    }
}
