//! [`UserSockets`]: how many WebSockets each user holds open, and the cap on it
//! (`WS_MAX_CONNECTIONS_PER_USER`). A slot is taken before the upgrade and given back when the
//! socket ends (or when the upgrade never completes), so one user cannot hold every socket of a
//! gateway replica.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

/// Open sockets per user. Cheap to clone.
#[derive(Clone)]
pub struct UserSockets {
    open: Arc<Mutex<HashMap<Box<str>, usize>>>,
    /// 0: no cap.
    max: usize,
}

/// One open (or opening) socket of a user; dropping it frees the slot.
pub struct Slot {
    owner: UserSockets,
    user: Box<str>,
}

impl UserSockets {
    pub fn new(max: usize) -> Self {
        Self { open: Arc::default(), max }
    }

    /// The most sockets one user may hold (0: no cap).
    pub fn max(&self) -> usize {
        self.max
    }

    /// A slot for one more socket of `user`, or the number it holds already when that is the cap.
    pub fn try_acquire(&self, user: &str) -> Result<Slot, usize> {
        let mut open = self.open.lock().expect("user sockets lock poisoned");
        let n = open.entry(user.into()).or_insert(0);
        if self.max != 0 && *n >= self.max {
            return Err(*n);
        }
        *n += 1;
        Ok(Slot { owner: self.clone(), user: user.into() })
    }

    /// Sockets `user` holds now.
    pub fn open(&self, user: &str) -> usize {
        self.open.lock().expect("user sockets lock poisoned").get(user).copied().unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.owner.open.lock().expect("user sockets lock poisoned");
        if let Some(n) = open.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_is_per_user_and_a_dropped_slot_frees_its_place() {
        let sockets = UserSockets::new(2);
        let a1 = sockets.try_acquire("a").unwrap();
        let _a2 = sockets.try_acquire("a").unwrap();
        assert_eq!(sockets.try_acquire("a").err(), Some(2));
        let _b = sockets.try_acquire("b").expect("another user has slots of its own");
        drop(a1);
        assert_eq!(sockets.open("a"), 1);
        let _a3 = sockets.try_acquire("a").expect("a closed socket frees its slot");
        drop((_a2, _a3));
        assert!(!sockets.open.lock().unwrap().contains_key("a"), "a user without sockets takes no memory");
    }

    #[test]
    fn zero_means_no_cap() {
        let sockets = UserSockets::new(0);
        let slots: Vec<Slot> = (0..100).map(|_| sockets.try_acquire("a").unwrap()).collect();
        assert_eq!(sockets.open("a"), 100);
        drop(slots);
        assert_eq!(sockets.open("a"), 0);
    }
}
