-- Tasks are activities of type 'task': these columns hold what a task has
-- beyond its activity (NULL or empty on every other activity), and the
-- tenants' task categories.

ALTER TABLE activities ADD COLUMN category_id TEXT;
ALTER TABLE activities ADD COLUMN contact_id TEXT;
ALTER TABLE activities ADD COLUMN notify_responsible BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE activities ADD COLUMN alert_minutes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE activities ADD COLUMN time_zone TEXT NOT NULL DEFAULT '';
-- An RFC 5545 RRULE; its DTSTART is recurrence_start (the first deadline).
ALTER TABLE activities ADD COLUMN recurrence TEXT NOT NULL DEFAULT '';
ALTER TABLE activities ADD COLUMN recurrence_origin_id TEXT;
ALTER TABLE activities ADD COLUMN recurrence_start BIGINT;
-- The next occurrence, once completing this one created it.
ALTER TABLE activities ADD COLUMN successor_id TEXT;
ALTER TABLE activities ADD COLUMN completed_time BIGINT;
ALTER TABLE activities ADD COLUMN completed_by TEXT NOT NULL DEFAULT '';
-- The reminder time that last fired, and the one armed (derived from the
-- fields on every write; NULL when none is due to fire).
ALTER TABLE activities ADD COLUMN reminded_for BIGINT;
ALTER TABLE activities ADD COLUMN reminder_at BIGINT;

CREATE INDEX activities_category_idx ON activities (tenant_id, category_id) WHERE category_id IS NOT NULL;
CREATE INDEX activities_contact_idx ON activities (tenant_id, contact_id) WHERE contact_id IS NOT NULL;
-- The reminder scheduler's queue: the next due reminder of every tenant.
CREATE INDEX activities_reminder_idx ON activities (reminder_at) WHERE reminder_at IS NOT NULL;

CREATE TABLE task_categories (
    tenant_id    TEXT    NOT NULL,
    id           TEXT    NOT NULL,
    title        TEXT    NOT NULL,
    -- The title as uniqueness compares it: lower-cased by the server
    -- (Unicode-aware, the same on both backends, whatever the locale).
    title_key    TEXT    NOT NULL,
    description  TEXT    NOT NULL DEFAULT '',
    image_url    TEXT    NOT NULL DEFAULT '',
    sort_order   INTEGER NOT NULL DEFAULT 0,
    revision     BIGINT  NOT NULL,
    create_time  BIGINT  NOT NULL,
    update_time  BIGINT  NOT NULL,
    delete_time  BIGINT,
    purge_time   BIGINT,
    created_by   TEXT    NOT NULL,
    updated_by   TEXT    NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

CREATE UNIQUE INDEX task_categories_title_key ON task_categories (tenant_id, title_key) WHERE delete_time IS NULL;
CREATE INDEX task_categories_sort_order_idx ON task_categories (tenant_id, sort_order, id);
CREATE INDEX task_categories_purge_time_idx ON task_categories (purge_time) WHERE purge_time IS NOT NULL;
