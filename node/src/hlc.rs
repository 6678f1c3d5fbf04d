//! Hybrid logical clock: physical milliseconds plus a logical counter.
//!
//! Every version a node stamps is greater than every version it has stamped
//! or observed before, so a write that causally follows another gets a larger
//! version even when wall clocks disagree.

use std::sync::Mutex;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use crate::types::NodeId;
use crate::types::Version;

#[derive(Debug)]
pub struct HybridClock {
    node_id: NodeId,
    /// The last stamp issued or observed: (physical_ms, logical).
    last: Mutex<(u64, u32)>,
    wall_clock_ms: fn() -> u64,
}

fn system_time_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl HybridClock {
    pub fn new(node_id: NodeId) -> Self {
        Self::with_wall_clock(node_id, system_time_ms)
    }

    pub fn with_wall_clock(node_id: NodeId, wall_clock_ms: fn() -> u64) -> Self {
        Self {
            node_id,
            last: Mutex::new((0, 0)),
            wall_clock_ms,
        }
    }

    /// A new stamp, greater than any issued or observed before.
    pub fn now(&self) -> Version {
        let wall = (self.wall_clock_ms)();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        *last = if wall > last.0 {
            (wall, 0)
        } else {
            match last.1.checked_add(1) {
                Some(logical) => (last.0, logical),
                None => (last.0 + 1, 0),
            }
        };
        Version {
            physical_ms: last.0,
            logical: last.1,
            origin_node: self.node_id,
        }
    }

    /// Moves the clock past a version seen in an entry or a request.
    pub fn observe(&self, seen: Version) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if (seen.physical_ms, seen.logical) > *last {
            *last = (seen.physical_ms, seen.logical);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frozen_clock() -> u64 {
        1_000
    }

    #[test]
    fn stamps_increase_when_the_wall_clock_stands_still() {
        let clock = HybridClock::with_wall_clock(1, frozen_clock);
        let a = clock.now();
        let b = clock.now();
        assert_eq!(
            a,
            Version {
                physical_ms: 1_000,
                logical: 0,
                origin_node: 1
            }
        );
        assert_eq!(
            b,
            Version {
                physical_ms: 1_000,
                logical: 1,
                origin_node: 1
            }
        );
    }

    #[test]
    fn a_stamp_after_observing_a_future_version_is_greater() {
        let clock = HybridClock::with_wall_clock(2, frozen_clock);
        let remote = Version {
            physical_ms: 5_000,
            logical: 3,
            origin_node: 7,
        };
        clock.observe(remote);
        let next = clock.now();
        assert!(next > remote, "{next} > {remote}");
        assert_eq!(
            next,
            Version {
                physical_ms: 5_000,
                logical: 4,
                origin_node: 2
            }
        );
    }

    #[test]
    fn observing_an_older_version_changes_nothing() {
        let clock = HybridClock::with_wall_clock(2, frozen_clock);
        clock.observe(Version {
            physical_ms: 2_000,
            logical: 0,
            origin_node: 1,
        });
        clock.observe(Version {
            physical_ms: 10,
            logical: 9,
            origin_node: 1,
        });
        assert_eq!(
            clock.now(),
            Version {
                physical_ms: 2_000,
                logical: 1,
                origin_node: 2
            }
        );
    }

    #[test]
    fn the_real_clock_is_monotonic() {
        let clock = HybridClock::new(3);
        let mut previous = clock.now();
        for _ in 0..1_000 {
            let next = clock.now();
            assert!(next > previous);
            previous = next;
        }
    }
}
