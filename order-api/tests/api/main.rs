//! order-api integration tests: one binary, each test against a fresh database of its own.

mod bad_requests;
mod batching;
mod cli;
mod helpers;
mod long_run;
mod orders;
