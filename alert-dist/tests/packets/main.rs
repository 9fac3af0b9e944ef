//! alert-dist integration tests for alert packets (part A: schema, cutouts, packets).

mod avro_compat;
mod fits_readback;
mod policy;
mod schema_drift;
