-- Messages that could not be understood AND that the dead-letter topic itself refused (too large
-- for it, with the dlq_* headers added, say). Kept here, byte for byte, so that one such message
-- neither stalls its partition nor is lost. Written in the same transaction as the batch's other
-- effects; one row per source position, so a retried batch writes it once.
create table dead_letters (
    id               bigint generated always as identity primary key,
    source_topic     text not null,
    source_partition integer not null,
    source_offset    bigint not null,
    message_key      bytea,
    message_value    bytea,
    header_keys      text[] not null,
    header_values    bytea[] not null,
    reason           text not null,
    error            text not null,
    refused_because  text not null,
    created_at       timestamptz not null default now(),
    unique (source_topic, source_partition, source_offset)
);
