//! Settings that change while the server runs (SIGHUP): a value readers
//! take a cheap snapshot of, and a writer replaces whole.

use std::sync::{Arc, RwLock};

/// A shared, replaceable value.
#[derive(Debug)]
pub struct Live<T>(Arc<RwLock<Arc<T>>>);

impl<T> Clone for Live<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T: Default> Default for Live<T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

impl<T> Live<T> {
    /// Starts with `value`.
    pub fn new(value: T) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(value))))
    }

    /// The current value.
    pub fn get(&self) -> Arc<T> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the value for every holder.
    pub fn set(&self, value: T) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_clone_sees_the_new_value() {
        let a = Live::new(1);
        let b = a.clone();
        let before = b.get();
        a.set(2);
        assert_eq!(*b.get(), 2);
        assert_eq!(*before, 1, "a snapshot taken earlier is unchanged");
    }
}
