//! Who each `cf-ray` was issued to: a bounded map from the ray of every answer that carried a known
//! credential to that credential's user, so that a test or a soak can prove that an answer it
//! received (relayed, cached or stale) was produced by an upstream request made with its own
//! credential. It observes only; it changes no answer.

use std::collections::{HashMap, VecDeque};

/// A FIFO-bounded map: when full, the oldest ray is forgotten first.
#[derive(Debug)]
pub(crate) struct RayOwners {
    capacity: usize,
    owners: HashMap<String, String>,
    order: VecDeque<String>,
}

impl RayOwners {
    pub fn with_capacity(capacity: usize) -> Self {
        RayOwners {
            capacity,
            owners: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Records that `ray` answered a request of `user`. Rays are random, so a repeat is not
    /// expected; if one happens, the latest owner wins and the ray keeps its first place in line.
    pub fn note(&mut self, ray: &str, user: &str) {
        if self.capacity == 0 {
            return;
        }
        if let Some(owner) = self.owners.get_mut(ray) {
            user.clone_into(owner);
            return;
        }
        while self.order.len() >= self.capacity {
            match self.order.pop_front() {
                Some(oldest) => {
                    self.owners.remove(&oldest);
                }
                None => break,
            }
        }
        self.order.push_back(ray.to_owned());
        self.owners.insert(ray.to_owned(), user.to_owned());
    }

    pub fn owner(&self, ray: &str) -> Option<String> {
        self.owners.get(ray).cloned()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_owners_and_forgets_the_oldest_beyond_capacity() {
        let mut rays = RayOwners::with_capacity(2);
        rays.note("r1-SJC", "alice");
        rays.note("r2-SJC", "bob");
        assert_eq!(rays.owner("r1-SJC").as_deref(), Some("alice"));
        assert_eq!(rays.owner("r2-SJC").as_deref(), Some("bob"));
        assert_eq!(rays.owner("r3-SJC"), None);

        rays.note("r3-SJC", "carol");
        assert_eq!(rays.len(), 2);
        assert_eq!(rays.owner("r1-SJC"), None, "the oldest is forgotten");
        assert_eq!(rays.owner("r3-SJC").as_deref(), Some("carol"));

        // A repeated ray takes the latest owner without growing the map.
        rays.note("r2-SJC", "dave");
        assert_eq!(rays.len(), 2);
        assert_eq!(rays.owner("r2-SJC").as_deref(), Some("dave"));
    }

    #[test]
    fn a_zero_capacity_remembers_nothing() {
        let mut rays = RayOwners::with_capacity(0);
        rays.note("r1-SJC", "alice");
        assert_eq!(rays.owner("r1-SJC"), None);
        assert_eq!(rays.len(), 0);
    }
}
