//! The alert benchmarks' workloads. Serialisation alone ([`serialise`], `apflow bench
//! alerts`), timed by wall clock and by the thread's own CPU time. The produce part
//! (`apflow bench alerts-produce`): pre-serialised alerts of realistic size put on the
//! wire by [`crate::producer::AlertProducer`], against the same bytes sent by the
//! plainest rdkafka loop (the time the broker needs to accept them); and end to end,
//! each packet encoded from its [`AlertInput`](crate::packet::AlertInput) as the
//! producer hands it to the client ([`packet_alerts`], `produce_all` with `encode`).
//!
//! The messages are synthetic but shaped like alerts: a Confluent header, a few
//! `long`/`double` fields, then three cutouts of big-endian `float32` pixels (as in
//! FITS) holding sky noise, so compression sees what it would see on real cutouts —
//! noisy mantissas, compressible exponents. A pool of distinct payloads is cycled
//! (shared buffers, so 40,000 × 80 KB does not need 3.3 GB of memory); consecutive
//! messages always differ, so batch compression cannot exploit repeats.

use apflow_core::ids::{DetectorId, DiaSourceId, VisitId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::producer::FramedAlert;
use crate::wire::frame_into;

/// The visit the synthetic alerts belong to.
fn bench_visit() -> VisitId {
    VisitId::new(20261122, 1).expect("valid visit")
}

/// `n` framed alerts of about `size` bytes (at least 64), spread over `detectors`
/// detectors of [`bench_visit`], their payloads cycled from `distinct` noise
/// payloads generated from `seed`. Returns the alerts grouped by detector.
pub fn synthetic_alerts(
    n: usize,
    size: usize,
    detectors: u16,
    distinct: usize,
    seed: u64,
) -> Vec<(DetectorId, Vec<FramedAlert>)> {
    let size = size.max(64);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let sky = Normal::new(1500.0f32, 40.0).expect("a valid normal");
    let pool: Vec<bytes::Bytes> = (0..distinct.max(2))
        .map(|_| {
            let mut body = Vec::with_capacity(size);
            // Some scalar fields: ids, coordinates, fluxes.
            for _ in 0..6 {
                body.extend_from_slice(&rng.random::<u64>().to_le_bytes());
            }
            // Three cutouts of sky noise (nJy), big-endian float32 as in FITS.
            while body.len() + 4 <= size - crate::wire::HEADER_LEN {
                let v: f32 = sky.sample(&mut rng);
                body.extend_from_slice(&v.to_be_bytes());
            }
            let mut framed = Vec::with_capacity(size);
            frame_into(crate::wire::schema_id(11, 0), &body, &mut framed);
            framed.into()
        })
        .collect();
    spread(&pool, n, detectors)
}

/// `n` alerts dealt round-robin to `detectors` detectors of [`bench_visit`]: alert `i`
/// goes to detector `i % detectors` with the next counter of that detector's ids, and
/// carries `pool[i % pool.len()]` (a shared buffer). Nothing when `pool` is empty.
fn spread(pool: &[bytes::Bytes], n: usize, detectors: u16) -> Vec<(DetectorId, Vec<FramedAlert>)> {
    let detectors = detectors.max(1);
    let mut out: Vec<(DetectorId, Vec<FramedAlert>)> = (0..detectors)
        .map(|d| (DetectorId(d), Vec::new()))
        .collect();
    if pool.is_empty() {
        return out;
    }
    for i in 0..n {
        let d = i % detectors as usize;
        let counter = (i / detectors as usize) as u32;
        let id = DiaSourceId::new(bench_visit(), DetectorId(d as u16), counter)
            .expect("bench ids fit")
            .0;
        out[d].1.push(FramedAlert {
            dia_source_id: id,
            framed: pool[i % pool.len()].clone(),
        });
    }
    out
}

/// `n` real alert packets spread over `detectors` detectors as in
/// [`synthetic_alerts`] (same ids): alert `i` is `inputs[i % inputs.len()]` encoded
/// (shared buffers, one per distinct input), keyed by its unique id. The packets'
/// own `diaSourceId` repeats with the inputs; only the keys are unique.
pub fn packet_alerts(
    inputs: &[crate::packet::AlertInput],
    n: usize,
    detectors: u16,
) -> Result<Vec<(DetectorId, Vec<FramedAlert>)>, crate::packet::PacketError> {
    let mut enc = crate::packet::AlertEncoder::new();
    let pool = inputs
        .iter()
        .map(|a| enc.to_framed(a).map(bytes::Bytes::from))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(spread(&pool, n, detectors))
}

/// The input alert `k` of detector number `d` of [`packet_alerts`] was encoded from
/// (the inverse of [`spread`]'s dealing).
#[cfg(any(feature = "kafka", test))]
fn packet_input(d: usize, k: usize, detectors: usize, inputs: usize) -> usize {
    (k * detectors + d) % inputs
}

pub use apflow_core::time::thread_cpu_seconds;

/// What the serialisation benchmark measured.
#[derive(Clone, Copy, Debug)]
pub struct SerialiseFigures {
    /// Alerts encoded.
    pub alerts: usize,
    /// Framed bytes written.
    pub bytes: usize,
    /// Wall-clock seconds.
    pub wall_seconds: f64,
    /// Seconds this thread ran on a CPU ([`thread_cpu_seconds`]), when known.
    pub cpu_seconds: Option<f64>,
}

impl SerialiseFigures {
    /// Alerts per CPU second of the encoding thread.
    pub fn alerts_per_cpu_s(&self) -> Option<f64> {
        self.cpu_seconds.map(|c| self.alerts as f64 / c)
    }
    /// Megabytes (10⁶ B) per CPU second, else per wall second.
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.cpu_seconds.unwrap_or(self.wall_seconds)
    }
}

