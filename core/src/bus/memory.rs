//! The in-process bus: partitioned, append-only logs with consumer groups.
//!
//! It keeps Kafka's semantics where apflow relies on them, so the same contract tests
//! pass on both backends: messages with the same key go to the same partition and keep
//! their order; a consumer group resumes at its committed offset; a new group starts at
//! the earliest retained message; topics must be created before use.
//!
//! Members of one group share the group's partitions message by message (a work
//! queue), which is how `apflow run` spreads detectors over worker tasks. When the last
//! member leaves, delivered but unacknowledged messages are handed out again to the next
//! member (at-least-once).
//!
//! Retention: messages every group has committed are dropped. Beyond
//! [`MemoryBusConfig::max_retained_bytes`] per topic, a publisher waits for consumers
//! when the topic has a group (back-pressure), and the oldest messages are dropped
//! when it has none (like Kafka's size-based retention).
//!
//! Consumer lag ([`BusBackend::consumer_lag`]): a group exists from its first
//! subscription and starts with the retained start of every partition as its committed
//! offset (that is what the bus keeps for it), so every group has a committed offset on
//! every partition of the topics it joined.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::ack::AckTracker;
use super::{
    Ack, BusBackend, BusError, Delivery, GroupLag, MemoryBusConfig, Message, Record,
    SubscriptionBackend, TopicSpec,
};

#[derive(Debug, Default)]
struct PartitionLog {
    /// Offset of `messages[0]`.
    base: i64,
    messages: VecDeque<Message>,
}

impl PartitionLog {
    fn end(&self) -> i64 {
        self.base + self.messages.len() as i64
    }
}

#[derive(Debug)]
struct GroupState {
    members: usize,
    /// Next offset to hand out, per partition.
    cursor: Vec<i64>,
    /// Committed offset (next to consume), per partition.
    committed: Vec<i64>,
}

#[derive(Debug)]
struct TopicLog {
    partitions: Vec<PartitionLog>,
    groups: HashMap<String, GroupState>,
    bytes: usize,
    round_robin: usize,
}

impl TopicLog {
    /// Drops messages every group has committed.
    fn trim_committed(&mut self) {
        if self.groups.is_empty() {
            return;
        }
        for (p, log) in self.partitions.iter_mut().enumerate() {
            let low = self
                .groups
                .values()
                .map(|g| g.committed[p])
                .min()
                .unwrap_or(log.base);
            while log.base < low {
                match log.messages.pop_front() {
                    Some(m) => {
                        self.bytes -= m.payload.len();
                        log.base += 1;
                    }
                    None => break,
                }
            }
        }
    }

    /// Drops the oldest message of the fullest partition (size retention without consumers).
    fn drop_oldest(&mut self) -> bool {
        let Some(log) = self.partitions.iter_mut().max_by_key(|l| l.messages.len()) else {
            return false;
        };
        match log.messages.pop_front() {
            Some(m) => {
                self.bytes -= m.payload.len();
                log.base += 1;
                true
            }
            None => false,
        }
    }
}

#[derive(Debug)]
struct Shared {
    config: MemoryBusConfig,
    topics: Mutex<HashMap<String, TopicLog>>,
    /// Woken on every publish and every commit.
    changed: Notify,
}

/// The in-process bus. Cloning shares the same topics.
#[derive(Clone, Debug)]
pub struct MemoryBus {
    shared: Arc<Shared>,
}

impl MemoryBus {
    /// An empty bus.
    pub fn new(config: MemoryBusConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                config,
                topics: Mutex::new(HashMap::new()),
                changed: Notify::new(),
            }),
        }
    }

    /// Messages currently retained in `topic` (all partitions).
    pub fn retained(&self, topic: &str) -> usize {
        let topics = self.shared.topics.lock().expect("bus lock");
        topics
            .get(topic)
            .map_or(0, |t| t.partitions.iter().map(|p| p.messages.len()).sum())
    }
}

/// Kafka's default partitioner hashes keys with murmur2; any stable hash keeps per-key
/// order, and FNV-1a is enough here.
fn partition_of(key: &str, partitions: usize) -> usize {
    let mut h: u32 = 0x811c_9dc5;
    for b in key.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h as usize % partitions
}

impl BusBackend for MemoryBus {
    type Subscription = MemorySubscription;

    async fn ensure_topics(&self, topics: &[TopicSpec]) -> Result<(), BusError> {
        let mut map = self.shared.topics.lock().expect("bus lock");
        for spec in topics {
            if spec.partitions < 1 {
                return Err(BusError::Admin(format!(
                    "topic {} needs at least one partition",
                    spec.name
                )));
            }
            map.entry(spec.name.clone()).or_insert_with(|| TopicLog {
                partitions: (0..spec.partitions)
                    .map(|_| PartitionLog::default())
                    .collect(),
                groups: HashMap::new(),
                bytes: 0,
                round_robin: 0,
            });
        }
        Ok(())
    }

