//! Batches of work items: the datapoints a worker thread adds, each for one output series.
//!
//! A work item names its series by a plain pointer to the series' [`SeriesKey`], not by a
//! counted `Arc`. With an `Arc` per item, the connection's increment and the worker's
//! decrement of the same reference count moved the key's cache line between cores for
//! every datapoint: 38 % of the hand-off and part of the worker's add in the cost table of
//! `docs/performance.md`. Instead a [`Batch`] holds whatever owns its items' keys (a
//! connection's route generation, a cluster message's keys): one reference count per
//! batch and owner, not per datapoint. Items cannot leave their batch (no owned access,
//! no `&mut`), so no key is read after its owner was let go.

use std::any::Any;
use std::ptr::NonNull;
use std::sync::Arc;

use crate::route::SeriesKey;

/// Something that keeps keys alive for a batch.
pub type Owner = Arc<dyn Any + Send + Sync>;

/// An output series' key, borrowed from an `Arc` that the item's [`Batch`] holds.
#[derive(Clone, Copy, Debug)]
struct KeyRef(NonNull<SeriesKey>);

// SAFETY: a `KeyRef` is a shared reference to a `SeriesKey` (which is `Send` and `Sync`)
// that is only dereferenced through its batch, which keeps the key alive.
#[allow(unsafe_code)]
unsafe impl Send for KeyRef {}
// SAFETY: as for `Send`: only shared access to a `Sync` key.
#[allow(unsafe_code)]
unsafe impl Sync for KeyRef {}

/// One datapoint for one output series. Lives only inside a [`Batch`].
#[derive(Debug)]
pub struct WorkItem {
    key: KeyRef,
    /// Unix seconds.
    pub timestamp: f64,
    /// The value.
    pub value: f64,
}

impl WorkItem {
    /// The output series.
    #[inline]
    #[allow(unsafe_code)]
    pub fn key(&self) -> &SeriesKey {
        // SAFETY: the pointer was taken from an `Arc<SeriesKey>` owned by something the
        // item's batch holds ([`Batch::push_held`]'s contract); `&self` borrows that batch
        // (an item is never moved out of it), so the owner, and the key, outlive the
        // returned reference.
        unsafe { self.key.0.as_ref() }
    }

    /// The output series as a counted reference (a worker keeps one for a new series).
    #[allow(unsafe_code)]
    pub fn key_arc(&self) -> Arc<SeriesKey> {
        let ptr = self.key.0.as_ptr().cast_const();
        // SAFETY: `ptr` came from `Arc::as_ptr` of a live `Arc<SeriesKey>` (see
        // [`WorkItem::key`]); one more strong count is added before an `Arc` is made
        // from it, so the returned `Arc` owns that count and the owner's stays untouched.
        unsafe {
            Arc::increment_strong_count(ptr);
            Arc::from_raw(ptr)
        }
    }
}

