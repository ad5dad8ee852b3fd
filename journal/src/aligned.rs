//! A heap buffer aligned for O_DIRECT I/O (4 KiB blocks).

/// O_DIRECT needs buffers, offsets and lengths aligned to the device's block; 4 KiB
/// covers every device this runs on.
pub(crate) const DIRECT_BLOCK_BYTES: u64 = 4096;

/// A zero-initialised, 4 KiB-aligned heap buffer.
pub(crate) struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    layout: std::alloc::Layout,
}

// SAFETY: owned heap memory; `&mut` access is needed to write it.
unsafe impl Send for AlignedBuf {}
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// `size_bytes` must be non-zero.
    pub(crate) fn new(size_bytes: usize) -> AlignedBuf {
        assert!(size_bytes > 0, "an aligned buffer holds at least one byte");
        let layout = std::alloc::Layout::from_size_align(size_bytes, DIRECT_BLOCK_BYTES as usize)
            .expect("valid layout");
        // SAFETY: non-zero size (asserted above).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr =
            std::ptr::NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, layout }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the allocation is `layout.size()` bytes, owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: the allocation is `layout.size()` bytes, owned by self, initialised.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}
