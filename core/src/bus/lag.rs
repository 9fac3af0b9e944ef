//! Consumer lag per consumer group, and the monitor that exports it.
//!
//! Issue #8 asks for "consumer lag per group including community-broker groups": the
//! community brokers (Fink, Lasair, …) read the alert topic in consumer groups of their
//! own, which apflow never joins, so the lag is read from the broker's side — for every
//! consumer group, its committed offset on each partition against the partition's high
//! watermark — the `LAG` column of `kafka-consumer-groups.sh --describe`, summed over
//! the partitions (with the two choices documented on [`GroupLag`]).
//!
//! [`GroupLag`] is one (topic, group) row; [`super::Bus::consumer_lag`] lists them and
//! [`spawn_lag_monitor`] copies them into the gauge
//! `apflow_bus_consumer_lag_messages{topic,group}` at a fixed interval.

use std::collections::BTreeSet;
use std::time::Duration;

use super::Bus;
use crate::telemetry::metrics::BUS_CONSUMER_LAG_MESSAGES;

/// How far one consumer group is behind on one topic.
///
/// `lag` is the sum over the topic's partitions of (high watermark − committed offset),
/// the committed offset being the next offset the group will read. Two choices, both
/// the ones that count what the group would still have to read if it resumed now:
///
/// * a partition on which the group has **no committed offset** counts from the
///   partition's **low watermark** (the earliest retained message): a group resuming
///   without a committed offset starts there (`auto.offset.reset=earliest`, apflow's
///   setting and the usual one for alert consumers), so every retained message is
///   still ahead of it;
/// * a committed offset **below the low watermark** (retention deleted messages the
///   group never read) also counts from the low watermark: those messages are gone and
///   can no longer be read.
///
/// A group that committed everything has lag 0.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupLag {
    /// Topic name.
    pub topic: String,
    /// Consumer-group name.
    pub group: String,
    /// Messages not yet committed by the group, summed over the topic's partitions.
    pub lag: i64,
    /// Partitions of the topic on which the group has a committed offset (on the
    /// in-process bus: every partition, since a group holds the retained start of each
    /// from its first subscription).
    pub partitions: u32,
}

/// Exports [`Bus::consumer_lag`] of `topics` every `interval` as the gauge
/// `apflow_bus_consumer_lag_messages{topic,group}`, until the task is aborted.
///
/// Each round sets the gauge of every (topic, group) listed and removes the series of
/// pairs this monitor set before that are no longer listed (a group deleted or whose
/// offsets expired). A failed round is counted in
/// `apflow_bus_errors_total{backend,op="consumer_lag"}` and logged by the bus; the
/// gauges keep their last values (the error alert, not a fake zero, says the figure is
/// stale) and the monitor goes on at the next tick. An `interval` of zero is taken as
/// one second (a zero period would poll the broker in a busy loop). Call it inside a
/// Tokio runtime; abort the returned handle to stop it.
pub fn spawn_lag_monitor(
    bus: Bus,
    topics: Vec<String>,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    let period = if interval.is_zero() {
        Duration::from_secs(1)
    } else {
        interval
    };
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(period);
        // A slow round (a broker timing out) is not followed by a burst of catch-up rounds.
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shown = BTreeSet::new();
        loop {
            ticker.tick().await;
            // Errors are counted and logged by `Bus::consumer_lag`.
            if let Ok(lags) = bus.consumer_lag(&topics).await {
                shown = export(&lags, &shown);
            }
        }
    })
}

/// Sets the gauge of every row of `lags` and removes the series in `shown` (set by an
/// earlier round) that `lags` no longer has; returns the (topic, group) pairs now shown.
fn export(lags: &[GroupLag], shown: &BTreeSet<(String, String)>) -> BTreeSet<(String, String)> {
    let now: BTreeSet<(String, String)> = lags
        .iter()
        .map(|l| (l.topic.clone(), l.group.clone()))
        .collect();
    for l in lags {
        BUS_CONSUMER_LAG_MESSAGES
            .with_label_values(&[l.topic.as_str(), l.group.as_str()])
            .set(l.lag);
    }
    for (topic, group) in shown.difference(&now) {
        // Absent only if someone else removed it: nothing left to do either way.
        let _ = BUS_CONSUMER_LAG_MESSAGES.remove_label_values(&[topic.as_str(), group.as_str()]);
    }
    now
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(topic: &str, group: &str, lag: i64) -> GroupLag {
        GroupLag {
            topic: topic.into(),
            group: group.into(),
            lag,
            partitions: 1,
        }
    }

    /// The exported value of the gauge of (topic, group), if the series exists.
    fn gauge(topic: &str, group: &str) -> Option<i64> {
        let (t, g) = (format!("topic=\"{topic}\""), format!("group=\"{group}\""));
        crate::telemetry::metrics::render().lines().find_map(|l| {
            let rest = l.strip_prefix("apflow_bus_consumer_lag_messages{")?;
            let (labels, value) = rest.split_once("} ")?;
            let labels: Vec<&str> = labels.split(',').collect();
            (labels.contains(&t.as_str()) && labels.contains(&g.as_str()))
                .then(|| value.parse().expect("an integer gauge"))
        })
    }

    #[test]
    fn a_round_sets_every_pair_and_removes_the_pairs_that_disappeared() {
        let t = "lag-unit-export";
        let shown = export(&[row(t, "fink", 12), row(t, "lasair", 3)], &BTreeSet::new());
        assert_eq!(shown.len(), 2);
        assert_eq!(gauge(t, "fink"), Some(12));
        assert_eq!(gauge(t, "lasair"), Some(3));

        let shown = export(&[row(t, "fink", 40)], &shown);
        assert_eq!(
            shown.into_iter().collect::<Vec<_>>(),
            vec![(t.to_owned(), "fink".to_owned())]
        );
        assert_eq!(gauge(t, "fink"), Some(40));
        assert_eq!(
            gauge(t, "lasair"),
            None,
            "a group that disappeared is removed"
        );
    }
}
