//! When a file whose install (or removal) failed for a reason of the machine is tried again:
//! capped exponential backoff with jitter. Pure: the caller passes the jitter in, the core
//! keeps the time of the next attempt ([`super::Core::next_retry`]) and the loop sleeps until
//! it, so no task per file sleeps anywhere.
//!
//! The pause before retry `n` (1 for the first) is `FIRST * 2^(n-1)`, capped at [`MAX`], then
//! scaled by a jitter in `[1/2, 1]`: the first retry comes 125 to 250 ms after the failure
//! (a directory made writable again, a disk freed, converges at once), later ones double,
//! and a long outage costs one attempt every 15 to 30 s. The jitter keeps a fleet that hit
//! the same fault (a shared volume full) from retrying in step.

use std::time::Duration;

/// The nominal pause before the first retry (the actual one is half to all of it).
pub const FIRST: Duration = Duration::from_millis(250);

/// The longest pause between two attempts.
pub const MAX: Duration = Duration::from_secs(30);

/// The pause before retry number `n` (1 for the first; 0 is taken as 1), with `jitter` in
/// `[0, 1)` (a uniform random number) choosing where in `[nominal/2, nominal]` it falls.
pub fn delay(n: u32, jitter: f64) -> Duration {
    let doublings = n.saturating_sub(1).min(16);
    let nominal = FIRST.saturating_mul(1 << doublings).min(MAX);
    nominal.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_retry_comes_within_a_second() {
        assert_eq!(delay(1, 0.0), Duration::from_millis(125));
        assert_eq!(delay(1, 1.0), Duration::from_millis(250));
        assert_eq!(delay(0, 0.5), delay(1, 0.5));
    }

    #[test]
    fn pauses_double_then_stay_at_most_thirty_seconds_apart() {
        let nominal: Vec<u128> = (1..=10).map(|n| delay(n, 1.0).as_millis()).collect();
        assert_eq!(nominal, [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
        for n in [8, 40, u32::MAX] {
            assert!(delay(n, 0.999) <= MAX, "retry {n}");
            assert!(delay(n, 0.0) >= MAX / 2, "retry {n}: the cap is not the floor");
        }
    }

    #[test]
    fn jitter_spreads_each_pause_over_its_upper_half() {
        let low = delay(5, 0.0);
        let high = delay(5, 0.999_999);
        assert_eq!(low, Duration::from_secs(2));
        assert!(high > Duration::from_millis(3999) && high <= Duration::from_secs(4));
        assert_eq!(delay(5, -3.0), low, "out-of-range jitter is clamped");
    }
}
