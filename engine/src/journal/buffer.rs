//! A heap buffer aligned to [`BLOCK_BYTES`], as O_DIRECT requires of the memory it
//! writes from.
//!
//! Invariants: the capacity is a non-zero multiple of [`BLOCK_BYTES`]; the memory is
//! zeroed at allocation and owned by exactly one `AlignedBuffer`, which moves (without
//! copying the memory) between the journal and its storage while the kernel reads it.

use std::alloc::Layout;
use std::ptr::NonNull;

use super::BLOCK_BYTES;

/// An owned, block-aligned, zero-initialised byte buffer.
pub struct AlignedBuffer {
    ptr: NonNull<u8>,
    capacity: usize,
}

// SAFETY: the buffer owns its memory exclusively (no aliasing pointers are kept), so
// moving it to another thread is as safe as moving a `Vec<u8>`.
unsafe impl Send for AlignedBuffer {}

impl AlignedBuffer {
    /// Allocates `capacity` zeroed bytes aligned to [`BLOCK_BYTES`].
    ///
    /// Panics if `capacity` is zero or not a multiple of [`BLOCK_BYTES`]: callers pass
    /// constants, so that would be a broken invariant, not bad input.
    pub fn new(capacity: usize) -> Self {
        assert!(capacity > 0, "an aligned buffer cannot be empty");
        assert!(
            capacity.is_multiple_of(BLOCK_BYTES),
            "capacity must be whole blocks"
        );
        let layout = Self::layout(capacity);
        // SAFETY: the layout has a non-zero size (asserted above).
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout)
        };
        AlignedBuffer { ptr, capacity }
    }

    fn layout(capacity: usize) -> Layout {
        Layout::from_size_align(capacity, BLOCK_BYTES).expect("block-aligned layout")
    }

    /// The capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The whole buffer.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points to `capacity` initialised (zeroed at allocation) bytes
        // owned by `self`; the shared borrow of `self` prevents mutation meanwhile.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.capacity) }
    }

    /// The whole buffer, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and the exclusive borrow of `self` makes this the
        // only reference to the memory.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.capacity) }
    }

    /// The start of the buffer, for handing to the kernel.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for AlignedBuffer {
    fn drop(&mut self) {
        // SAFETY: `ptr` was allocated in `new` with exactly this layout and is freed once.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.capacity)) }
    }
}

impl std::fmt::Debug for AlignedBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuffer")
            .field("capacity", &self.capacity)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_zeroed() {
        let mut buffer = AlignedBuffer::new(2 * BLOCK_BYTES);
        assert_eq!(buffer.as_ptr() as usize % BLOCK_BYTES, 0);
        assert!(buffer.as_slice().iter().all(|&b| b == 0));
        buffer.as_mut_slice()[BLOCK_BYTES] = 7;
        assert_eq!(buffer.as_slice()[BLOCK_BYTES], 7);
    }
}
