//! Integration tests of highwater-cloud: the local and in-memory stores,
//! the testkit conformance suite on every store (local, in-memory, S3 on
//! moto's server, Azure on azurite), two writers racing to commit one
//! checkpoint id, a private S3 server killed mid-upload, and URL parsing.
//!
//! The shared servers come from `cargo xtask services start` (or `cargo
//! xtask test`, which starts them): the tests read `HIGHWATER_S3_URL` and
//! `HIGHWATER_AZURE_URL` plus the usual `AWS_*` and `AZURE_*`/
//! `AZURITE_BLOB_STORAGE_URL` variables, and fail loudly when they are
//! missing. Every test works under its own unique prefix, so tests run in
//! parallel against the same servers.

mod tests {
    pub mod common;

    mod conformance;
    mod fault;
    mod local;
    mod multipart;
    mod permanent;
    mod race;
    mod url;
}
