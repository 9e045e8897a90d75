-- W3C `tracestate` of the order's request, carried to the event with its `traceparent`.
alter table outbox add column tracestate text;
