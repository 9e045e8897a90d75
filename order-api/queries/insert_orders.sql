with input as (
    select *
      from unnest($1::uuid[], $2::text[], $3::text[], $4::int[], $5::bigint[], $6::bigint[],
                  $7::timestamptz[], $8::uuid[], $9::text[], $10::jsonb[], $11::jsonb[],
                  $12::text[], $13::text[])
           as i(order_id, user_id, product_id, quantity, unit_price, total_price, created_at,
                event_id, idempotency_key, request, payload, traceparent, tracestate)
), gate as (
    insert into idempotency_keys (idempotency_key, request, order_id)
    select idempotency_key, request, order_id
      from input
     where idempotency_key is not null
    on conflict (idempotency_key) do nothing
    returning order_id
), new_order as (
    insert into orders (order_id, user_id, product_id, quantity, unit_price, total_price, created_at)
    select order_id, user_id, product_id, quantity, unit_price, total_price, created_at
      from input
     where idempotency_key is null or order_id in (select order_id from gate)
    returning order_id
), new_event as (
    insert into outbox (event_id, topic, partition_key, event_type, source, subject, payload, traceparent, tracestate, created_at)
    select event_id, $14, product_id, $15, $16, order_id::text, payload, traceparent, tracestate, created_at
      from input
     where order_id in (select order_id from new_order)
    returning id
)
select order_id as "order_id!" from new_order