/// Serialisation alone, on this thread: `n` alerts cycled from `inputs` through one
/// [`AlertEncoder`](crate::packet::AlertEncoder), each framed into a reused buffer
/// (the bytes a producer would hand to Kafka); one warm-up pass over `inputs` first.
/// `progress` is called every 1,000 alerts.
pub fn serialise(
    inputs: &[crate::packet::AlertInput],
    n: usize,
    mut progress: impl FnMut(usize),
) -> Result<SerialiseFigures, crate::packet::PacketError> {
    let mut enc = crate::packet::AlertEncoder::new();
    let mut buf = Vec::with_capacity(512 * 1024);
    for a in inputs {
        buf.clear();
        enc.encode_framed(a, &mut buf)?;
    }
    let mut bytes = 0usize;
    let cpu0 = thread_cpu_seconds();
    let t0 = std::time::Instant::now();
    for (i, a) in inputs.iter().cycle().take(n).enumerate() {
        buf.clear();
        enc.encode_framed(a, &mut buf)?;
        bytes += buf.len();
        if i % 1000 == 999 {
            progress(1000);
        }
    }
    let wall_seconds = t0.elapsed().as_secs_f64();
    let cpu_seconds = cpu0.zip(thread_cpu_seconds()).map(|(a, b)| b - a);
    Ok(SerialiseFigures {
        alerts: n,
        bytes,
        wall_seconds,
        cpu_seconds,
    })
}

#[cfg(feature = "kafka")]
pub use self::kafka::{ProduceFigures, baseline_produce, produce_all};

#[cfg(feature = "kafka")]
mod kafka {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use apflow_core::bus::KafkaConfig;
    use apflow_core::ids::DetectorId;
    use rdkafka::producer::{FutureProducer, FutureRecord};

    use crate::ledger::Ledger;
    use crate::packet::AlertInput;
    use crate::producer::{
        AlertProducer, DetectorAlerts, Encoding, FramedAlert, ProduceError, ProducerConfig,
        READOUT_END_HEADER, SHUTTER_CLOSE_HEADER, ensure_topic,
    };

    /// Alerts, bytes and seconds of one run.
    #[derive(Clone, Copy, Debug)]
    pub struct ProduceFigures {
        /// Alerts acknowledged.
        pub alerts: u64,
        /// Wire bytes acknowledged (before compression).
        pub bytes: u64,
        /// Seconds from the first send to the last acknowledgement.
        pub seconds: f64,
    }

