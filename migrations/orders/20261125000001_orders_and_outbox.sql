-- The orders database: orders, their idempotency keys, and the transactional outbox.

create table orders (
    order_id    uuid primary key,
    user_id     text not null,
    product_id  text not null,
    quantity    integer not null check (quantity > 0),
    unit_price  bigint not null check (unit_price >= 0),
    total_price bigint not null check (total_price = quantity * unit_price),
    status      text not null default 'PLACED',
    created_at  timestamptz not null default now()
);

create index orders_user_id_created_at_idx on orders (user_id, created_at desc, order_id desc);

-- A retried POST with the same key and the same request returns the same order.
create table idempotency_keys (
    idempotency_key text primary key,
    request         jsonb not null,
    order_id        uuid not null references orders (order_id) deferrable initially deferred,
    created_at      timestamptz not null default now()
);

-- One row per event to publish. Rows are read by state, never by "id greater than the last
-- seen", so a transaction that commits late is never skipped. Published rows are deleted.
create table outbox (
    id              bigint generated always as identity primary key,
    event_id        uuid not null unique,
    topic           text not null,
    partition_key   text not null,
    -- Rows of one key share a lane; a relay works a lane only while it holds the lane's
    -- advisory lock, so per-key order holds with several relays.
    lane            smallint not null generated always as ((hashtext(partition_key) & 63)::smallint) stored,
    event_type      text not null,
    source          text not null,
    subject         text not null,
    payload         jsonb not null,
    traceparent     text,
    state           text not null default 'pending' check (state in ('pending', 'dead', 'parked')),
    attempts        integer not null default 0,
    next_attempt_at timestamptz not null default now(),
    last_error      text,
    created_at      timestamptz not null default now()
);

create index outbox_pending_lane_id_idx on outbox (lane, id) where state = 'pending';

-- Rows that hold back later rows of their key: retrying (attempts > 0), dead or parked.
create index outbox_blocking_key_id_idx on outbox (partition_key, id)
    where state <> 'pending' or attempts > 0;
