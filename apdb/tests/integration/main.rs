//! Integration tests of `apflow-apdb` (one binary): the contract suite, run on every
//! available backend, and the schema drift check against `lsst.v11_0`.

mod avro_drift;
mod contract;
mod sqlite_only;