    async fn publish(&self, record: Record) -> Result<Ack, BusError> {
        loop {
            let notified = self.shared.changed.notified();
            {
                let mut map = self.shared.topics.lock().expect("bus lock");
                let topic = map
                    .get_mut(&record.topic)
                    .ok_or_else(|| BusError::UnknownTopic(record.topic.clone()))?;
                let limit = self.shared.config.max_retained_bytes;
                let full = topic.bytes + record.payload.len() > limit && topic.bytes > 0;
                if full && topic.groups.is_empty() {
                    while topic.bytes + record.payload.len() > limit && topic.drop_oldest() {}
                }
                if !full || topic.groups.is_empty() {
                    let n = topic.partitions.len();
                    let p = match &record.key {
                        Some(k) => partition_of(k, n),
                        None => {
                            topic.round_robin = (topic.round_robin + 1) % n;
                            topic.round_robin
                        }
                    };
                    let log = &mut topic.partitions[p];
                    let offset = log.end();
                    topic.bytes += record.payload.len();
                    log.messages.push_back(Message {
                        topic: record.topic.clone(),
                        partition: p as i32,
                        offset,
                        key: record.key.as_ref().map(|k| k.as_bytes().to_vec()),
                        payload: record.payload,
                        headers: record.headers,
                        timestamp_ms: Some(chrono::Utc::now().timestamp_millis()),
                    });
                    drop(map);
                    self.shared.changed.notify_waiters();
                    return Ok(Ack {
                        partition: p as i32,
                        offset,
                    });
                }
            }
            // Back-pressure: wait until a consumer commits and retention frees room.
            notified.await;
        }
    }

    async fn consumer_lag(&self, topics: &[String]) -> Result<Vec<GroupLag>, BusError> {
        let map = self.shared.topics.lock().expect("bus lock");
        let mut out = Vec::new();
        for name in topics {
            // A topic that does not exist (yet) has no groups.
            let Some(topic) = map.get(name) else {
                continue;
            };
            for (group, state) in &topic.groups {
                let lag = topic
                    .partitions
                    .iter()
                    .zip(&state.committed)
                    .map(|(log, &committed)| log.end() - committed.max(log.base))
                    .sum();
                out.push(GroupLag {
                    topic: name.clone(),
                    group: group.clone(),
                    lag,
                    partitions: topic.partitions.len() as u32,
                });
            }
        }
        drop(map);
        out.sort_by(|a, b| (&a.topic, &a.group).cmp(&(&b.topic, &b.group)));
        out.dedup_by(|a, b| a.topic == b.topic && a.group == b.group);
        Ok(out)
    }

    async fn subscribe(
        &self,
        topics: &[String],
        group: &str,
    ) -> Result<MemorySubscription, BusError> {
        {
            let mut map = self.shared.topics.lock().expect("bus lock");
            for t in topics {
                let topic = map
                    .get_mut(t)
                    .ok_or_else(|| BusError::UnknownTopic(t.clone()))?;
                let bases: Vec<i64> = topic.partitions.iter().map(|p| p.base).collect();
                let g = topic
                    .groups
                    .entry(group.to_owned())
                    .or_insert_with(|| GroupState {
                        members: 0,
                        cursor: bases.clone(),
                        committed: bases.clone(),
                    });
                if g.members == 0 {
                    // Resume at the committed offsets (never before what is retained).
                    for (p, base) in bases.iter().enumerate() {
                        g.committed[p] = g.committed[p].max(*base);
                        g.cursor[p] = g.committed[p];
                    }
                }
                g.members += 1;
            }
        }
        let shared = self.shared.clone();
        let group_name = group.to_owned();
        let tracker = AckTracker::new(Box::new(move |topic, partition, next| {
            let mut map = shared.topics.lock().expect("bus lock");
            if let Some(t) = map.get_mut(topic) {
                if let Some(g) = t.groups.get_mut(&group_name) {
                    let c = &mut g.committed[partition as usize];
                    *c = (*c).max(next);
                }
                t.trim_committed();
            }
            drop(map);
            shared.changed.notify_waiters();
        }));
        Ok(MemorySubscription {
            bus: self.clone(),
            topics: topics.to_vec(),
            group: group.to_owned(),
            tracker: Arc::new(tracker),
            next_topic: 0,
        })
    }
}

/// A member of a consumer group on the in-process bus.
#[derive(Debug)]
pub struct MemorySubscription {
    bus: MemoryBus,
    topics: Vec<String>,
    group: String,
    pub(super) tracker: Arc<AckTracker>,
    next_topic: usize,
}

impl MemorySubscription {
    fn try_take(&mut self) -> Option<Message> {
        let mut map = self.bus.shared.topics.lock().expect("bus lock");
        let n = self.topics.len();
        for i in 0..n {
            let ti = (self.next_topic + i) % n;
            let Some(topic) = map.get_mut(&self.topics[ti]) else {
                continue;
            };
            let Some(g) = topic.groups.get_mut(&self.group) else {
                continue;
            };
            for (p, log) in topic.partitions.iter().enumerate() {
                let cursor = g.cursor[p].max(log.base);
                if cursor < log.end() {
                    let m = log.messages[(cursor - log.base) as usize].clone();
                    g.cursor[p] = cursor + 1;
                    self.next_topic = (ti + 1) % n;
                    return Some(m);
                }
            }
        }
        None
    }
}

