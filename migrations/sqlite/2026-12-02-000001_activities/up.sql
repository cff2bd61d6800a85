-- Activities, their revision journal and the tenants' activity types.
-- Keys lead with tenant_id, times are microseconds since the Unix epoch.

CREATE TABLE activity_types (
    tenant_id       TEXT    NOT NULL,
    -- The type's key, which activities name it by.
    id              TEXT    NOT NULL,
    display_name    TEXT    NOT NULL,
    -- {"de": "Anruf", …}
    localized_names TEXT    NOT NULL DEFAULT '{}',
    sort_order      INTEGER NOT NULL DEFAULT 0,
    system          INTEGER NOT NULL DEFAULT 0,
    revision        INTEGER  NOT NULL,
    create_time     INTEGER  NOT NULL,
    update_time     INTEGER  NOT NULL,
    delete_time     INTEGER,
    purge_time      INTEGER,
    created_by      TEXT    NOT NULL,
    updated_by      TEXT    NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

CREATE INDEX activity_types_sort_order_idx ON activity_types (tenant_id, sort_order, id);
CREATE INDEX activity_types_purge_time_idx ON activity_types (purge_time) WHERE purge_time IS NOT NULL;

CREATE TABLE activities (
    tenant_id         TEXT    NOT NULL,
    id                TEXT    NOT NULL,
    activity_type     TEXT    NOT NULL,
    subject           TEXT    NOT NULL,
    details_format    INTEGER NOT NULL DEFAULT 0,
    details_raw       TEXT    NOT NULL DEFAULT '',
    details_html      TEXT    NOT NULL DEFAULT '',
    status            INTEGER NOT NULL,
    priority          INTEGER NOT NULL,
    occur_time        INTEGER  NOT NULL,
    due_time          INTEGER,
    -- Nanoseconds.
    duration          INTEGER,
    location          TEXT    NOT NULL DEFAULT '',
    phone_number      TEXT    NOT NULL DEFAULT '',
    medium            INTEGER NOT NULL DEFAULT 0,
    parent_id         TEXT,
    source_contact_id TEXT,
    assignee_user_id  TEXT    NOT NULL DEFAULT '',
    assignee_group    TEXT    NOT NULL DEFAULT '',
    -- [{"contact_id": …, "role": …}]
    participants      TEXT    NOT NULL DEFAULT '[]',
    -- [{"type": …, "id": …}]
    related           TEXT    NOT NULL DEFAULT '[]',
    custom_fields     TEXT    NOT NULL DEFAULT '{}',
    is_test           INTEGER NOT NULL DEFAULT 0,
    is_auto           INTEGER NOT NULL DEFAULT 0,
    result            TEXT    NOT NULL DEFAULT '',
    revision          INTEGER  NOT NULL,
    create_time       INTEGER  NOT NULL,
    update_time       INTEGER  NOT NULL,
    delete_time       INTEGER,
    purge_time        INTEGER,
    created_by        TEXT    NOT NULL,
    updated_by        TEXT    NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

CREATE INDEX activities_purge_time_idx ON activities (purge_time) WHERE purge_time IS NOT NULL;
-- Keyset pagination, one index per common order, each ending in id (a
-- B-tree reads backwards as well, so these serve `desc` too).
CREATE INDEX activities_occur_time_idx ON activities (tenant_id, occur_time, id);
CREATE INDEX activities_due_time_idx
    ON activities (tenant_id, COALESCE(due_time, 9223372036854775807), id);
CREATE INDEX activities_create_time_idx ON activities (tenant_id, create_time, id);
CREATE INDEX activities_update_time_idx ON activities (tenant_id, update_time, id);
-- Equality filters, and the IN_USE check of a type.
CREATE INDEX activities_type_idx ON activities (tenant_id, activity_type, occur_time, id);
CREATE INDEX activities_assignee_idx ON activities (tenant_id, assignee_user_id, occur_time, id);
CREATE INDEX activities_parent_idx ON activities (tenant_id, parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX activities_source_contact_idx
    ON activities (tenant_id, source_contact_id) WHERE source_contact_id IS NOT NULL;
-- SQLite has no index over JSON array elements; participants.* and related.*
-- filters read the lookup tables below, which triggers keep in step.

CREATE TABLE activity_revisions (
    tenant_id      TEXT    NOT NULL,
    activity_id    TEXT    NOT NULL,
    revision       INTEGER  NOT NULL,
    -- The RevisionKind number.
    kind           INTEGER NOT NULL,
    actor          TEXT    NOT NULL,
    time           INTEGER  NOT NULL,
    -- The same diff as the change's: [{"field": …, "old_value": …, "new_value": …}]
    diff           TEXT    NOT NULL,
    comment_format INTEGER NOT NULL DEFAULT 0,
    comment_raw    TEXT    NOT NULL DEFAULT '',
    comment_html   TEXT    NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, activity_id, revision)
);

-- The elements of activities' participants and related arrays, one row per
-- (array.key, value) (DISTINCT: one contact may hold several roles): `participants.contact_id = "…"` reads this table
-- through its primary key instead of every activity's JSON.
CREATE TABLE activity_elements (
    tenant_id   TEXT NOT NULL,
    -- 'participants.contact_id', 'participants.role', 'related.type' or 'related.id'
    path        TEXT NOT NULL,
    value       TEXT NOT NULL,
    activity_id TEXT NOT NULL,
    PRIMARY KEY (tenant_id, path, value, activity_id)
) WITHOUT ROWID;

CREATE INDEX activity_elements_activity_idx ON activity_elements (tenant_id, activity_id);

CREATE TRIGGER activity_elements_insert AFTER INSERT ON activities BEGIN
    INSERT INTO activity_elements (tenant_id, path, value, activity_id)
        SELECT DISTINCT NEW.tenant_id, 'participants.' || k.key, CAST(k.value AS TEXT), NEW.id
        FROM json_each(NEW.participants) AS e, json_each(e.value) AS k;
    INSERT INTO activity_elements (tenant_id, path, value, activity_id)
        SELECT DISTINCT NEW.tenant_id, 'related.' || k.key, CAST(k.value AS TEXT), NEW.id
        FROM json_each(NEW.related) AS e, json_each(e.value) AS k;
END;

CREATE TRIGGER activity_elements_update AFTER UPDATE OF participants, related ON activities BEGIN
    DELETE FROM activity_elements WHERE tenant_id = OLD.tenant_id AND activity_id = OLD.id;
    INSERT INTO activity_elements (tenant_id, path, value, activity_id)
        SELECT DISTINCT NEW.tenant_id, 'participants.' || k.key, CAST(k.value AS TEXT), NEW.id
        FROM json_each(NEW.participants) AS e, json_each(e.value) AS k;
    INSERT INTO activity_elements (tenant_id, path, value, activity_id)
        SELECT DISTINCT NEW.tenant_id, 'related.' || k.key, CAST(k.value AS TEXT), NEW.id
        FROM json_each(NEW.related) AS e, json_each(e.value) AS k;
END;

-- A purged activity takes its lookup rows and its journal with it.
CREATE TRIGGER activity_elements_delete AFTER DELETE ON activities BEGIN
    DELETE FROM activity_elements WHERE tenant_id = OLD.tenant_id AND activity_id = OLD.id;
    DELETE FROM activity_revisions WHERE tenant_id = OLD.tenant_id AND activity_id = OLD.id;
END;
