//! Connection slots and the connections' memory budget: no crowd of idle or half-sent
//! clients can lock senders out (invariant 7 of `DESIGN.md`).
//!
//! - **Slots.** At most `limits.max_connections` TCP connections are open. At the cap, a
//!   new connection takes the slot of the connection that has gone longest without a
//!   complete line or frame, if that is at least `limits.evict_idle_after_ms`; that one is
//!   closed and counted (`connection_evicted_idle`). With none that idle, the new
//!   connection is refused (`connection_refused`). A connection that completes a line or
//!   frame at least once per `evict_idle_after_ms` is never evicted.
//! - **Memory budget.** Everything a connection holds for its input (its read buffer with
//!   a partial line or frame, and the work items of the read it is decoding) is charged to
//!   one budget, `limits.connection_memory_bytes`, before it is allocated. A read that
//!   finds the budget spent first evicts the idlest connection holding budget (same rule:
//!   `connection_evicted_memory`), then waits for budget; it never allocates past it. HTTP
//!   requests charge their decoding the same way, and are answered 503 when it does not fit.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::drops::Stats;
use crate::events::Event;

/// Bytes of one work item (series key pointer, timestamp, value) on its way to a worker,
/// with at most one owner its batch holds for it (a route outside the connection's
/// private cache is held per item, see [`crate::aggregate::batch`]).
pub const WORK_ITEM_BYTES: usize = std::mem::size_of::<crate::aggregate::worker::WorkItem>()
    + std::mem::size_of::<crate::aggregate::batch::Owner>();
/// The shortest carbon plaintext line that is a datapoint (`a 1 1\n`).
pub const SHORTEST_LINE: usize = 6;

/// Bytes of work items one input byte can decode into at most, with `outputs` rules: a
/// datapoint of the shortest line feeding every rule.
pub fn items_per_byte(outputs: usize) -> usize {
    (WORK_ITEM_BYTES * outputs.max(1)).div_ceil(SHORTEST_LINE)
}

/// The open TCP connections and the memory budget they share.
pub struct Slots {
    /// Most open connections (`limits.max_connections`).
    max: usize,
    /// Bytes all connections may hold (`limits.connection_memory_bytes`).
    budget: usize,
    /// Bytes charged now.
    used: AtomicUsize,
    /// Woken whenever bytes are given back.
    room: tokio::sync::Notify,
    /// How long without a complete frame makes a connection evictable.
    idle_after: Duration,
    /// The open connections.
    open: Mutex<Vec<Arc<Conn>>>,
    /// Start of the clock `Conn::progress_ms` counts on.
    epoch: Instant,
    /// Counters (the eviction and refusal events).
    stats: Arc<Stats>,
}

/// One open connection as its slot table sees it.
struct Conn {
    /// Milliseconds after [`Slots::epoch`] of its last complete line or frame (or accept).
    progress_ms: AtomicU64,
    /// Budget bytes it holds.
    held: AtomicUsize,
    /// Cancelled when it is evicted.
    evicted: CancellationToken,
}

impl Slots {
    /// Slots for `max` connections sharing `budget` bytes; connections idle for
    /// `idle_after` may be evicted.
    pub fn new(max: usize, budget: usize, idle_after: Duration, stats: Arc<Stats>) -> Arc<Slots> {
        Arc::new(Slots {
            max,
            budget,
            used: AtomicUsize::new(0),
            room: tokio::sync::Notify::new(),
            idle_after,
            open: Mutex::new(Vec::new()),
            epoch: Instant::now(),
            stats,
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Conn>>> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Bytes charged to the budget now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// A slot for a new connection from `peer`: a free one, or the idlest evictable
    /// connection's (which is closed); `None` (refused) when there is neither.
    pub fn admit(self: &Arc<Self>, peer: &dyn std::fmt::Display) -> Option<Slot> {
        let now = self.now_ms();
        let conn = Arc::new(Conn {
            progress_ms: AtomicU64::new(now),
            held: AtomicUsize::new(0),
            evicted: CancellationToken::new(),
        });
        let mut open = self.table();
        if open.len() >= self.max {
            let victim = self.idlest(&open, now, |_| true)?;
            let gone = open.swap_remove(victim);
            gone.evicted.cancel();
            self.stats.events.emit(
                Event::ConnectionEvictedIdle,
                &format_args!(
                    "connection limit reached; the connection idle longest closed for one from {peer}"
                ),
            );
        }
        open.push(Arc::clone(&conn));
        Some(Slot {
            slots: Arc::clone(self),
            conn,
        })
    }

    /// The index in `open` of the connection with the oldest progress among those idle
    /// for at least `idle_after` and matching `also`.
    fn idlest(&self, open: &[Arc<Conn>], now: u64, also: impl Fn(&Conn) -> bool) -> Option<usize> {
        let idle_ms = self.idle_after.as_millis() as u64;
        open.iter()
            .enumerate()
            .filter(|(_, c)| {
                !c.evicted.is_cancelled()
                    && now.saturating_sub(c.progress_ms.load(Ordering::Relaxed)) >= idle_ms
                    && also(c)
            })
            .min_by_key(|(_, c)| c.progress_ms.load(Ordering::Relaxed))
            .map(|(i, _)| i)
    }

    /// Charges `bytes` if the budget has them.
    fn try_take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u + bytes <= self.budget).then_some(u + bytes)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        if bytes > 0 {
            self.used.fetch_sub(bytes, Ordering::AcqRel);
            self.room.notify_waiters();
        }
    }

    /// The budget is spent and `needy` must read: evicts the idlest connection that holds
    /// budget, if one is evictable.
    fn evict_for(&self, needy: &Conn) {
        let open = self.table();
        let now = self.now_ms();
        let holder = |c: &Conn| !std::ptr::eq(c, needy) && c.held.load(Ordering::Relaxed) > 0;
        if let Some(i) = self.idlest(&open, now, holder) {
            open[i].evicted.cancel();
            self.stats.events.emit(
                Event::ConnectionEvictedMemory,
                &format_args!(
                    "connection memory budget spent; the connection idle longest closed ({} bytes)",
                    open[i].held.load(Ordering::Relaxed)
                ),
            );
        }
    }

    /// Charges `bytes` for an HTTP request, at once or not at all (then answer 503).
    pub fn try_charge(self: &Arc<Self>, bytes: usize) -> Option<Charge> {
        self.try_take(bytes).then(|| Charge {
            slots: Arc::clone(self),
            bytes,
        })
    }
}

/// Bytes charged to the budget, given back when dropped (an HTTP request's).
pub struct Charge {
    slots: Arc<Slots>,
    bytes: usize,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.slots.give_back(self.bytes);
    }
}

