//! Keys this relay does not claim for now, so none of their rows overtakes an earlier one.
//!
//! Guarantees kept here:
//! - A message still without a delivery report when its batch ends keeps its key held (never
//!   claimed by this relay) until the report arrives, so a later row of the key can never
//!   overtake it; an acknowledged one is deleted then, unless an earlier unresolved row of its
//!   key was not acknowledged (the per-key rule of [`publish::settle`]).
//! - Keys whose partition was unavailable when last claimed are held until it is back (see
//!   [`crate::partitions`]). Every other key keeps flowing.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
};

use futures::FutureExt;
use rdkafka::producer::DeliveryFuture;

use crate::{
    outbox::ClaimedRow,
    partitions::{PartitionHealth, Route},
    publish::{self, Delivery},
};

/// A published row whose delivery report had not arrived when its batch ended.
struct Unresolved {
    id: i64,
    topic: String,
    key: String,
    future: DeliveryFuture,
}

#[derive(Default)]
struct Held {
    /// Deliveries still awaited; their keys are held until each report arrives.
    unresolved: Vec<Unresolved>,
    /// Key → (topic, partition) of keys whose partition was unavailable when last claimed.
    waiting: HashMap<String, (String, i32)>,
}

/// The held keys, shared by the relay's steps.
#[derive(Default)]
pub(super) struct HeldKeys {
    held: Mutex<Held>,
}

/// What [`HeldKeys::resolve`] found.
pub(super) struct Resolved {
    /// Rows acknowledged since the last step, to delete now.
    pub acked: Vec<i64>,
    /// Keys still held (unresolved deliveries, unavailable partitions), sorted.
    pub keys: Vec<String>,
}

impl HeldKeys {
    /// Collects the delivery reports that arrived since the last step, and forgets the waiting
    /// keys whose partition is available again.
    pub(super) fn resolve(&self, partitions: &PartitionHealth) -> Resolved {
        let mut held = self.held.lock().expect("held lock");
        let mut acked = Vec::new();
        let mut still = Vec::with_capacity(held.unresolved.len());
        let mut broken: HashSet<String> = HashSet::new();
        for mut entry in std::mem::take(&mut held.unresolved) {
            let earlier_all_acked = !broken.contains(&entry.key);
            match (&mut entry.future).now_or_never() {
                None => {
                    broken.insert(entry.key.clone());
                    still.push(entry);
                }
                Some(report) => match publish::delivery_of(report) {
                    Delivery::Acked(_) if earlier_all_acked => acked.push(entry.id),
                    Delivery::Acked(_) => {
                        tracing::debug!(
                            id = entry.id,
                            "acknowledged behind an unacknowledged row of its key; kept"
                        );
                    }
                    // Still pending in the table, and the key is free again: claimed and sent
                    // again, in order, by the next step that finds its partition available.
                    other => {
                        broken.insert(entry.key.clone());
                        tracing::debug!(id = entry.id, ?other, "late delivery failed");
                        if let Some(p) = partitions.partition(&entry.topic, &entry.key) {
                            partitions.suspect(&entry.topic, p);
                        }
                    }
                },
            }
        }
        held.unresolved = still;
        held.waiting
            .retain(|_, (topic, partition)| !partitions.is_available(topic, *partition));
        let mut keys: Vec<String> = held.waiting.keys().cloned().collect();
        keys.extend(held.unresolved.iter().map(|u| u.key.clone()));
        keys.sort();
        keys.dedup();
        Resolved { acked, keys }
    }

    /// The keys of `rows` whose partition is unavailable now (by `routes`, one per row); they
    /// are held until it is back.
    pub(super) fn hold_unavailable<'r>(
        &self,
        rows: &'r [ClaimedRow],
        routes: &[Option<Route>],
    ) -> HashSet<&'r str> {
        let mut waiting = HashSet::new();
        let unavailable = rows
            .iter()
            .zip(routes)
            .filter_map(|(row, route)| route.filter(|route| !route.available).map(|r| (row, r)));
        let mut held = None;
        for (row, route) in unavailable {
            waiting.insert(row.partition_key.as_str());
            held.get_or_insert_with(|| self.held.lock().expect("held lock"))
                .waiting
                .insert(
                    row.partition_key.clone(),
                    (row.topic.clone(), route.partition),
                );
        }
        waiting
    }

    /// Holds the keys of the rows (by index in `rows`) whose delivery reports are still to come.
    pub(super) fn hold_unresolved(
        &self,
        rows: &[ClaimedRow],
        unresolved: Vec<(usize, DeliveryFuture)>,
    ) {
        if unresolved.is_empty() {
            return;
        }
        let mut held = self.held.lock().expect("held lock");
        for (index, future) in unresolved {
            let row = &rows[index];
            held.unresolved.push(Unresolved {
                id: row.id,
                topic: row.topic.clone(),
                key: row.partition_key.clone(),
                future,
            });
        }
    }
}
