-- Contacts and the request ids that make creates idempotent.
-- Every key leads with tenant_id so the schema can be distributed by tenant
-- (Citus: SELECT create_distributed_table('contacts', 'tenant_id')).
-- Times are microseconds since the Unix epoch (UTC), the same on both backends.

CREATE TABLE contacts (
    tenant_id     TEXT    NOT NULL,
    id            TEXT    NOT NULL,
    display_name  TEXT    NOT NULL,
    given_name    TEXT    NOT NULL DEFAULT '',
    family_name   TEXT    NOT NULL DEFAULT '',
    organization  TEXT    NOT NULL DEFAULT '',
    job_title     TEXT    NOT NULL DEFAULT '',
    emails        TEXT    NOT NULL DEFAULT '[]',
    phones        TEXT    NOT NULL DEFAULT '[]',
    external_id   TEXT,
    notes_format  INTEGER NOT NULL DEFAULT 0,
    notes_raw     TEXT    NOT NULL DEFAULT '',
    notes_html    TEXT    NOT NULL DEFAULT '',
    custom_fields TEXT    NOT NULL DEFAULT '{}',
    revision      INTEGER NOT NULL,
    create_time   INTEGER NOT NULL,
    update_time   INTEGER NOT NULL,
    delete_time   INTEGER,
    purge_time    INTEGER,
    created_by    TEXT    NOT NULL,
    updated_by    TEXT    NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

CREATE UNIQUE INDEX contacts_external_id_key
    ON contacts (tenant_id, external_id)
    WHERE delete_time IS NULL AND external_id IS NOT NULL;

CREATE INDEX contacts_purge_time_idx ON contacts (purge_time) WHERE purge_time IS NOT NULL;

-- Keyset pagination: one index per order a caller can ask for, each ending
-- in id (the tie-breaker), so page N costs what page 1 costs.
CREATE INDEX contacts_display_name_idx ON contacts (tenant_id, display_name, id);
CREATE INDEX contacts_organization_idx ON contacts (tenant_id, organization, id);
CREATE INDEX contacts_create_time_idx ON contacts (tenant_id, create_time, id);
CREATE INDEX contacts_update_time_idx ON contacts (tenant_id, update_time, id);

CREATE TABLE request_ids (
    tenant_id    TEXT   NOT NULL,
    request_id   TEXT   NOT NULL,
    operation    TEXT   NOT NULL,
    request_hash TEXT   NOT NULL,
    resource_id  TEXT   NOT NULL,
    create_time  INTEGERNOT NULL,
    PRIMARY KEY (tenant_id, request_id)
);

CREATE INDEX request_ids_create_time_idx ON request_ids (create_time);
