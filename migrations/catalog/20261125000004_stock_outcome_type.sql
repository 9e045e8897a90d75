-- What applying one order event did, as ONE type: the processed_events column, the
-- apply_order_events function and the consumer (catalog_consumer::stock::Outcome) all use it, so
-- an outcome none of them knows is refused by the database itself.
create type stock_outcome as enum ('applied', 'duplicate', 'insufficient_stock', 'unknown_product');

-- One order event as apply_order_events takes it: a record instead of six parallel arrays.
create type order_event as (
    event_id        uuid,
    order_id        uuid,
    product_id      text,
    quantity        integer,
    kafka_partition integer,
    kafka_offset    bigint
);

-- Its signature and result type change; the new one is created below.
drop function apply_order_events(uuid[], uuid[], text[], integer[], integer[], bigint[]);

-- The text check goes with the text type (rewrites the table once, with its indexes).
alter table processed_events drop constraint processed_events_outcome_check;
alter table processed_events
    alter column outcome type stock_outcome using outcome::stock_outcome;
-- Only the first delivery of an event writes its row, so a row is never a duplicate.
alter table processed_events
    add constraint processed_events_outcome_check check (outcome <> 'duplicate');

-- Applies a batch of order events in the order given (the order of their partition), in the
-- caller's transaction, and returns each event's outcome. The event id is inserted first
-- (`on conflict do nothing`), so two consumers racing on one event serialise on its key and
-- only the first decrements; the stock update is guarded by `stock >= quantity`, so stock never
-- goes below zero, and a later smaller event may still apply after one that did not fit.
create function apply_order_events(p_events order_event[])
    returns table (event_id uuid, outcome stock_outcome)
language plpgsql
as $$
declare
    e order_event;
    v_outcome stock_outcome;
begin
    foreach e in array coalesce(p_events, '{}') loop
        insert into processed_events
            (event_id, order_id, product_id, quantity, outcome, kafka_partition, kafka_offset)
        values
            (e.event_id, e.order_id, e.product_id, e.quantity, 'applied', e.kafka_partition,
             e.kafka_offset)
        on conflict on constraint processed_events_pkey do nothing;

        if not found then
            v_outcome := 'duplicate';
        else
            update products as p
               set stock = p.stock - e.quantity, updated_at = now()
             where p.product_id = e.product_id and p.stock >= e.quantity;

            if found then
                v_outcome := 'applied';
            else
                if exists (select 1 from products as p where p.product_id = e.product_id) then
                    v_outcome := 'insufficient_stock';
                else
                    v_outcome := 'unknown_product';
                end if;
                update processed_events as pe set outcome = v_outcome
                 where pe.event_id = e.event_id;
            end if;
        end if;

        event_id := e.event_id;
        outcome := v_outcome;
        return next;
    end loop;
end;
$$;
