//! Observable events: one struct per thing that happens, whose `emit()` logs it and
//! counts it in one place (vector's `internal_events`).

use crate::events::DeadLetter;

use super::metrics;

/// An input was sent to the dead-letter topic.
#[derive(Debug)]
pub struct DeadLettered<'a> {
    /// The record that was published.
    pub letter: &'a DeadLetter,
}

impl DeadLettered<'_> {
    /// Logs and counts.
    pub fn emit(&self) {
        let l = self.letter;
        tracing::warn!(
            stage = %l.stage,
            reason = %l.reason,
            class = l.class.as_str(),
            visit = l.visit.map(|v| v.0),
            detector = l.detector.map(|d| d.0),
            detail = %l.detail,
            "Input dead-lettered."
        );
        metrics::DEAD_LETTERS_TOTAL
            .with_label_values(&[&l.stage, &l.reason])
            .inc();
    }
}

/// A stage finished its work on one detector.
#[derive(Debug)]
pub struct StageFinished<'a> {
    /// Stage name.
    pub stage: &'a str,
    /// Seconds spent in it.
    pub seconds: f64,
    /// Seconds since end of readout when it finished, if known.
    pub since_readout: Option<f64>,
}

impl StageFinished<'_> {
    /// Counts (logging per detector happens in the stage's own span).
    pub fn emit(&self) {
        metrics::STAGE_SECONDS
            .with_label_values(&[self.stage])
            .observe(self.seconds);
        if let Some(s) = self.since_readout {
            metrics::LATENCY_SINCE_READOUT_SECONDS
                .with_label_values(&[self.stage])
                .observe(s);
        }
    }
}
