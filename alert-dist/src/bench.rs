//! The produce part of `apflow bench alerts`: pre-serialised alerts of realistic size
//! put on the wire by [`crate::producer::AlertProducer`], against the same bytes sent
//! by the plainest rdkafka loop (the time the broker needs to accept them).
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
    let detectors = detectors.max(1);
    let mut out: Vec<(DetectorId, Vec<FramedAlert>)> = (0..detectors)
        .map(|d| (DetectorId(d), Vec::new()))
        .collect();
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
    use crate::producer::{
        AlertProducer, DetectorAlerts, FramedAlert, ProduceError, ProducerConfig,
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
    /// first (not timed).
    pub async fn produce_all(
        brokers: &str,
        kafka: &KafkaConfig,
        config: &ProducerConfig,
        detectors: &[(DetectorId, Vec<FramedAlert>)],
    ) -> Result<ProduceFigures, ProduceError> {
        let ledger = Arc::new(Ledger::in_memory()?);
        let producer = AlertProducer::new(brokers, kafka, config, 11, ledger)?;
        producer.ensure_topic().await?;
        let visit = super::bench_visit();
        let shutter_close = chrono::Utc::now();
        let started = Instant::now();
        let reports = futures::future::join_all(detectors.iter().map(|(d, alerts)| {
            producer.send_detector(DetectorAlerts {
                visit,
                detector: *d,
                shutter_close,
                readout_end: shutter_close,
                alerts,
            })
        }))
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

    /// The same bytes through a bare `FutureProducer` with the producer's own client
    /// settings: no key formatting, headers, ledger or metrics — the floor set by
    /// librdkafka and the broker.
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
        let started = Instant::now();
        let mut pending = std::collections::VecDeque::new();
        let mut f = ProduceFigures {
            alerts: 0,
            bytes: 0,
            seconds: 0.0,
        };
        for a in detectors.iter().flat_map(|d| &d.1) {
            let key = a.dia_source_id.to_be_bytes();
            let mut record = FutureRecord::<[u8], [u8]>::to(topic)
                .key(&key[..])
                .payload(&a.framed[..]);
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
