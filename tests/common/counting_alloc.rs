//! A global allocator that counts the bytes live on the heap and the allocations made, for
//! the memory tests (`watch_memory`, `template_memory`, `kwargs_memory`). Include it with
//! `#[path = "common/counting_alloc.rs"] mod counting_alloc;` and install it:
//! `#[global_allocator] static ALLOC: counting_alloc::Counting = counting_alloc::Counting;`.
//! Each memory test is a test binary of its own, so no other test pays for the counting.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};

/// The system allocator, counting.
pub struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

/// Bytes allocated and not yet freed, by every thread of the test binary.
#[allow(dead_code, reason = "each test binary that includes this file uses what it needs")]
pub fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// Allocations made so far (reallocations not included), by every thread of the test binary.
#[allow(dead_code, reason = "each test binary that includes this file uses what it needs")]
pub fn allocations() -> usize {
    ALLOCATIONS.load(Ordering::Relaxed)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
