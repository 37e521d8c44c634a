//! Locks that keep working after a panic: a panic while a lock was held (in a user's method or
//! listener) must not make the peer skip work silently — forgetting a pending request, a stream,
//! a subscription — so every lock is taken through these, which recover the guard from a poisoned
//! lock. The state behind each lock is updated in single steps that a panic cannot leave half done.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// [`Mutex::lock`], poisoned or not.
pub(crate) trait Locked<T> {
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T> Locked<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// [`RwLock::read`] and [`RwLock::write`], poisoned or not.
pub(crate) trait ReadWrite<T> {
    fn reading(&self) -> RwLockReadGuard<'_, T>;
    fn writing(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T> ReadWrite<T> for RwLock<T> {
    fn reading(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn writing(&self) -> RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lock poisoned by a panic still hands out its state: nothing that reads it is skipped.
    #[test]
    fn poisoned_locks_still_hand_out_their_state() {
        let mutex = std::sync::Arc::new(Mutex::new(vec![1]));
        let rwlock = std::sync::Arc::new(RwLock::new(vec![1]));
        let (m, r) = (std::sync::Arc::clone(&mutex), std::sync::Arc::clone(&rwlock));
        let _ = std::thread::spawn(move || {
            let _held = (m.lock().unwrap(), r.write().unwrap());
            panic!("a user's listener panicked");
        })
        .join();
        assert!(mutex.is_poisoned() && rwlock.is_poisoned());
        mutex.locked().push(2);
        rwlock.writing().push(2);
        assert_eq!(*mutex.locked(), [1, 2]);
        assert_eq!(*rwlock.reading(), [1, 2]);
    }
}
