//! Counters any module registers for /metrics, by name and labels, for the whole
//! process: the admin endpoint renders whatever is registered, so a module adds a
//! metric without the HTTP module knowing it (the mail module's login outcomes).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// A family as /metrics renders it: name, help, `(labels, value)` rows.
pub type Snapshot = (&'static str, &'static str, Vec<(String, u64)>);

/// One family: its help text and its counters by labels.
type Family = (&'static str, BTreeMap<String, Arc<AtomicU64>>);

#[derive(Default)]
pub struct Counters {
    families: Mutex<BTreeMap<&'static str, Family>>,
}

impl Counters {
    /// The counter `name{labels}` (`labels` as Prometheus writes them: `a="x",b="y"`),
    /// made on first use; the same one every time after (across reloads too).
    pub fn counter(
        &self,
        name: &'static str,
        help: &'static str,
        labels: String,
    ) -> Arc<AtomicU64> {
        let mut f = self.families.lock().unwrap_or_else(|p| p.into_inner());
        let (_, rows) = f.entry(name).or_insert_with(|| (help, BTreeMap::new()));
        Arc::clone(rows.entry(labels).or_default())
    }

    /// Every family: (name, help, [(labels, value)]).
    pub fn snapshot(&self) -> Vec<Snapshot> {
        let f = self.families.lock().unwrap_or_else(|p| p.into_inner());
        f.iter()
            .map(|(name, (help, rows))| {
                let rows = rows
                    .iter()
                    .map(|(l, c)| (l.clone(), c.load(Ordering::Relaxed)))
                    .collect();
                (*name, *help, rows)
            })
            .collect()
    }
}

/// The process's counters.
pub fn global() -> &'static Counters {
    static C: OnceLock<Counters> = OnceLock::new();
    C.get_or_init(Counters::default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_counter_per_name_and_labels() {
        let c = Counters::default();
        let a = c.counter("x_total", "help", "k=\"1\"".into());
        a.fetch_add(2, Ordering::Relaxed);
        c.counter("x_total", "help", "k=\"1\"".into())
            .fetch_add(1, Ordering::Relaxed);
        c.counter("x_total", "help", "k=\"2\"".into());
        let s = c.snapshot();
        assert_eq!(s.len(), 1);
        assert_eq!(
            s[0].2,
            vec![("k=\"1\"".to_string(), 3), ("k=\"2\"".to_string(), 0)]
        );
    }
}
