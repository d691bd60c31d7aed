//! Retention: which points to keep as they age. A pure function of the points' times, the
//! policy and now, so it is tested without a clock; [`super::PointStore::thin`] applies it
//! under the shadow's lock, sparing leased points.

use bellwether_model::Dur;
use serde::{Deserialize, Serialize};

use super::{PointId, Timestamp};

/// How points thin out with age: every point (and, for a transactional shadow, every
/// commit after it) for `keep_all_for`; then the latest point of each hour until
/// `hourly_for`; then the latest of each day until `daily_for`; nothing older. The latest
/// point is always kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    pub keep_all_for: Dur,
    pub hourly_for: Dur,
    pub daily_for: Dur,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            keep_all_for: Dur::from_secs(24 * 3600),
            hourly_for: Dur::from_secs(7 * 24 * 3600),
            daily_for: Dur::from_secs(90 * 24 * 3600),
        }
    }
}

/// The points to remove, given every point's id and time (in any order).
pub fn thin_plan(
    points: &[(PointId, Timestamp)],
    policy: &Retention,
    now: Timestamp,
) -> Vec<PointId> {
    let mut sorted: Vec<(PointId, Timestamp)> = points.to_vec();
    sorted.sort();
    let Some(&(latest, _)) = sorted.last() else {
        return Vec::new();
    };
    let hour = 3_600_000_000i64;
    let day = 24 * hour;
    let all_until = now.minus(policy.keep_all_for.get());
    let hourly_until = now.minus(policy.hourly_for.get());
    let daily_until = now.minus(policy.daily_for.get());
    // The latest point of each bucket is kept: walk newest first, keep a point when its
    // bucket has not been seen.
    let mut seen_hours = std::collections::HashSet::new();
    let mut seen_days = std::collections::HashSet::new();
    let mut remove = Vec::new();
    for &(id, at) in sorted.iter().rev() {
        let keep = if id == latest || at >= all_until {
            true
        } else if at >= hourly_until {
            seen_hours.insert(at.0.div_euclid(hour))
        } else if at >= daily_until {
            seen_days.insert(at.0.div_euclid(day))
        } else {
            false
        };
        if !keep {
            remove.push(id);
        }
    }
    remove.sort();
    remove
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000_000;

    #[test]
    fn keeps_all_recent_then_hourly_then_daily() {
        let now = Timestamp(1000 * 24 * H);
        // A point every 10 minutes for 10 days.
        let points: Vec<(PointId, Timestamp)> = (0..(10 * 24 * 6))
            .map(|i| {
                (
                    PointId(i as u64 + 1),
                    Timestamp(now.0 - (10 * 24 * 6 - i) * H / 6),
                )
            })
            .collect();
        let policy = Retention {
            keep_all_for: Dur::from_secs(24 * 3600),
            hourly_for: Dur::from_secs(3 * 24 * 3600),
            daily_for: Dur::from_secs(7 * 24 * 3600),
        };
        let remove = thin_plan(&points, &policy, now);
        let kept: Vec<_> = points
            .iter()
            .filter(|(id, _)| !remove.contains(id))
            .collect();
        let age = |t: Timestamp| now.0 - t.0;
        let recent = kept.iter().filter(|(_, t)| age(*t) <= 24 * H).count();
        assert_eq!(recent, 24 * 6, "every point of the last day");
        let hourly = kept
            .iter()
            .filter(|(_, t)| age(*t) > 24 * H && age(*t) <= 3 * 24 * H)
            .count();
        assert!(
            (47..=49).contains(&hourly),
            "one per hour for two days: {hourly}"
        );
        let daily = kept
            .iter()
            .filter(|(_, t)| age(*t) > 3 * 24 * H && age(*t) <= 7 * 24 * H)
            .count();
        assert!(
            (4..=5).contains(&daily),
            "one per day for four days: {daily}"
        );
        assert!(kept.iter().all(|(_, t)| age(*t) <= 7 * 24 * H));
    }

    #[test]
    fn the_latest_point_is_always_kept() {
        let now = Timestamp(1000 * 24 * H);
        let points = vec![(PointId(1), Timestamp(0)), (PointId(2), Timestamp(H))];
        assert_eq!(
            thin_plan(&points, &Retention::default(), now),
            vec![PointId(1)]
        );
        assert!(thin_plan(&[], &Retention::default(), now).is_empty());
    }
}
