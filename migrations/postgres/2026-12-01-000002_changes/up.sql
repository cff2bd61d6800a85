-- The change feed: one row per committed change of any resource, numbered
-- per tenant. A tenant's counter row is taken (and so locked) by each writing
-- transaction just before it appends its changes and held to its commit, so
-- a tenant's sequences are handed out in commit order: sequence order is the
-- order in which changes become visible. Tenants never wait for each other.
CREATE TABLE change_sequences (
    tenant_id      TEXT   NOT NULL PRIMARY KEY,
    -- The last sequence handed out.
    last_sequence  BIGINT NOT NULL,
    -- Every change up to this sequence has been purged (retention).
    purged_through BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE changes (
    tenant_id     TEXT    NOT NULL,
    sequence      BIGINT  NOT NULL,
    resource_type INTEGER NOT NULL,
    resource_id   TEXT    NOT NULL,
    kind          INTEGER NOT NULL,
    revision      BIGINT  NOT NULL,
    actor         TEXT    NOT NULL,
    request_id    TEXT,
    time          BIGINT  NOT NULL,
    -- [{"field": …, "old_value": …, "new_value": …}]
    diff          JSONB   NOT NULL,
    -- The resource after the change, protobuf-encoded (none for PURGED).
    resource      BYTEA,
    PRIMARY KEY (tenant_id, sequence)
);

CREATE INDEX changes_time_idx ON changes (time);
