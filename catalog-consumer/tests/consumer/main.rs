//! Integration tests of catalog-consumer against the real PostgreSQL and the real broker. Each
//! test has its own database, topics and consumer group, so they run in parallel.

mod helpers;

mod audit;
mod catalog_http;
mod database_outage;
mod dead_letters;
mod duplicates;
mod lanes;
mod oversell;
mod process;
mod rebalance;
mod retention;
mod stalls;
mod stock_rule;
