//! Dev-only: system tests that run the services as real processes. Everything lives under
//! `tests/`; this library is empty so that Cargo has a target to hang them on.
//!
//! Run with `cargo build --workspace --bins` first: the tests start the binaries built next
//! to them and never build anything themselves.
