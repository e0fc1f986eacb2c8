//! Which partitions a consumer holds and, per partition, what it delivered and
//! what of that was acknowledged: the bookkeeping behind committing only the
//! acknowledged prefix.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

/// The consumer's assignment, locked (a poisoned lock is taken over).
pub(super) fn lock(state: &Mutex<Assignment>) -> MutexGuard<'_, Assignment> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// The partitions a consumer holds and, per partition, the offsets it delivered and
/// not yet committed.
#[derive(Default)]
pub(super) struct Assignment {
    generations: u64,
    partitions: HashMap<i32, Delivered>,
}

/// Offsets of one partition in delivery order, each with whether it was
/// acknowledged.
struct Delivered {
    /// Tells this holding of the partition from an earlier one of the same consumer.
    generation: u64,
    offsets: VecDeque<(i64, bool)>,
    /// The last offset committed (asynchronously) for this holding.
    committed: Option<i64>,
}

/// What acknowledging one offset means for its partition's commit.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Acked {
    /// The partition was revoked (or reassigned) since the delivery.
    Stale,
    /// An earlier delivery is still unacknowledged: nothing to commit yet.
    Held,
    /// Everything before this offset is acknowledged: commit it.
    Commit(i64),
}

impl Assignment {
    pub(super) fn assign(&mut self, partition: i32) {
        self.generations += 1;
        self.partitions.insert(
            partition,
            Delivered {
                generation: self.generations,
                offsets: VecDeque::new(),
                committed: None,
            },
        );
    }

    pub(super) fn revoke(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    /// Records a received offset; `None` if it is not to be delivered (partition not
    /// held, or an offset at or before one already delivered).
    pub(super) fn track(&mut self, partition: i32, offset: i64) -> Option<u64> {
        let d = self.partitions.get_mut(&partition)?;
        if d.offsets.back().is_some_and(|&(last, _)| offset <= last) {
            return None;
        }
        d.offsets.push_back((offset, false));
        Some(d.generation)
    }

    pub(super) fn holds(&self, partition: i32, generation: u64) -> bool {
        self.partitions
            .get(&partition)
            .is_some_and(|d| d.generation == generation)
    }

    pub(super) fn ack(&mut self, partition: i32, offset: i64, generation: u64) -> Acked {
        let Some(d) = self
            .partitions
            .get_mut(&partition)
            .filter(|d| d.generation == generation)
        else {
            return Acked::Stale;
        };
        if let Ok(i) = d.offsets.binary_search_by_key(&offset, |&(o, _)| o) {
            d.offsets[i].1 = true;
        }
        let mut done = None;
        while let Some(&(o, true)) = d.offsets.front() {
            done = Some(o);
            d.offsets.pop_front();
        }
        match done {
            Some(o) => {
                d.committed = Some(o + 1);
                Acked::Commit(o + 1)
            }
            None => Acked::Held,
        }
    }

    /// Every held partition's last commit, to be made sure of.
    pub(super) fn committed(&self) -> Vec<(i32, i64)> {
        self.partitions
            .iter()
            .filter_map(|(p, d)| Some((*p, d.committed?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_the_acknowledged_prefix_only() {
        let mut a = Assignment::default();
        a.assign(0);
        let g = (10..15).map(|o| a.track(0, o)).collect::<Vec<_>>();
        assert!(g.iter().all(|g| *g == Some(1)));
        assert_eq!(a.ack(0, 12, 1), Acked::Held);
        assert_eq!(a.ack(0, 11, 1), Acked::Held);
        assert_eq!(a.ack(0, 10, 1), Acked::Commit(13));
        assert_eq!(a.ack(0, 14, 1), Acked::Held);
        assert_eq!(a.ack(0, 13, 1), Acked::Commit(15));
    }

    #[test]
    fn offsets_may_have_gaps() {
        let mut a = Assignment::default();
        a.assign(3);
        a.track(3, 5);
        a.track(3, 9);
        assert_eq!(a.ack(3, 9, 1), Acked::Held);
        assert_eq!(a.ack(3, 5, 1), Acked::Commit(10));
    }

    #[test]
    fn revoked_partition_is_stale_and_not_redelivered_here() {
        let mut a = Assignment::default();
        a.assign(0);
        a.assign(1);
        let g0 = a.track(0, 0).unwrap();
        a.revoke(0);
        assert!(!a.holds(0, g0));
        assert_eq!(a.ack(0, 0, g0), Acked::Stale);
        assert_eq!(a.track(0, 1), None);
        // Assigned again: a new holding, the old deliveries stay stale.
        a.assign(0);
        let g1 = a.track(0, 0).unwrap();
        assert_ne!(g0, g1);
        assert_eq!(a.ack(0, 0, g0), Acked::Stale);
        assert_eq!(a.ack(0, 0, g1), Acked::Commit(1));
    }

    #[test]
    fn an_offset_already_delivered_is_skipped() {
        let mut a = Assignment::default();
        a.assign(0);
        assert!(a.track(0, 4).is_some());
        assert_eq!(a.track(0, 4), None);
        assert_eq!(a.track(0, 2), None);
    }
}
