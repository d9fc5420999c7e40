//! The wire contract against published vectors and the query language's dialects.
//!
//! One integration test binary for the crate (`autotests = false`): the modules share one
//! build and one link.

mod dialect;
mod query;
mod query_props;
mod sas_vectors;
