//! When the next cycle is due: quiescence batching (`wait`, `max_wait`). Pure: the loop
//! passes the time in and sleeps until [`Debounce::deadline`].
//!
//! A cycle runs `wait` after the last change, but no later than `max_wait` after the first
//! change it carries, so a znode changing every second with `wait = "2s"` still renders
//! every `max_wait`. With `wait = 0` every change is due at once (and whatever is already
//! queued joins it).

use std::time::Duration;

use tokio::time::Instant;

/// The batching state between two cycles.
#[derive(Debug, Clone)]
pub struct Debounce {
    wait: Duration,
    max_wait: Duration,
    /// The first change not yet in a cycle.
    first: Option<Instant>,
    /// The last change.
    last: Option<Instant>,
}

impl Debounce {
    pub fn new(wait: Duration, max_wait: Duration) -> Self {
        Debounce { wait, max_wait, first: None, last: None }
    }

    /// New timings (config reload); a batch in progress keeps its changes.
    pub fn set(&mut self, wait: Duration, max_wait: Duration) {
        self.wait = wait;
        self.max_wait = max_wait;
    }

    /// A change arrived at `now`. True when the cycle is due at once (`wait = 0`).
    pub fn on_change(&mut self, now: Instant) -> bool {
        self.last = Some(now);
        if self.wait.is_zero() {
            return true;
        }
        self.first.get_or_insert(now);
        false
    }

    /// When the batch in progress is due, if one is.
    pub fn deadline(&self) -> Option<Instant> {
        let (first, last) = (self.first?, self.last?);
        Some((last + self.wait).min(first + self.max_wait))
    }

    /// A cycle ran: it carried every change so far.
    pub fn reset(&mut self) {
        self.first = None;
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::{advance, sleep_until};

    use super::*;

    const WAIT: Duration = Duration::from_millis(100);
    const MAX_WAIT: Duration = Duration::from_millis(250);

    #[tokio::test(start_paused = true)]
    async fn a_cycle_is_due_wait_after_the_last_change() {
        let start = Instant::now();
        let mut d = Debounce::new(WAIT, MAX_WAIT);
        assert_eq!(d.deadline(), None, "nothing to do");
        assert!(!d.on_change(Instant::now()));
        advance(Duration::from_millis(60)).await;
        d.on_change(Instant::now());
        sleep_until(d.deadline().unwrap()).await;
        assert_eq!(start.elapsed(), Duration::from_millis(160));
        d.reset();
        assert_eq!(d.deadline(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_stream_of_changes_is_cut_at_max_wait() {
        let start = Instant::now();
        let mut d = Debounce::new(WAIT, MAX_WAIT);
        // A change every 50 ms would postpone a plain debounce for ever.
        for _ in 0..10 {
            d.on_change(Instant::now());
            advance(Duration::from_millis(50)).await;
            if d.deadline().is_some_and(|at| at <= Instant::now()) {
                break;
            }
        }
        assert_eq!(d.deadline(), Some(start + MAX_WAIT));
        d.reset();
        // The next batch starts its own max_wait from its own first change.
        let now = Instant::now();
        d.on_change(now);
        assert_eq!(d.deadline(), Some(now + WAIT));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_wait_is_due_at_once() {
        let mut d = Debounce::new(Duration::ZERO, MAX_WAIT);
        assert!(d.on_change(Instant::now()));
        assert_eq!(d.deadline(), None, "no timer: the loop runs the cycle now");
    }

    #[tokio::test(start_paused = true)]
    async fn new_timings_apply_to_the_batch_in_progress() {
        let start = Instant::now();
        let mut d = Debounce::new(WAIT, MAX_WAIT);
        d.on_change(start);
        d.set(Duration::from_millis(30), MAX_WAIT);
        assert_eq!(d.deadline(), Some(start + Duration::from_millis(30)));
    }
}
