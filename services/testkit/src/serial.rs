//! One test file at a time inside one test binary.
//!
//! A crate's integration tests live in one binary (`tests/it/main.rs`, one module per former
//! file) so that CI links one executable per crate instead of one per file. When they were
//! separate binaries, cargo ran the files one after another and only the tests of one file ran
//! side by side; several files rely on that (a chaos run that kills a broker node, a bench-like
//! test that wants both cores, two files driving the same shared stack). [`group`] keeps that
//! rule: tests of the same group run concurrently, tests of different groups never overlap.
//!
//! ```ignore
//! #[tokio::test]
//! async fn a_test() {
//!     let _serial = mfe_testkit::serial::group(module_path!());
//!     // ...
//! }
//! ```
//!
//! The wait is a blocking one, taken before the test's first `.await`: each `#[tokio::test]` has
//! its runtime on its own thread, so blocking that thread blocks nothing else.

use std::sync::{Condvar, Mutex};

struct Current {
    group: Option<&'static str>,
    running: usize,
}

static CURRENT: Mutex<Current> = Mutex::new(Current { group: None, running: 0 });
static CHANGED: Condvar = Condvar::new();

/// Held for a test's whole run; tests of other groups wait until every guard of this one drops.
#[must_use = "the group is released when the guard drops: bind it to `_serial`, not `_`"]
pub struct GroupGuard {
    _private: (),
}

/// Wait until no test of another group runs, then join `group` (use `module_path!()`).
pub fn group(group: &'static str) -> GroupGuard {
    let mut current = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        match current.group {
            None => {
                current.group = Some(group);
                break;
            }
            Some(g) if g == group => break,
            Some(_) => current = CHANGED.wait(current).unwrap_or_else(|e| e.into_inner()),
        }
    }
    current.running += 1;
    GroupGuard { _private: () }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        // A panicking test poisons nothing it matters for: the counter is still right.
        let mut current = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
        current.running -= 1;
        if current.running == 0 {
            current.group = None;
            CHANGED.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// Both tests use the one global state, so they run one after the other.
    static LOCAL: Mutex<()> = Mutex::new(());

    #[test]
    fn one_group_runs_side_by_side() {
        let _l = LOCAL.lock().unwrap();
        let a = group("tests::a");
        let b = group("tests::a"); // would block forever if the group excluded itself
        drop((a, b));
        let _c = group("tests::b");
    }

    #[test]
    fn another_group_waits_until_the_first_is_done() {
        let _l = LOCAL.lock().unwrap();
        let inside_a = Arc::new(AtomicUsize::new(0));
        let overlapped = Arc::new(AtomicUsize::new(0));
        let first = group("tests::x");
        inside_a.store(1, Ordering::SeqCst);
        let (inside, over) = (inside_a.clone(), overlapped.clone());
        let other = std::thread::spawn(move || {
            let _g = group("tests::y");
            over.store(inside.load(Ordering::SeqCst), Ordering::SeqCst);
        });
        std::thread::sleep(Duration::from_millis(100));
        assert!(!other.is_finished(), "a test of another group ran while tests::x held the group");
        inside_a.store(0, Ordering::SeqCst);
        drop(first);
        other.join().unwrap();
        assert_eq!(overlapped.load(Ordering::SeqCst), 0, "tests::y started before tests::x ended");
    }
}
