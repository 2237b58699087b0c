//! Work a worker thread does each time it runs out of ready tasks, just before it waits
//! for events (its runtime's `on_thread_park`). Modules that batch per-thread work — the
//! access log's lines — hand the batch on here, so nothing is held while a worker sleeps.

use std::cell::RefCell;

/// A thread's hooks; `None` on threads that are not Portico's workers.
type Hooks = Option<Vec<fn()>>;

thread_local! {
    static HOOKS: RefCell<Hooks> = const { RefCell::new(None) };
}

/// Runs `hook` each time this thread's worker is about to wait for events, from now on
/// (register it once per thread). False, and nothing registered, on a thread that is not
/// a worker's: the caller does its work at once instead.
pub fn on_idle(hook: fn()) -> bool {
    HOOKS.with(|h| match h.borrow_mut().as_mut() {
        Some(hooks) => {
            hooks.push(hook);
            true
        }
        None => false,
    })
}

/// Makes the calling thread one whose hooks run (a worker, crate::listener).
pub(crate) fn enable() {
    HOOKS.with(|h| *h.borrow_mut() = Some(Vec::new()));
}

/// Runs this thread's hooks (a hook may register another: it runs from the next time).
pub(crate) fn run() {
    let n = HOOKS.with(|h| h.borrow().as_ref().map_or(0, Vec::len));
    for i in 0..n {
        let hook = HOOKS.with(|h| h.borrow().as_ref().and_then(|v| v.get(i).copied()));
        if let Some(hook) = hook {
            hook();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static RAN: AtomicUsize = AtomicUsize::new(0);

    #[test]
    fn hooks_run_only_on_threads_that_enable_them() {
        std::thread::spawn(|| {
            assert!(!on_idle(|| {
                RAN.fetch_add(100, Ordering::Relaxed);
            }));
            run();
        })
        .join()
        .unwrap();
        std::thread::spawn(|| {
            enable();
            assert!(on_idle(|| {
                RAN.fetch_add(1, Ordering::Relaxed);
            }));
            run();
            run();
        })
        .join()
        .unwrap();
        assert_eq!(RAN.load(Ordering::Relaxed), 2);
    }
}
