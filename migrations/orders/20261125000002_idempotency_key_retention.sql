-- Retention: order-api deletes idempotency keys older than IDEMPOTENCY_KEY_RETENTION, oldest
-- first, in bounded batches; this index serves that delete.
create index idempotency_keys_created_at_idx on idempotency_keys (created_at);
