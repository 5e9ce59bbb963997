//! `sessionAffinity: ClientIP`, as kube-proxy keeps it: a client is given
//! an endpoint by the usual rotation the first time, and keeps it while it
//! stays ready and the client comes back within the Service's timeout
//! (`sessionAffinityConfig.clientIP.timeoutSeconds`, 3 hours by default).
//!
//! This module knows the table of choices; the router decides when to ask.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::table::{ObjectKey, ServiceRoute};

/// Clients remembered at once, over all Services. A full table first drops
/// the expired choices, then (a flood of clients) starts over: affinity is
/// a preference, never a reason to refuse a request.
const CLIENTS_MAX: usize = 65_536;

#[derive(Default)]
pub(super) struct Affinity {
    choices: Mutex<HashMap<(ObjectKey, IpAddr), (IpAddr, Instant)>>,
}

impl Affinity {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(ObjectKey, IpAddr), (IpAddr, Instant)>> {
        // A poisoned lock means a panic between two map operations; the
        // map itself is whole.
        self.choices
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The endpoint `client` was given for `route`, unless that expired.
    pub(super) fn get(&self, route: &ServiceRoute, client: IpAddr) -> Option<IpAddr> {
        let key = (key(route), client);
        let mut choices = self.lock();
        match choices.get(&key) {
            Some((endpoint, expires)) if *expires > Instant::now() => Some(*endpoint),
            Some(_) => {
                choices.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Remembers (or refreshes) that `client` goes to `endpoint`.
    pub(super) fn remember(
        &self,
        route: &ServiceRoute,
        client: IpAddr,
        endpoint: IpAddr,
        timeout: Duration,
    ) {
        let now = Instant::now();
        let mut choices = self.lock();
        if choices.len() >= CLIENTS_MAX {
            choices.retain(|_, (_, expires)| *expires > now);
            if choices.len() >= CLIENTS_MAX {
                choices.clear();
            }
        }
        choices.insert((key(route), client), (endpoint, now + timeout));
    }
}

fn key(route: &ServiceRoute) -> ObjectKey {
    (route.namespace.clone(), route.name.clone())
}