/// Work items for one worker, and the owners of their keys.
#[derive(Debug, Default)]
pub struct Batch {
    items: Vec<WorkItem>,
    holds: Vec<Owner>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Batch::default()
    }

    /// Adds a datapoint of `key` (the batch keeps a counted reference to it: one atomic
    /// operation per call; for tests and paths that are not per datapoint).
    pub fn push(&mut self, key: &Arc<SeriesKey>, timestamp: f64, value: f64) {
        self.hold_once(key);
        self.items.push(WorkItem {
            key: KeyRef(NonNull::from(&**key)),
            timestamp,
            value,
        });
    }

    /// Adds a datapoint of `key`, which something this batch holds owns.
    ///
    /// # Safety
    /// An owner passed to [`Batch::hold_once`] of this batch since it was last emptied
    /// must keep `key`'s `Arc` alive as long as it lives itself (it owns the `Arc`, or
    /// owns something that does and never lets go of it).
    #[inline]
    #[allow(unsafe_code)]
    pub unsafe fn push_held(&mut self, key: &Arc<SeriesKey>, timestamp: f64, value: f64) {
        self.items.push(WorkItem {
            key: KeyRef(NonNull::from(&**key)),
            timestamp,
            value,
        });
    }

    /// Holds `owner` until the batch is emptied or dropped, unless it is the owner
    /// held last (a pointer comparison: cheap enough per datapoint).
    #[inline]
    pub fn hold_once<T: Any + Send + Sync>(&mut self, owner: &Arc<T>) {
        let same = self
            .holds
            .last()
            .is_some_and(|h| std::ptr::addr_eq(Arc::as_ptr(h), Arc::as_ptr(owner)));
        if !same {
            self.holds.push(Arc::clone(owner) as Owner);
        }
    }

    /// The items, in the order they were pushed.
    #[inline]
    pub fn items(&self) -> &[WorkItem] {
        &self.items
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there are no items.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// An empty batch with room for `items` items.
    pub fn with_capacity(items: usize) -> Self {
        Batch {
            items: Vec::with_capacity(items),
            holds: Vec::new(),
        }
    }

    /// Moves `other`'s items to the end of this batch, with what keeps their keys alive;
    /// `other` is left empty, keeping its room for the next items.
    pub fn append(&mut self, other: &mut Batch) {
        self.items.append(&mut other.items);
        self.holds.append(&mut other.holds);
    }

    /// Empties the batch (its items first, then what kept their keys alive).
    pub fn clear(&mut self) {
        self.items.clear();
        self.holds.clear();
    }

    /// The batch in order, in pieces of at most `max` items, each holding every owner
    /// (no piece if it is empty; no copy if it fits in one). Each piece keeps the front of
    /// what is left and only the rest is moved, so the first piece is never copied.
    pub fn pieces(self, max: usize) -> impl Iterator<Item = Batch> {
        let max = max.max(1);
        let mut left = Some(self).filter(|b| !b.is_empty());
        std::iter::from_fn(move || {
            let mut b = left.take()?;
            if b.items.len() > max {
                left = Some(Batch {
                    items: b.items.split_off(max),
                    holds: b.holds.clone(),
                });
            }
            Some(b)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::method::Method;

    fn key(name: &str) -> Arc<SeriesKey> {
        Arc::new(SeriesKey {
            name: name.into(),
            hash: 0,
            method: Method::Sum,
            frequency: 60,
        })
    }

    #[test]
    fn a_batch_keeps_its_keys_alive_and_lets_go_when_emptied() {
        let k = key("out");
        let mut b = Batch::new();
        b.push(&k, 1.0, 2.0);
        b.push(&k, 3.0, 4.0);
        assert_eq!(
            Arc::strong_count(&k),
            2,
            "one count per batch, not per item"
        );
        let weak = Arc::downgrade(&k);
        drop(k);
        assert_eq!(b.items()[1].key().name.as_ref(), "out");
        let again = b.items()[0].key_arc();
        assert_eq!(weak.strong_count(), 2);
        drop(again);
        b.clear();
        assert_eq!(weak.strong_count(), 0, "emptied: the key is gone");
    }

    #[test]
    fn an_appended_batch_moves_its_items_and_their_keys() {
        let (a, b) = (key("a"), key("b"));
        let mut x = Batch::new();
        x.push(&a, 1.0, 1.0);
        let mut y = Batch::with_capacity(8);
        y.push(&b, 2.0, 2.0);
        y.push(&b, 3.0, 3.0);
        let weak = Arc::downgrade(&b);
        drop(b);
        x.append(&mut y);
        assert!(
            y.is_empty() && y.items.capacity() >= 2,
            "emptied, room kept"
        );
        let names: Vec<&str> = x.items().iter().map(|i| i.key().name.as_ref()).collect();
        assert_eq!(names, ["a", "b", "b"]);
        assert_eq!(weak.strong_count(), 1, "the key moved with its items");
        x.clear();
        assert_eq!(weak.strong_count(), 0);
        drop(a);
    }

    #[test]
    fn held_items_are_kept_by_their_owner() {
        let keys = Arc::new(vec![key("a"), key("b")]);
        let weak = Arc::downgrade(&keys[1]);
        let mut b = Batch::new();
        b.hold_once(&keys);
        b.hold_once(&keys);
        for (i, k) in keys.iter().enumerate() {
            // SAFETY: `keys` is held by `b` and owns every key.
            #[allow(unsafe_code)]
            unsafe {
                b.push_held(k, i as f64, 1.0);
            }
        }
        drop(keys);
        let names: Vec<&str> = b.items().iter().map(|i| &*i.key().name).collect();
        assert_eq!(names, ["a", "b"]);
        let pieces: Vec<Batch> = b.pieces(1).collect();
        assert_eq!(pieces.len(), 2);
        assert_eq!(weak.strong_count(), 1);
        assert_eq!(&*pieces[1].items()[0].key().name, "b");
        drop(pieces);
        assert_eq!(weak.strong_count(), 0);
    }

    #[test]
    fn large_batches_go_in_ordered_pieces() {
        let k = key("k");
        let mut b = Batch::new();
        for i in 0..7 {
            b.push(&k, f64::from(i), 1.0);
        }
        let sizes: Vec<usize> = b.pieces(3).map(|p| p.len()).collect();
        assert_eq!(sizes, [3, 3, 1]);
        let mut small = Batch::new();
        for i in 0..3 {
            small.push(&k, f64::from(i), 1.0);
        }
        let order: Vec<f64> = small
            .pieces(3)
            .flat_map(|p| p.items().iter().map(|w| w.timestamp).collect::<Vec<_>>())
            .collect();
        assert_eq!(order, [0.0, 1.0, 2.0]);
        assert_eq!(Batch::new().pieces(3).count(), 0);
    }
}
