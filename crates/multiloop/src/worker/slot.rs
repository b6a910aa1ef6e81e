//! A heap slot for a task's future that is reused when the task finishes on
//! its first poll, as most short tasks do.
//!
//! A future must stay where it was first polled, so the worker places each
//! one on the heap before polling it. Allocating and freeing that place for
//! every task was a fifth of a worker's time on trivial tasks (W1 in
//! `multiloop-bench`); a finished task's slot is kept for the next task
//! of the same layout instead. A task that waits keeps its slot for good:
//! it becomes the task's `Box`, without moving.

use std::alloc::{self, Layout};
use std::cell::Cell;
use std::marker::PhantomData;
use std::pin::Pin;
use std::ptr::NonNull;

thread_local! {
    /// The allocation of the last finished task's future, and its layout.
    static SPARE: Cell<Option<(NonNull<u8>, Layout)>> = const { Cell::new(None) };
}

/// A live `F` in an allocation of `Layout::new::<F>()` from the global
/// allocator, which it never leaves.
pub(crate) struct Slot<F> {
    ptr: NonNull<F>,
    _owns: PhantomData<F>,
}

impl<F> Slot<F> {
    /// Places `value` in the spare allocation if it has `F`'s layout, else
    /// in a new one.
    #[cfg(test)]
    pub(crate) fn new(value: F) -> Self {
        Slot::new_with(|| value)
    }

    /// Places the value `make` returns in the spare allocation if it has
    /// `F`'s layout, else in a new one (written in place where the compiler
    /// can: no copy through the stack).
    #[inline(always)]
    pub(crate) fn new_with(make: impl FnOnce() -> F) -> Self {
        let layout = Layout::new::<F>();
        let ptr = if layout.size() == 0 {
            NonNull::<F>::dangling()
        } else {
            let raw = match SPARE.take() {
                Some((spare, spare_layout)) if spare_layout == layout => spare.as_ptr(),
                other => {
                    if let Some((spare, spare_layout)) = other {
                        // SAFETY: the spare was allocated by the global
                        // allocator with `spare_layout` and nothing uses it.
                        unsafe { alloc::dealloc(spare.as_ptr(), spare_layout) };
                    }
                    // SAFETY: `layout` has a non-zero size.
                    unsafe { alloc::alloc(layout) }
                }
            };
            match NonNull::new(raw.cast::<F>()) {
                Some(ptr) => ptr,
                None => alloc::handle_alloc_error(layout),
            }
        };
        // SAFETY: `ptr` is valid for writes of an `F` and suitably aligned
        // (an allocation of `F`'s layout, or dangling for a zero-sized `F`).
        unsafe { ptr.as_ptr().write(make()) };
        Slot {
            ptr,
            _owns: PhantomData,
        }
    }

    /// The value, pinned: it never moves while the slot lives, and
    /// [`into_box`](Slot::into_box) keeps it in place.
    #[inline]
    pub(crate) fn as_pin_mut(&mut self) -> Pin<&mut F> {
        // SAFETY: the value lives at `ptr` until the slot drops it, and is
        // never moved out: the slot only drops it in place or hands the
        // same allocation to a `Box`.
        unsafe { Pin::new_unchecked(self.ptr.as_mut()) }
    }

    /// Drops the value and keeps the allocation for the next slot.
    pub(crate) fn recycle(self) {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: the value is live and owned by the slot, which is never
        // used again (it is not dropped either: `ManuallyDrop`).
        unsafe { std::ptr::drop_in_place(this.ptr.as_ptr()) };
        let layout = Layout::new::<F>();
        if layout.size() == 0 {
            return;
        }
        if let Some((old, old_layout)) = SPARE.replace(Some((this.ptr.cast(), layout))) {
            // SAFETY: the previous spare was allocated by the global
            // allocator with `old_layout` and nothing uses it.
            unsafe { alloc::dealloc(old.as_ptr(), old_layout) };
        }
    }

    /// The value as a pinned `Box`, in the same place.
    pub(crate) fn into_box(self) -> Pin<Box<F>> {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: the allocation came from the global allocator with
        // `Layout::new::<F>()` (or is dangling for a zero-sized `F`), which
        // is what `Box<F>` frees with; it holds a live `F` that the slot
        // gives up. The value does not move, so pinning it stays sound.
        unsafe { Pin::new_unchecked(Box::from_raw(this.ptr.as_ptr())) }
    }
}

impl<F> Drop for Slot<F> {
    fn drop(&mut self) {
        // SAFETY: as in `into_box`: a `Box` of the live value frees both.
        drop(unsafe { Box::from_raw(self.ptr.as_ptr()) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[test]
    fn a_recycled_slot_is_reused_and_every_value_is_dropped_once() {
        let drops = Rc::new(Cell::new(0));
        struct Counted(Rc<Cell<u32>>, #[allow(dead_code)] [u64; 4]);
        impl Drop for Counted {
            fn drop(&mut self) {
                self.0.set(self.0.get() + 1);
            }
        }
        let first = Slot::new(Counted(Rc::clone(&drops), [1; 4]));
        let at = first.ptr.as_ptr() as usize;
        first.recycle();
        assert_eq!(drops.get(), 1);
        let mut second = Slot::new(Counted(Rc::clone(&drops), [2; 4]));
        assert_eq!(second.ptr.as_ptr() as usize, at, "the spare was not reused");
        assert_eq!(second.as_pin_mut().1, [2; 4]);
        let boxed = second.into_box();
        assert_eq!(drops.get(), 1);
        assert_eq!(&*boxed as *const Counted as usize, at, "the value moved");
        drop(boxed);
        assert_eq!(drops.get(), 2);
        // Another layout frees the spare and allocates its own.
        let other = Slot::new([7u8; 3]);
        drop(other);
        let zst = Slot::new(());
        zst.recycle();
        drop(Slot::new(Counted(Rc::clone(&drops), [3; 4])));
        assert_eq!(drops.get(), 3);
    }
}
