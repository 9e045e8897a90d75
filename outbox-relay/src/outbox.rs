//! The outbox row: its states, every transition between them, and the queries that read them.
//! Nothing else in the relay writes SQL against the `outbox` table.
//!
//! A row is `pending` (due, or waiting for its retry at `next_attempt_at`), `dead` (it failed its
//! maximum attempts) or `parked` (held behind a dead row of its key); a published row is deleted.
//! A row that is retrying, dead or parked holds back the later rows of its key: that rule is
//! defined once, in SQL, as the view `outbox_blocking` (migration 20261125000004), whose
//! condition is the predicate of the partial index that serves it.
//!
//! - [`claim`]: lane locks, claiming due rows in id order, deleting published rows.
//! - [`failures`]: counting an attempt (with backoff), making a row dead and parking the later
//!   rows of its key.
//! - [`requeue`]: dead and parked rows back to pending, in order.
//! - [`status`]: the counts `status` prints and the dead rows `dead` lists.

pub mod claim;
pub mod failures;
pub mod requeue;
pub mod status;

pub use claim::{ClaimedRow, LANE_LOCK_NAMESPACE};
pub use failures::{Recorded, RetryPolicy};
pub use requeue::{Requeue, RequeueError, Requeued};
pub use status::{DeadRow, Status};
