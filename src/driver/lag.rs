//! Replication lag in time, as the leader sees it: when entries reached its log (also
//! while it was a follower, so that a new leader knows the age of older entries), and
//! when each follower last answered. The core counts lag in entries and has no clock
//! (by design); these are the driver's observations, for status and metrics only —
//! nothing here decides anything in Raft.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::raft::{Index, NodeId};

/// At most this many append times are kept. Past it, the two oldest samples merge,
/// which can only make the lag of the slowest follower look older, never younger.
const MAX_SAMPLES: usize = 4096;

#[derive(Debug, Default)]
pub(super) struct ReplicationClock {
    /// When this node became leader; `None` while it is not.
    leading_since: Option<Instant>,
    /// `(index, at)`, increasing in both: the entries up to `index` (and after the
    /// previous sample's) were in this node's durable log by `at`.
    appended: VecDeque<(Index, Instant)>,
    /// When each follower last answered an append or a heartbeat.
    answered: HashMap<NodeId, Instant>,
    /// Followers reported silent (see [`ReplicationClock::newly_silent`]).
    silent: HashSet<NodeId>,
}

impl ReplicationClock {
    /// This node became leader (or stopped being one: `leading` false): forget what
    /// the followers said to the previous leadership; the log's times stay.
    pub(super) fn leadership_changed(&mut self, leading: bool, now: Instant) {
        self.leading_since = leading.then_some(now);
        self.answered.clear();
        self.silent.clear();
    }

    /// The log now holds the entries `first..=last`, persisted at `now` (entries from
    /// `first` on replaced whatever the log held there).
    pub(super) fn appended(&mut self, first: Index, last: Index, now: Instant) {
        // Entries before `first` that shared a sample with replaced ones keep its time.
        let mut kept_time = None;
        while let Some(&(_, at)) = self.appended.back().filter(|&&(i, _)| i >= first) {
            self.appended.pop_back();
            kept_time = Some(at);
        }
        if let Some(at) = kept_time {
            let before = self.appended.back().map_or(0, |&(i, _)| i);
            if first.saturating_sub(1) > before {
                self.appended.push_back((first - 1, at));
            }
        }
        if last < first {
            return;
        }
        if self.appended.len() >= MAX_SAMPLES {
            // Merge the two oldest: their entries keep the older time.
            if let (Some((_, oldest)), Some(second)) =
                (self.appended.pop_front(), self.appended.front_mut())
            {
                second.1 = oldest;
            }
        }
        self.appended.push_back((last, now));
    }

    /// `from` answered an append or heartbeat at `now`. True if it had been reported
    /// silent: it is back.
    pub(super) fn answered(&mut self, from: NodeId, now: Instant) -> bool {
        if self.leading_since.is_none() {
            return false;
        }
        self.answered.insert(from, now);
        self.silent.remove(&from)
    }

    /// The followers that have not answered for longer than `after` (since this node
    /// became leader, at least) and were not reported yet.
    pub(super) fn newly_silent(
        &mut self,
        followers: impl Iterator<Item = NodeId>,
        now: Instant,
        after: Duration,
    ) -> Vec<NodeId> {
        let Some(since) = self.leading_since else {
            return Vec::new();
        };
        let mut newly = Vec::new();
        for id in followers {
            let last = *self.answered.get(&id).unwrap_or(&since);
            if now.saturating_duration_since(last) > after && self.silent.insert(id) {
                newly.push(id);
            }
        }
        newly
    }

    /// How long the oldest entry after `match_index` has been in the leader's log
    /// (zero when the follower holds everything recorded).
    pub(super) fn lag(&self, match_index: Index, now: Instant) -> Duration {
        let first_missing = self.appended.partition_point(|&(i, _)| i <= match_index);
        self.appended
            .get(first_missing)
            .map_or(Duration::ZERO, |&(_, at)| now.saturating_duration_since(at))
    }

    /// Time since `follower` last answered, if it has since this node became leader.
    pub(super) fn last_answer(&self, follower: NodeId, now: Instant) -> Option<Duration> {
        self.answered
            .get(&follower)
            .map(|&at| now.saturating_duration_since(at))
    }