impl SubscriptionBackend for MemorySubscription {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        let shared = self.bus.shared.clone();
        loop {
            let notified = shared.changed.notified();
            if let Some(m) = self.try_take() {
                return Ok(Delivery::new(m, self.tracker.clone()));
            }
            notified.await;
        }
    }

    async fn commit(&mut self) -> Result<(), BusError> {
        // Acknowledgements commit immediately on this bus.
        Ok(())
    }

    async fn close(self, _timeout: Duration) {
        drop(self);
    }
}

impl Drop for MemorySubscription {
    fn drop(&mut self) {
        let Ok(mut map) = self.bus.shared.topics.lock() else {
            return;
        };
        for t in &self.topics {
            if let Some(topic) = map.get_mut(t)
                && let Some(g) = topic.groups.get_mut(&self.group)
            {
                g.members = g.members.saturating_sub(1);
                if g.members == 0 {
                    // Unacknowledged deliveries go to the next member.
                    g.cursor = g.committed.clone();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bus holding topic `t` with `partitions` partitions.
    async fn bus_with_topic(max_retained_bytes: usize, partitions: i32) -> MemoryBus {
        let bus = MemoryBus::new(MemoryBusConfig { max_retained_bytes });
        bus.ensure_topics(&[TopicSpec {
            name: "t".into(),
            partitions,
        }])
        .await
        .unwrap();
        bus
    }

    fn rec(topic: &str, key: &str, v: u8) -> Record {
        Record {
            topic: topic.into(),
            key: Some(key.into()),
            payload: vec![v; 10],
            headers: vec![],
        }
    }

    #[tokio::test]
    async fn unknown_topic_is_refused() {
        let bus = MemoryBus::new(MemoryBusConfig::default());
        assert!(matches!(
            bus.publish(rec("nope", "k", 1)).await,
            Err(BusError::UnknownTopic(_))
        ));
    }

    #[tokio::test]
    async fn committed_messages_are_trimmed_and_groups_are_independent() {
        let bus = bus_with_topic(MemoryBusConfig::default().max_retained_bytes, 2).await;
        let mut a = bus.subscribe(&["t".into()], "a").await.unwrap();
        let mut b = bus.subscribe(&["t".into()], "b").await.unwrap();
        for i in 0..6 {
            bus.publish(rec("t", &format!("k{i}"), i)).await.unwrap();
        }
        for _ in 0..6 {
            a.next().await.unwrap().ack();
        }
        assert_eq!(bus.retained("t"), 6, "group b has not consumed yet");
        for _ in 0..6 {
            b.next().await.unwrap().ack();
        }
        assert_eq!(bus.retained("t"), 0);
    }

    #[tokio::test]
    async fn unacked_deliveries_are_redelivered_to_the_next_member() {
        let bus = bus_with_topic(MemoryBusConfig::default().max_retained_bytes, 1).await;
        for i in 0..3 {
            bus.publish(rec("t", "k", i)).await.unwrap();
        }
        let mut s = bus.subscribe(&["t".into()], "g").await.unwrap();
        s.next().await.unwrap().ack();
        let _unacked = s.next().await.unwrap();
        drop(s);
        let mut s = bus.subscribe(&["t".into()], "g").await.unwrap();
        let d = s.next().await.unwrap();
        assert_eq!(d.message.offset, 1);
    }

    #[tokio::test]
    async fn publishers_wait_for_consumers_when_full() {
        let bus = bus_with_topic(25, 1).await;
        let mut s = bus.subscribe(&["t".into()], "g").await.unwrap();
        bus.publish(rec("t", "k", 0)).await.unwrap();
        bus.publish(rec("t", "k", 1)).await.unwrap();
        let b2 = bus.clone();
        let blocked = tokio::spawn(async move { b2.publish(rec("t", "k", 2)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!blocked.is_finished(), "publisher should wait for room");
        s.next().await.unwrap().ack();
        let ack = tokio::time::timeout(Duration::from_secs(5), blocked)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(ack.offset, 2);
    }

    #[tokio::test]
    async fn without_consumers_the_oldest_messages_are_dropped() {
        let bus = bus_with_topic(25, 1).await;
        for i in 0..5 {
            bus.publish(rec("t", "k", i)).await.unwrap();
        }
        assert_eq!(bus.retained("t"), 2);
        let mut s = bus.subscribe(&["t".into()], "late").await.unwrap();
        assert_eq!(s.next().await.unwrap().message.offset, 3);
    }

    #[test]
    fn same_key_same_partition() {
        assert_eq!(
            partition_of("detector-12", 8),
            partition_of("detector-12", 8)
        );
        let spread: std::collections::HashSet<_> =
            (0..64).map(|i| partition_of(&i.to_string(), 8)).collect();
        assert!(spread.len() > 4);
    }
}
