//! The store: records and their indexes, the outbox, inbound outcomes, suppressions, timers.
//! `embedded` is the sled backend, the embedded default and the only module that knows sled's
//! key layout. The rest of the crate sees the names re-exported here.

mod embedded;

pub use embedded::*;
