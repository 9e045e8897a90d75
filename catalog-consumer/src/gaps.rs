//! Offsets are never skipped because the broker served a gap.
//!
//! Guarantee kept here: within a partition this consumer applies offsets one after the other.
//! Our producer (idempotent, not transactional) leaves no gaps, so a message whose offset is
//! past the next expected one means the broker answered a fetch before an earlier batch was
//! readable (nisshi 0.8.1 advances a partition's high watermark before it writes the batch, so a
//! concurrent fetch can return the later batch first). Storing the later offset would commit past
//! the missing message for good. Instead the batch is cut at the gap and the partition is fetched
//! again from the missing offset, until the broker serves it. A gap that persists (records
//! removed by compaction, or transaction markers written by another producer) is accepted after
//! [`ACCEPT_AFTER`], loudly.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

/// How long a gap is re-fetched before it is taken to be real.
pub const ACCEPT_AFTER: Duration = Duration::from_secs(10);

/// What to do about one partition's gap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gap {
    /// Fetch again from `expected`: the messages from `found` on were dropped from the batch.
    Refetch {
        topic: String,
        partition: i32,
        expected: i64,
        found: i64,
    },
    /// Re-fetching did not fill it within [`ACCEPT_AFTER`]: `expected..found` is skipped.
    Accepted {
        topic: String,
        partition: i32,
        expected: i64,
        found: i64,
    },
}

/// The next offset expected per partition, and the gaps being re-fetched.
#[derive(Debug, Default)]
pub struct Contiguity {
    next: HashMap<(String, i32), i64>,
    /// (topic, partition, expected offset) → when the gap was first seen.
    open: HashMap<(String, i32, i64), Instant>,
}

impl Contiguity {
    /// Forgets every position: after partitions are assigned or revoked the next message of a
    /// partition may legitimately come from anywhere (its committed offset).
    pub fn reset(&mut self) {
        self.next.clear();
        self.open.clear();
    }

    /// Sets where a partition's next message must start (its committed offset when it was
    /// assigned).
    pub fn expect(&mut self, topic: &str, partition: i32, offset: i64) {
        self.next.insert((topic.to_owned(), partition), offset);
    }

    /// The re-fetch of a gap could not be asked for: its grace period starts again, so a gap is
    /// only ever accepted after re-fetching it for [`ACCEPT_AFTER`].
    pub fn refetch_failed(&mut self, topic: &str, partition: i32, expected: i64) {
        self.open.remove(&(topic.to_owned(), partition, expected));
    }

    /// Checks a batch's (topic, partition, offset) in consumed order; returns which messages to
    /// keep (a message is dropped when it or an earlier one of its partition is past a gap) and
    /// the gaps found. Positions advance only over kept messages. A message before the expected
    /// offset (a redelivery after a seek) is kept and moves the position back to it.
    pub fn check(&mut self, messages: &[(&str, i32, i64)], now: Instant) -> (Vec<bool>, Vec<Gap>) {
        let mut keep = Vec::with_capacity(messages.len());
        let mut gaps = Vec::new();
        let mut cut: Vec<(String, i32)> = Vec::new();
        for (topic, partition, offset) in messages {
            let key = ((*topic).to_owned(), *partition);
            if cut.contains(&key) {
                keep.push(false);
                continue;
            }
            match self.next.get(&key).copied() {
                Some(expected) if *offset > expected => {
                    let open = (key.0.clone(), key.1, expected);
                    let first_seen = *self.open.entry(open.clone()).or_insert(now);
                    if now.duration_since(first_seen) >= ACCEPT_AFTER {
                        self.open.remove(&open);
                        gaps.push(Gap::Accepted {
                            topic: key.0.clone(),
                            partition: key.1,
                            expected,
                            found: *offset,
                        });
                        self.next.insert(key, offset + 1);
                        keep.push(true);
                    } else {
                        gaps.push(Gap::Refetch {
                            topic: key.0.clone(),
                            partition: key.1,
                            expected,
                            found: *offset,
                        });
                        cut.push(key);
                        keep.push(false);
                    }
                }
                _ => {
                    self.open
                        .retain(|(t, p, e), _| !(t == &key.0 && *p == key.1 && *e <= *offset));
                    self.next.insert(key, offset + 1);
                    keep.push(true);
                }
            }
        }
        (keep, gaps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_cuts_its_partition_from_the_batch_and_asks_for_a_refetch() {
        let mut contiguity = Contiguity::default();
        let now = Instant::now();
        let (keep, gaps) = contiguity.check(&[("t", 0, 10), ("t", 1, 5), ("t", 0, 11)], now);
        assert_eq!(keep, [true, true, true]);
        assert!(gaps.is_empty());
        let (keep, gaps) = contiguity.check(
            &[("t", 0, 12), ("t", 0, 14), ("t", 1, 6), ("t", 0, 15)],
            now,
        );
        assert_eq!(keep, [true, false, true, false]);
        assert_eq!(
            gaps,
            [Gap::Refetch {
                topic: "t".into(),
                partition: 0,
                expected: 13,
                found: 14
            }]
        );
        // The refetch serves the missing offset: contiguous again.
        let (keep, gaps) = contiguity.check(&[("t", 0, 13), ("t", 0, 14)], now);
        assert_eq!(keep, [true, true]);
        assert!(gaps.is_empty());
    }

    #[test]
    fn a_gap_that_persists_is_accepted_after_the_grace_period() {
        let mut contiguity = Contiguity::default();
        let start = Instant::now();
        contiguity.check(&[("t", 0, 1)], start);
        let (keep, _) = contiguity.check(&[("t", 0, 3)], start);
        assert_eq!(keep, [false]);
        let later = start + ACCEPT_AFTER;
        let (keep, gaps) = contiguity.check(&[("t", 0, 3), ("t", 0, 4)], later);
        assert_eq!(keep, [true, true]);
        assert!(matches!(
            gaps[..],
            [Gap::Accepted {
                expected: 2,
                found: 3,
                ..
            }]
        ));
    }

    #[test]
    fn a_gap_in_the_first_fetch_after_an_assignment_is_seen() {
        let mut contiguity = Contiguity::default();
        contiguity.expect("t", 0, 100);
        let (keep, gaps) = contiguity.check(&[("t", 0, 104)], Instant::now());
        assert_eq!(keep, [false]);
        assert!(matches!(
            gaps[..],
            [Gap::Refetch {
                expected: 100,
                found: 104,
                ..
            }]
        ));
    }

    #[test]
    fn after_a_reset_any_position_is_accepted() {
        let mut contiguity = Contiguity::default();
        contiguity.check(&[("t", 0, 1)], Instant::now());
        contiguity.reset();
        let (keep, gaps) = contiguity.check(&[("t", 0, 900)], Instant::now());
        assert_eq!(keep, [true]);
        assert!(gaps.is_empty());
    }
}
