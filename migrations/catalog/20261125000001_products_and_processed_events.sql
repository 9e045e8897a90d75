-- The catalog database: products and the record of every order event applied to them.

create table products (
    product_id   text primary key,
    product_name text not null,
    stock        integer not null check (stock >= 0),
    unit_price   bigint not null check (unit_price >= 0),
    created_at   timestamptz not null default now(),
    updated_at   timestamptz not null default now()
);

-- One row per event id ever processed: a redelivered event finds its row and changes nothing.
create table processed_events (
    event_id     uuid primary key,
    order_id     uuid not null,
    product_id   text not null,
    quantity     integer not null,
    outcome      text not null check (outcome in ('applied', 'insufficient_stock', 'unknown_product')),
    kafka_partition integer not null,
    kafka_offset bigint not null,
    processed_at timestamptz not null default now()
);

-- Applies a batch of order events in the order given (the order of their partition), in the
-- caller's transaction, and returns each event's outcome. The event id is inserted first
-- (`on conflict do nothing`), so two consumers racing on one event serialise on its key and
-- only the first decrements; the stock update is guarded by `stock >= quantity`, so stock never
-- goes below zero.
create function apply_order_events(
    p_event_ids  uuid[],
    p_order_ids  uuid[],
    p_product_ids text[],
    p_quantities integer[],
    p_partitions integer[],
    p_offsets    bigint[]
) returns table (event_id uuid, outcome text)
language plpgsql
as $$
declare
    i integer;
    v_outcome text;
begin
    for i in 1 .. coalesce(array_length(p_event_ids, 1), 0) loop
        insert into processed_events as pe
            (event_id, order_id, product_id, quantity, outcome, kafka_partition, kafka_offset)
        values
            (p_event_ids[i], p_order_ids[i], p_product_ids[i], p_quantities[i], 'applied',
             p_partitions[i], p_offsets[i])
        on conflict on constraint processed_events_pkey do nothing;

        if not found then
            event_id := p_event_ids[i];
            outcome := 'duplicate';
            return next;
            continue;
        end if;

        update products
           set stock = stock - p_quantities[i], updated_at = now()
         where product_id = p_product_ids[i] and stock >= p_quantities[i];

        if found then
            v_outcome := 'applied';
        else
            if exists (select 1 from products where product_id = p_product_ids[i]) then
                v_outcome := 'insufficient_stock';
            else
                v_outcome := 'unknown_product';
            end if;
            update processed_events as pe set outcome = v_outcome where pe.event_id = p_event_ids[i];
        end if;

        event_id := p_event_ids[i];
        outcome := v_outcome;
        return next;
    end loop;
end;
$$;
