//! Integration tests of apflow-replay: one binary (see CONVENTIONS.md).

mod fixture;
mod fresh;
#[cfg(feature = "kafka")]
mod kafka;
mod night;
mod player;
mod report;