    impl ProduceFigures {
        /// Alerts per second.
        pub fn alerts_per_s(&self) -> f64 {
            self.alerts as f64 / self.seconds
        }
        /// Megabytes (10⁶ B) per second.
        pub fn mb_per_s(&self) -> f64 {
            self.bytes as f64 / 1e6 / self.seconds
        }
    }

    /// Produces every detector's alerts through [`AlertProducer`] (ledger in memory),
    /// all detectors at once as a visit's detectors finish together; creates the topic
    /// first (not timed). With `encode` (the inputs `detectors` came from through
    /// [`super::packet_alerts`]), the packets are encoded afresh from those inputs
    /// inside the timed span, each as it is handed to the client ([`Encoding`]) —
    /// serialise + produce, end to end; the pre-serialised bytes give only the keys.
    pub async fn produce_all(
        brokers: &str,
        kafka: &KafkaConfig,
        config: &ProducerConfig,
        detectors: &[(DetectorId, Vec<FramedAlert>)],
        encode: Option<&[AlertInput]>,
    ) -> Result<ProduceFigures, ProduceError> {
        let ledger = Arc::new(Ledger::in_memory()?);
        let producer = AlertProducer::new(brokers, kafka, config, 11, ledger)?;
        producer.ensure_topic().await?;
        let visit = super::bench_visit();
        let shutter_close = chrono::Utc::now();
        let n_detectors = detectors.len();
        let producer = &producer;
        let started = Instant::now();
        let reports = futures::future::join_all(detectors.iter().enumerate().map(
            |(d, (detector, alerts))| async move {
                let batch = DetectorAlerts {
                    visit,
                    detector: *detector,
                    shutter_close,
                    readout_end: shutter_close,
                    alerts,
                };
                match encode {
                    None => producer.send_detector(batch).await,
                    // Each packet encoded from its input as it is handed to the client.
                    Some(inputs) => {
                        let keyed = (alerts.iter().enumerate())
                            .map(|(k, a)| {
                                let i = super::packet_input(d, k, n_detectors, inputs.len());
                                (a.dia_source_id, &inputs[i])
                            })
                            .collect();
                        let mut payloads = Encoding::keyed(keyed);
                        producer.send_payloads(batch, &mut payloads).await
                    }
                }
            },
        ))
        .await;
        let seconds = started.elapsed().as_secs_f64();
        let mut f = ProduceFigures {
            alerts: 0,
            bytes: 0,
            seconds,
        };
        for r in reports {
            let r = r?;
            f.alerts += u64::from(r.sent);
            f.bytes += r.bytes;
        }
        Ok(f)
    }

    /// The same records (value, decimal key, the three timestamp headers) through a
    /// bare `FutureProducer` with the producer's own client settings, one loop in
    /// order: no per-detector tasks, ledger or metrics — the floor set by librdkafka
    /// and the broker. Creates `topic` (with the configured partitions)
    /// first when missing (not timed).
    pub async fn baseline_produce(
        brokers: &str,
        kafka: &KafkaConfig,
        config: &ProducerConfig,
        topic: &str,
        detectors: &[(DetectorId, Vec<FramedAlert>)],
    ) -> Result<ProduceFigures, ProduceError> {
        let producer: FutureProducer =
            crate::producer::kafka::client_config(brokers, kafka, config)?
                .create()
                .map_err(|e| ProduceError::Config(e.to_string()))?;
        ensure_topic(brokers, kafka, topic, config.partitions).await?;
        let started = Instant::now();
        let mut pending = std::collections::VecDeque::new();
        let mut f = ProduceFigures {
            alerts: 0,
            bytes: 0,
            seconds: 0.0,
        };
        // The records apflow sends: decimal key and its three timestamp headers (the
        // broker stores headers record by record, so they are part of its work).
        let stamp = chrono::Utc::now().timestamp_millis().to_string();
        let extra = [
            (SHUTTER_CLOSE_HEADER, stamp.as_bytes()),
            (READOUT_END_HEADER, stamp.as_bytes()),
        ];
        for a in detectors.iter().flat_map(|d| &d.1) {
            let key = a.dia_source_id.to_string();
            let headers = crate::producer::kafka::alert_headers(stamp.as_bytes(), &extra);
            let mut record = FutureRecord::<[u8], [u8]>::to(topic)
                .key(key.as_bytes())
                .payload(&a.framed[..])
                .headers(headers);
            loop {
                match producer.send_result(record) {
                    Ok(fut) => {
                        pending.push_back((a.framed.len(), fut));
                        break;
                    }
                    Err((_, r)) => {
                        record = r;
                        match pending.pop_front() {
                            Some((n, fut)) => {
                                settle(&mut f, n, fut.await)?;
                            }
                            None => tokio::time::sleep(Duration::from_millis(1)).await,
                        }
                    }
                }
            }
        }
        for (n, fut) in pending {
            settle(&mut f, n, fut.await)?;
        }
        f.seconds = started.elapsed().as_secs_f64();
        Ok(f)
    }

