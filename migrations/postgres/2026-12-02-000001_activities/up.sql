-- Activities, their revision journal and the tenants' activity types.
-- Keys lead with tenant_id, times are microseconds since the Unix epoch.

CREATE TABLE activity_types (
    tenant_id       TEXT    NOT NULL,
    -- The type's key, which activities name it by.
    id              TEXT    NOT NULL,
    display_name    TEXT    NOT NULL,
    -- {"de": "Anruf", …}
    localized_names JSONB   NOT NULL DEFAULT '{}',
    sort_order      INTEGER NOT NULL DEFAULT 0,
    system          BOOLEAN NOT NULL DEFAULT FALSE,
    revision        BIGINT  NOT NULL,
    create_time     BIGINT  NOT NULL,
    update_time     BIGINT  NOT NULL,
    delete_time     BIGINT,
    purge_time      BIGINT,
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
    occur_time        BIGINT  NOT NULL,
    due_time          BIGINT,
    -- Nanoseconds.
    duration          BIGINT,
    location          TEXT    NOT NULL DEFAULT '',
    phone_number      TEXT    NOT NULL DEFAULT '',
    medium            INTEGER NOT NULL DEFAULT 0,
    parent_id         TEXT,
    source_contact_id TEXT,
    assignee_user_id  TEXT    NOT NULL DEFAULT '',
    assignee_group    TEXT    NOT NULL DEFAULT '',
    -- [{"contact_id": …, "role": …}]
    participants      JSONB   NOT NULL DEFAULT '[]',
    -- [{"type": …, "id": …}]
    related           JSONB   NOT NULL DEFAULT '[]',
    custom_fields     JSONB   NOT NULL DEFAULT '{}',
    is_test           BOOLEAN NOT NULL DEFAULT FALSE,
    is_auto           BOOLEAN NOT NULL DEFAULT FALSE,
    result            TEXT    NOT NULL DEFAULT '',
    revision          BIGINT  NOT NULL,
    create_time       BIGINT  NOT NULL,
    update_time       BIGINT  NOT NULL,
    delete_time       BIGINT,
    purge_time        BIGINT,
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
-- `participants.contact_id = "…"`, `participants.role = "…"`, `related.id =
-- "…"` and `related.type = "…"` are containment queries (@>) these answer.
CREATE INDEX activities_participants_idx ON activities USING GIN (participants jsonb_path_ops);
CREATE INDEX activities_related_idx ON activities USING GIN (related jsonb_path_ops);

CREATE TABLE activity_revisions (
    tenant_id      TEXT    NOT NULL,
    activity_id    TEXT    NOT NULL,
    revision       BIGINT  NOT NULL,
    -- The RevisionKind number.
    kind           INTEGER NOT NULL,
    actor          TEXT    NOT NULL,
    time           BIGINT  NOT NULL,
    -- The same diff as the change's: [{"field": …, "old_value": …, "new_value": …}]
    diff           JSONB   NOT NULL,
    comment_format INTEGER NOT NULL DEFAULT 0,
    comment_raw    TEXT    NOT NULL DEFAULT '',
    comment_html   TEXT    NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, activity_id, revision),
    -- A purged activity takes its journal with it.
    FOREIGN KEY (tenant_id, activity_id) REFERENCES activities (tenant_id, id) ON DELETE CASCADE
);
