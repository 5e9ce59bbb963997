//! Connections not yet authenticated, counted per client address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The count of unauthenticated connections of each address, with the cap
/// on it.
pub(crate) struct Addresses {
    cap: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl Addresses {
    pub(crate) fn new(cap: usize) -> Arc<Addresses> {
        Arc::new(Addresses {
            cap,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// A place for one more unauthenticated connection from `address`, or
    /// none when it has as many as the cap.
    pub(crate) fn claim(self: &Arc<Self>, address: IpAddr) -> Option<Ticket> {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let count = counts.entry(address).or_default();
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(Ticket(Arc::new(Claim {
            addresses: self.clone(),
            address,
            released: AtomicBool::new(false),
        })))
    }

    fn release(&self, address: IpAddr) {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(count) = counts.get_mut(&address) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&address);
            }
        }
    }

    #[cfg(test)]
    fn count(&self, address: IpAddr) -> usize {
        let counts = self
            .counts
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        counts.get(&address).copied().unwrap_or(0)
    }
}

/// One connection's place among its address's unauthenticated ones,
/// handed to the service in every request's extensions. The place is
/// given back when the connection authenticates or closes.
#[derive(Clone)]
pub struct Ticket(Arc<Claim>);

struct Claim {
    addresses: Arc<Addresses>,
    address: std::net::IpAddr,
    released: AtomicBool,
}

impl Ticket {
    /// The connection has authenticated (a request on it carried a valid
    /// credential): it no longer counts against its address.
    pub fn authenticated(&self) {
        self.0.release();
    }
}

impl Claim {
    fn release(&self) {
        if !self.released.swap(true, Ordering::AcqRel) {
            self.addresses.release(self.address);
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_at_most_the_cap_until_one_authenticates_or_closes() {
        let addresses = Addresses::new(2);
        let attacker: IpAddr = [127, 0, 0, 2].into();
        let first = addresses.claim(attacker).expect("under the cap");
        let second = addresses.claim(attacker).expect("at the cap");
        assert!(addresses.claim(attacker).is_none());
        assert!(addresses.claim([127, 0, 0, 1].into()).is_some());

        first.authenticated();
        first.authenticated();
        assert_eq!(addresses.count(attacker), 1);
        let third = addresses.claim(attacker).expect("a place was given back");
        drop(first);
        drop(second);
        assert_eq!(addresses.count(attacker), 1);
        drop(third);
        assert_eq!(addresses.count(attacker), 0);
    }
}
