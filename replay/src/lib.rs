//! Replays of archived alert nights, and the night report.
//!
//! A replay reads every framed alert of one night from the alert archive's nightly
//! Avro container files ([`night`]), gives each visit and each detector's burst of
//! alerts a send time ([`schedule`]), optionally gives every alert fresh ids
//! ([`fresh`]), and sends the bursts to a sink — an archive-like directory or a Kafka
//! topic ([`sink`]) — at those times on a clock ([`clock`], [`player`]).
//!
//! # What it models
//! * **Rubin's alert stream simulator** (`lsst-dm/alert_stream`, DMTN-028): a
//!   rehearsal stream publishes one visit's alerts every ~37 s (a 30 s visit plus
//!   readout and slew), all of a visit's alerts at once — in practice a burst per
//!   detector as each detector's processing finishes. [`schedule::Pacing::Cadence`]
//!   reproduces that; [`schedule::Pacing::Original`] keeps the original night's
//!   inter-visit spacing (from the DiaSources' `midpointMjdTai`) divided by a speed
//!   factor, and [`schedule::Pacing::Max`] sends as fast as the sink takes them.
//! * **Fresh ids**: community brokers complained that Rubin's stream rehearsals reused
//!   visit ids, so a rehearsal could be mistaken for (and deduplicated against) real
//!   data. A replay with fresh ids remaps every DiaSource, DiaObject and forced-source
//!   id into a replay generation of apflow's id layout (`apflow_core::ids`), which no
//!   live id can ever carry. (Visit numbers themselves are kept: see [`fresh`].)
//!
//! The night report ([`report`]) summarises a night from the archive (alerts per visit
//! and per detector) and, when given per-detector records ([`report::DetectorRecord`],
//! JSON Lines), the alert latency against Rubin's 60 s budget (the Science
//! Requirements Document, LPM-17: OTT1 = 1 minute) and the per-stage times, with PNG
//! plots and a JSON summary.

#![forbid(unsafe_code)]

pub mod clock;
pub mod fresh;
pub mod night;
pub mod player;
pub mod report;
pub mod schedule;
pub mod sink;