    /// Time since a majority of `voters` (this leader counting as always current)
    /// last answered: the age check-quorum watches. A follower that never answered
    /// counts as having answered when this node became leader. `None` unless leader.
    pub(super) fn quorum_ack_age(
        &self,
        me: NodeId,
        voters: impl Iterator<Item = NodeId>,
        now: Instant,
    ) -> Option<Duration> {
        let since = self.leading_since?;
        let mut ages: Vec<Duration> = voters
            .map(|id| match id == me {
                true => Duration::ZERO,
                false => now.saturating_duration_since(*self.answered.get(&id).unwrap_or(&since)),
            })
            .collect();
        ages.sort();
        let majority = ages.len() / 2 + 1;
        ages.get(majority - 1).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn lag_is_the_age_of_the_oldest_missing_entry() {
        let t0 = Instant::now();
        let mut clock = ReplicationClock::default();
        // Appended while a follower: the times count once this node leads.
        clock.appended(1, 3, t0);
        clock.leadership_changed(true, t0 + ms(50));
        clock.appended(4, 7, t0 + ms(100));
        clock.appended(8, 7, t0 + ms(150)); // nothing new
        clock.appended(8, 9, t0 + ms(200));
        let now = t0 + ms(300);
        assert_eq!(clock.lag(0, now), ms(300));
        assert_eq!(clock.lag(3, now), ms(200));
        assert_eq!(clock.lag(5, now), ms(200));
        assert_eq!(clock.lag(7, now), ms(100));
        assert_eq!(clock.lag(9, now), Duration::ZERO);

        // A follower's log rewritten from index 6: the old times from 6 on go.
        clock.leadership_changed(false, now);
        clock.appended(6, 6, t0 + ms(400));
        assert_eq!(clock.lag(5, t0 + ms(500)), ms(100));
        assert_eq!(clock.lag(3, t0 + ms(500)), ms(400));
    }

    #[test]
    fn merging_samples_only_makes_lag_look_older() {
        let t0 = Instant::now();
        let mut clock = ReplicationClock::default();
        clock.leadership_changed(true, t0);
        for i in 1..=(MAX_SAMPLES as u64 + 10) {
            clock.appended(i, i, t0 + ms(i));
        }
        assert_eq!(clock.appended.len(), MAX_SAMPLES);
        let now = t0 + ms(100_000);
        // Entry 1 is the oldest whatever was merged.
        assert_eq!(clock.lag(0, now), ms(100_000 - 1));
        assert!(clock.lag(5, now) >= ms(100_000 - 6));
    }

    #[test]
    fn quorum_ack_age_is_the_majoritys_oldest_answer() {
        let t0 = Instant::now();
        let mut clock = ReplicationClock::default();
        let voters = || [1, 2, 3, 4, 5].into_iter();
        assert_eq!(clock.quorum_ack_age(1, voters(), t0), None);
        clock.leadership_changed(true, t0);
        // Nobody answered yet: as old as the leadership.
        assert_eq!(clock.quorum_ack_age(1, voters(), t0 + ms(50)), Some(ms(50)));
        clock.answered(2, t0 + ms(100));
        clock.answered(3, t0 + ms(200));
        clock.answered(4, t0 + ms(300));
        // Ages at 400: me 0, 4: 100, 3: 200, 2: 300, 5: 400 -> the 3rd is 200.
        assert_eq!(
            clock.quorum_ack_age(1, voters(), t0 + ms(400)),
            Some(ms(200))
        );
        assert_eq!(clock.last_answer(2, t0 + ms(400)), Some(ms(300)));
        assert_eq!(clock.last_answer(5, t0 + ms(400)), None);
    }

    #[test]
    fn silence_is_reported_once_and_the_return_too() {
        let t0 = Instant::now();
        let mut clock = ReplicationClock::default();
        let followers = || [2, 3].into_iter();
        assert!(clock
            .newly_silent(followers(), t0 + ms(999), ms(100))
            .is_empty());
        clock.leadership_changed(true, t0);
        assert!(!clock.answered(2, t0 + ms(50)));
        assert!(clock
            .newly_silent(followers(), t0 + ms(100), ms(100))
            .is_empty());
        assert_eq!(clock.newly_silent(followers(), t0 + ms(120), ms(100)), [3]);
        assert!(clock
            .newly_silent(followers(), t0 + ms(130), ms(100))
            .is_empty());
        assert_eq!(clock.newly_silent(followers(), t0 + ms(160), ms(100)), [2]);
        assert!(clock.answered(3, t0 + ms(170)));
        assert!(!clock.answered(3, t0 + ms(180)));
    }
}
