//! The one retry schedule for waiting on a dependency (database, broker) that is down: from
//! 100 ms, doubling with jitter, capped, and never giving up (the backoff crate's default
//! 15-minute limit is lifted), because a service here waits rather than skips.

use std::time::Duration;

use backoff::{ExponentialBackoff, ExponentialBackoffBuilder};

/// First wait after a failure.
pub const INITIAL: Duration = Duration::from_millis(100);

/// Waits from [`INITIAL`] up to `max` (at least [`INITIAL`]), forever.
pub fn until_it_answers(max: Duration) -> ExponentialBackoff {
    ExponentialBackoffBuilder::new()
        .with_initial_interval(INITIAL)
        .with_max_interval(max.max(INITIAL))
        .with_max_elapsed_time(None)
        .build()
}

#[cfg(test)]
mod tests {
    use backoff::backoff::Backoff;

    use super::*;

    #[test]
    fn it_never_gives_up_and_stays_under_its_cap_with_jitter() {
        let mut backoff = until_it_answers(Duration::from_secs(1));
        for _ in 0..1_000 {
            let wait = backoff.next_backoff().expect("never gives up");
            assert!(wait <= Duration::from_millis(1_500), "{wait:?}");
        }
    }
}
