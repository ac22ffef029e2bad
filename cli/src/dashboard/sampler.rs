//! Keeps the live event tail readable: at most [`Sampler::limit`] events a second reach the page.
//!
//! The tail counts every event ([`Sampler::offer`]) and is told once a second to close its
//! window ([`Sampler::roll`]). When the last window saw more than the limit, the next one keeps
//! every k-th event (k = seen / limit, rounded up) — spread over the second rather than the
//! first `limit` of it — and never more than the limit. The window's [`Summary`] says what was
//! seen and shown, so the page can say that it samples.

use serde::Serialize;

#[derive(Debug, Clone)]
pub struct Sampler {
    limit: u64,
    stride: u64,
    seen: u64,
    shown: u64,
    total_seen: u64,
    total_shown: u64,
}

/// One closed window (about a second).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub seen: u64,
    pub shown: u64,
    /// True when some events of the window were not shown.
    pub sampled: bool,
    /// Every k-th event is shown in the next window.
    pub stride: u64,
    pub total_seen: u64,
    pub total_shown: u64,
}

impl Sampler {
    pub fn new(limit: u64) -> Self {
        Self { limit: limit.max(1), stride: 1, seen: 0, shown: 0, total_seen: 0, total_shown: 0 }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Counts one event; true when it is to be shown.
    pub fn offer(&mut self) -> bool {
        self.seen += 1;
        self.total_seen += 1;
        let keep = self.shown < self.limit && (self.seen - 1).is_multiple_of(self.stride);
        if keep {
            self.shown += 1;
            self.total_shown += 1;
        }
        keep
    }

    /// A shown event that could not be delivered after all (the page's queue was full).
    pub fn unshow(&mut self) {
        self.shown = self.shown.saturating_sub(1);
        self.total_shown = self.total_shown.saturating_sub(1);
    }

    /// Closes the window: its summary, and the stride of the next one.
    pub fn roll(&mut self) -> Summary {
        let summary = Summary {
            seen: self.seen,
            shown: self.shown,
            sampled: self.shown < self.seen,
            stride: self.stride,
            total_seen: self.total_seen,
            total_shown: self.total_shown,
        };
        self.stride = self.seen.div_ceil(self.limit).max(1);
        self.seen = 0;
        self.shown = 0;
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_the_limit_every_event_is_shown() {
        let mut s = Sampler::new(200);
        assert!((0..150).all(|_| s.offer()));
        let w = s.roll();
        assert_eq!((w.seen, w.shown, w.sampled, w.stride), (150, 150, false, 1));
        assert!((0..150).all(|_| s.offer()));
    }

    #[test]
    fn at_ten_thousand_a_second_at_most_the_limit_is_shown_spread_over_the_window() {
        let mut s = Sampler::new(200);
        // First second: no history, the first 200 pass, then nothing.
        let first: Vec<bool> = (0..10_000).map(|_| s.offer()).collect();
        assert_eq!(first.iter().filter(|k| **k).count(), 200);
        let w = s.roll();
        assert!(w.sampled);
        assert_eq!((w.seen, w.shown), (10_000, 200));
        // Next second: every 50th, so the shown ones span the whole window.
        let kept: Vec<usize> = (0..10_000).filter(|_| s.offer()).collect();
        assert_eq!(kept.len(), 200);
        assert_eq!(kept[1] - kept[0], 50);
        assert!(*kept.last().unwrap() >= 9_900);
        let w = s.roll();
        assert_eq!((w.seen, w.shown, w.stride, w.total_seen, w.total_shown), (10_000, 200, 50, 20_000, 400));
    }

    #[test]
    fn the_stride_goes_back_to_one_when_the_rate_falls() {
        let mut s = Sampler::new(10);
        (0..100).for_each(|_| {
            s.offer();
        });
        s.roll();
        (0..5).for_each(|_| {
            s.offer();
        });
        assert_eq!(s.roll().stride, 10);
        assert!((0..5).all(|_| s.offer()));
        assert!(!s.roll().sampled);
    }

    #[test]
    fn an_undelivered_event_is_not_counted_as_shown() {
        let mut s = Sampler::new(10);
        assert!(s.offer());
        s.unshow();
        let w = s.roll();
        assert_eq!((w.seen, w.shown, w.sampled), (1, 0, true));
    }
}
