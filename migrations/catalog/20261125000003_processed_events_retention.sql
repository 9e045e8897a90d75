-- Retention: catalog-consumer deletes processed_events rows older than PROCESSED_EVENTS_RETENTION,
-- oldest first, in bounded batches; this index serves that delete.
create index processed_events_processed_at_idx on processed_events (processed_at);