    fn settle(
        f: &mut ProduceFigures,
        n: usize,
        r: Result<
            rdkafka::producer::future_producer::OwnedDeliveryResult,
            futures::channel::oneshot::Canceled,
        >,
    ) -> Result<(), ProduceError> {
        match r {
            Ok(Ok(_)) => {
                f.alerts += 1;
                f.bytes += n as u64;
                Ok(())
            }
            Ok(Err((e, _))) => Err(ProduceError::Config(format!("baseline delivery: {e}"))),
            Err(_) => Err(ProduceError::Config("baseline producer dropped".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialise_counts_every_alert_and_byte() {
        let inputs = crate::synth::alert_inputs(42, 3);
        let mut enc = crate::packet::AlertEncoder::new();
        let sizes: Vec<usize> = inputs
            .iter()
            .map(|a| enc.to_framed(a).unwrap().len())
            .collect();
        let mut ticks = 0;
        let f = serialise(&inputs, 2001, |k| ticks += k).unwrap();
        assert_eq!(f.alerts, 2001);
        assert_eq!(ticks, 2000);
        // 667 rounds of the three.
        assert_eq!(f.bytes, 667 * sizes.iter().sum::<usize>());
        assert!(f.wall_seconds > 0.0);
        if let Some(c) = f.cpu_seconds {
            assert!(c > 0.0);
        }
    }

    #[test]
    fn packet_alerts_deal_real_packets_that_packet_input_finds_again() {
        let inputs = crate::synth::alert_inputs(42, 3);
        let dealt = packet_alerts(&inputs, 10, 4).unwrap();
        assert_eq!(dealt.len(), 4);
        let mut enc = crate::packet::AlertEncoder::new();
        let mut ids = std::collections::BTreeSet::new();
        for (d, (_, alerts)) in dealt.iter().enumerate() {
            // 10 alerts over 4 detectors: 3, 3, 2, 2.
            assert_eq!(alerts.len(), if d < 2 { 3 } else { 2 });
            for (k, a) in alerts.iter().enumerate() {
                let want = enc.to_framed(&inputs[packet_input(d, k, 4, 3)]).unwrap();
                assert_eq!(&a.framed[..], &want[..], "detector {d} alert {k}");
                assert!(ids.insert(a.dia_source_id), "keys are unique");
            }
        }
        assert!(
            packet_alerts(&[], 10, 4)
                .unwrap()
                .iter()
                .all(|d| d.1.is_empty())
        );
    }

    #[test]
    fn synthetic_alerts_have_the_asked_size_unique_ids_and_differ_from_their_neighbours() {
        let d = synthetic_alerts(1000, 4096, 7, 16, 42);
        assert_eq!(d.len(), 7);
        let all: Vec<&FramedAlert> = d.iter().flat_map(|x| &x.1).collect();
        assert_eq!(all.len(), 1000);
        let ids: std::collections::HashSet<i64> = all.iter().map(|a| a.dia_source_id).collect();
        assert_eq!(ids.len(), 1000);
        for a in &all {
            assert!(a.framed.len() > 4096 - 8 && a.framed.len() <= 4096);
            assert_eq!(crate::wire::unframe(&a.framed).unwrap().0, 1100);
        }
        for w in d[0].1.windows(2) {
            assert_ne!(w[0].framed, w[1].framed);
        }
        // Same seed, same bytes.
        assert_eq!(
            synthetic_alerts(10, 256, 1, 4, 42)[0].1,
            synthetic_alerts(10, 256, 1, 4, 42)[0].1
        );
    }
}
