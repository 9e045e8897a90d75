//! Integration tests of outbox-relay against the real PostgreSQL and broker (and librdkafka's
//! mock cluster for a broker outage).

mod blocking;
mod helpers;
mod outage;
mod partitions;
mod process;
mod publishing;
mod retries;
