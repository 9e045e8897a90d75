-- The one definition of a row that holds back the later rows of its key: retrying
-- (attempts > 0), dead or parked. Every query that asks "is this key blocked?" reads this view.
-- Its condition is the predicate of the partial index outbox_blocking_key_id_idx
-- (20261125000001): the planner inlines the view, sees the predicate and serves the query from
-- that small index. The two must stay equal (a relay test compares them).
create view outbox_blocking as
    select id, event_id, partition_key, lane, state, attempts, next_attempt_at, last_error,
           created_at
      from outbox
     where state <> 'pending' or attempts > 0;
