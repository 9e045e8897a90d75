with gate as (
    insert into idempotency_keys (idempotency_key, request, order_id)
    select $9, $10, $1 where $9::text is not null
    on conflict (idempotency_key) do nothing
    returning order_id
), new_order as (
    insert into orders (order_id, user_id, product_id, quantity, unit_price, total_price, created_at)
    select $1, $2, $3, $4, $5, $6, $7
    where $9::text is null or exists (select 1 from gate)
    returning order_id
), new_event as (
    insert into outbox (event_id, topic, partition_key, event_type, source, subject, payload, traceparent, tracestate, created_at)
    select $8, $11, $3, $12, $13, order_id::text, $14, $15, $16, $7 from new_order
    returning id
)
select count(*) as "inserted!" from new_event
