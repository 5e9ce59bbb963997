//! The back-off of the agent's watches: the agent's own retry timings
//! ([`BackoffConfig`]), not kube-runtime's default (up to 30 s), so a node
//! whose API server was away catches up within the agent's retry bound
//! (10 s by default) once it is back.
//!
//! This module knows delays, nothing of what is watched.

use std::time::Duration;

use kube::runtime::utils::{Backoff, ResetTimerBackoff};

use crate::BackoffConfig;

/// Doubling delays from `initial` to `max`, started over after
/// `reset_after` without a failure.
pub fn for_watches(config: &BackoffConfig) -> ResetTimerBackoff<Doubling> {
    ResetTimerBackoff::new(
        Doubling {
            initial: config.initial,
            max: config.max,
            next: config.initial,
        },
        config.reset_after,
    )
}

pub struct Doubling {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Iterator for Doubling {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.next.min(self.max);
        self.next = delay.saturating_mul(2).min(self.max);
        Some(delay)
    }
}

impl Backoff for Doubling {
    fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_bound_and_start_over() {
        let mut delays = Doubling {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(1),
            next: Duration::from_millis(200),
        };
        let taken: Vec<u128> = (&mut delays).take(5).map(|d| d.as_millis()).collect();
        assert_eq!(taken, [200, 400, 800, 1000, 1000]);
        delays.reset();
        assert_eq!(delays.next(), Some(Duration::from_millis(200)));
    }
}
