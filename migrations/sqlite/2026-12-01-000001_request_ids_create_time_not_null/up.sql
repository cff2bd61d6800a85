-- The first migration declared request_ids.create_time as `INTEGERNOT NULL`,
-- which SQLite reads as a nullable column of the type "INTEGERNOT". SQLite
-- cannot change a column, so the table is rebuilt with the intended type.
CREATE TABLE request_ids_rebuilt (
    tenant_id    TEXT    NOT NULL,
    request_id   TEXT    NOT NULL,
    operation    TEXT    NOT NULL,
    request_hash TEXT    NOT NULL,
    resource_id  TEXT    NOT NULL,
    create_time  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, request_id)
);

INSERT INTO request_ids_rebuilt (tenant_id, request_id, operation, request_hash, resource_id, create_time)
    SELECT tenant_id, request_id, operation, request_hash, resource_id, create_time
    FROM request_ids WHERE create_time IS NOT NULL;

DROP TABLE request_ids;
ALTER TABLE request_ids_rebuilt RENAME TO request_ids;
CREATE INDEX request_ids_create_time_idx ON request_ids (create_time);
