//! Where requests wait for a server under `max_conns` to free up: one queue per worker
//! thread. A freed place goes to a request of the worker that freed it when one waits
//! there: that request starts in the same turn of the worker's event loop, with no
//! thread woken, so an app server with few workers (php-fpm, uWSGI) gets its next
//! request at once. Requests on other workers are not starved: a worker queue passed
//! over [`MAX_PASSED`] times while it had waiters gets the next place.

use std::sync::atomic::{fence, AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Worker queues; workers beyond this share them (still correct, only less local).
const QUEUES: usize = 16;
/// How many freed places a worker queue with waiters may see go elsewhere in a row.
const MAX_PASSED: usize = 2;

#[derive(Debug, Default)]
struct Queue {
    notify: Notify,
    waiting: AtomicUsize,
    passed: AtomicUsize,
}

#[derive(Debug)]
pub(crate) struct Freed {
    queues: Vec<Queue>,
}

/// A request counted as waiting in its worker's queue until dropped.
pub(crate) struct Waiting<'a>(&'a Queue);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Freed {
    pub(crate) fn new() -> Self {
        Self {
            queues: (0..QUEUES).map(|_| Queue::default()).collect(),
        }
    }

    fn mine(&self) -> usize {
        portico_core::worker_id() % self.queues.len()
    }

    /// Joins the calling worker's queue: returns the membership and the `Notify` to wait
    /// on. Call before the look at the servers that may fail, and `enable` each
    /// `notified()` before looking again, so a place freed in between is not missed.
    pub(crate) fn join(&self) -> (Waiting<'_>, &Notify) {
        self.join_at(self.mine())
    }

    fn join_at(&self, queue: usize) -> (Waiting<'_>, &Notify) {
        let q = &self.queues[queue];
        q.waiting.fetch_add(1, Ordering::SeqCst);
        // Pairs with the fence in `notify`: either this request's next look sees the
        // freed place, or `notify` sees this request waiting.
        fence(Ordering::SeqCst);
        (Waiting(q), &q.notify)
    }

    /// A place freed up on the calling worker: wake one waiting request, this worker's
    /// own unless another worker's waiters were passed over too often.
    pub(crate) fn notify(&self) {
        self.notify_from(self.mine());
    }

    fn notify_from(&self, mine: usize) {
        fence(Ordering::SeqCst);
        let n = self.queues.len();
        let waits = |i: usize| self.queues[i].waiting.load(Ordering::SeqCst) > 0;
        let others = || (1..n).map(move |i| (mine + i) % n);
        let starved = others()
            .find(|&i| waits(i) && self.queues[i].passed.load(Ordering::Relaxed) >= MAX_PASSED);
        let target = match starved {
            Some(i) => i,
            None if waits(mine) => mine,
            // Nobody waits here: another worker's request, or (nobody at all) a permit
            // for the next request that comes to wait here.
            None => others().find(|&i| waits(i)).unwrap_or(mine),
        };
        for i in others().filter(|&i| i != target && waits(i)) {
            self.queues[i].passed.fetch_add(1, Ordering::Relaxed);
        }
        self.queues[target].passed.store(0, Ordering::Relaxed);
        self.queues[target].notify.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use super::*;

    /// Whether a registered waiter has been woken (polls it once).
    fn woken(n: &mut std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>) -> bool {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        n.as_mut().poll(&mut cx).is_ready()
    }

    #[test]
    fn a_freed_place_goes_to_the_same_worker_first_but_nobody_starves() {
        let f = Freed::new();
        let (_w0, n0) = f.join_at(0);
        let (_w1, n1) = f.join_at(1);
        let mut a = Box::pin(n0.notified());
        let mut b = Box::pin(n1.notified());
        a.as_mut().enable();
        b.as_mut().enable();
        // Freed on worker 0: worker 0's request gets it, worker 1's is passed over.
        f.notify_from(0);
        assert!(woken(&mut a.as_mut()) && !woken(&mut b.as_mut()));
        // Worker 0 keeps having waiters and freeing places; after MAX_PASSED passes
        // worker 1's request gets one.
        let mut served_1 = false;
        for _ in 0..=MAX_PASSED {
            let mut again = Box::pin(n0.notified());
            again.as_mut().enable();
            f.notify_from(0);
            if woken(&mut b.as_mut()) {
                served_1 = true;
                break;
            }
            assert!(woken(&mut again.as_mut()));
        }
        assert!(served_1, "worker 1's request starved");
    }

    #[test]
    fn a_place_freed_with_nobody_waiting_is_kept_for_the_next_waiter() {
        let f = Freed::new();
        f.notify_from(3);
        let (_w, n) = f.join_at(3);
        let mut late = Box::pin(n.notified());
        late.as_mut().enable();
        assert!(woken(&mut late.as_mut()));
        // Another worker's waiters are woken when the freeing worker has none.
        let (_w5, n5) = f.join_at(5);
        let mut other = Box::pin(n5.notified());
        other.as_mut().enable();
        f.notify_from(4);
        assert!(woken(&mut other.as_mut()));
    }
}