/// A TCP connection's slot: its place in the table and the budget it holds. Dropping it
/// frees both.
pub struct Slot {
    slots: Arc<Slots>,
    conn: Arc<Conn>,
}

impl Slot {
    /// The memory budget every connection shares (`limits.connection_memory_bytes`).
    pub fn budget(&self) -> usize {
        self.slots.budget
    }

    /// The connection completed a line or frame: it is not idle.
    pub fn progress(&self) {
        let now = self.slots.now_ms();
        self.conn.progress_ms.store(now, Ordering::Relaxed);
    }

    /// Cancelled when the connection is evicted (it must close).
    pub fn evicted(&self) -> &CancellationToken {
        &self.conn.evicted
    }

    /// Budget bytes held now.
    pub fn held(&self) -> usize {
        self.conn.held.load(Ordering::Relaxed)
    }

    /// Makes the connection hold `bytes` of budget: gives back at once what it holds
    /// beyond, and waits for what it needs more (evicting the idlest holder while it
    /// waits). Returns `false` if the connection is evicted or `stop` is cancelled first.
    pub async fn hold(&self, bytes: usize, stop: &CancellationToken) -> bool {
        let held = self.held();
        if bytes <= held {
            self.conn.held.store(bytes, Ordering::Relaxed);
            self.slots.give_back(held - bytes);
            return true;
        }
        let more = bytes - held;
        loop {
            let room = self.slots.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if self.slots.try_take(more) {
                self.conn.held.fetch_add(more, Ordering::Relaxed);
                return true;
            }
            if self.conn.evicted.is_cancelled() || stop.is_cancelled() {
                return false;
            }
            self.slots.evict_for(&self.conn);
            tokio::select! {
                _ = room => {}
                _ = self.conn.evicted.cancelled() => return false,
                _ = stop.cancelled() => return false,
                // Idle connections become evictable as time passes.
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.table();
        if let Some(i) = open.iter().position(|c| Arc::ptr_eq(c, &self.conn)) {
            open.swap_remove(i);
        }
        drop(open);
        self.slots
            .give_back(self.conn.held.swap(0, Ordering::Relaxed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(max: usize, budget: usize, idle_ms: u64) -> Arc<Slots> {
        Slots::new(
            max,
            budget,
            Duration::from_millis(idle_ms),
            Arc::new(Stats::default()),
        )
    }

    #[tokio::test]
    async fn at_the_cap_the_idlest_gives_way_and_a_sender_never_does() {
        let s = slots(2, 1 << 20, 50);
        let idle = s.admit(&"a").unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let busy = s.admit(&"b").unwrap();
        // Nobody idle long enough yet: refused.
        assert!(s.admit(&"c").is_none());
        tokio::time::sleep(Duration::from_millis(60)).await;
        busy.progress();
        let c = s.admit(&"c").unwrap();
        assert!(idle.evicted().is_cancelled(), "the idle one is evicted");
        assert!(!busy.evicted().is_cancelled(), "the sender is not");
        assert_eq!(s.stats.events.count(Event::ConnectionEvictedIdle), 1);
        drop(idle);
        assert_eq!(s.table().len(), 2);
        drop((busy, c));
        assert_eq!(s.table().len(), 0);
    }

    #[tokio::test]
    async fn a_reader_evicts_an_idle_holder_and_never_goes_past_the_budget() {
        let s = slots(10, 1000, 30);
        let stop = CancellationToken::new();
        let hog = s.admit(&"hog").unwrap();
        assert!(hog.hold(900, &stop).await);
        let reader = s.admit(&"reader").unwrap();
        tokio::time::sleep(Duration::from_millis(40)).await;
        reader.progress();
        let (hog_gone, got) = tokio::join!(
            async {
                hog.evicted().cancelled().await;
                drop(hog);
            },
            reader.hold(500, &stop)
        );
        let () = hog_gone;
        assert!(got);
        assert_eq!(s.used(), 500);
        assert_eq!(s.stats.events.count(Event::ConnectionEvictedMemory), 1);
        // Giving back is immediate; HTTP charges are all or nothing.
        assert!(reader.hold(100, &stop).await);
        assert_eq!(s.used(), 100);
        assert!(s.try_charge(901).is_none());
        let c = s.try_charge(900).unwrap();
        assert_eq!(s.used(), 1000);
        drop(c);
        drop(reader);
        assert_eq!(s.used(), 0);
    }
}
