//! The tables, shared by both backends (the row types derive `Selectable`
//! with `check_for_backend(Pg, Sqlite)`, which proves each column works on both).

diesel::table! {
    use diesel::sql_types::*;
    use crate::store::sql_types::Json;

    /// Contacts of all tenants.
    contacts (tenant_id, id) {
        tenant_id -> Text,
        id -> Text,
        display_name -> Text,
        given_name -> Text,
        family_name -> Text,
        organization -> Text,
        job_title -> Text,
        emails -> Json,
        phones -> Json,
        external_id -> Nullable<Text>,
        notes_format -> Integer,
        notes_raw -> Text,
        notes_html -> Text,
        custom_fields -> Json,
        revision -> BigInt,
        create_time -> BigInt,
        update_time -> BigInt,
        delete_time -> Nullable<BigInt>,
        purge_time -> Nullable<BigInt>,
        created_by -> Text,
        updated_by -> Text,
    }
}

diesel::table! {
    /// Request ids of creates, kept 24 hours for idempotent retries.
    request_ids (tenant_id, request_id) {
        tenant_id -> Text,
        request_id -> Text,
        operation -> Text,
        request_hash -> Text,
        resource_id -> Text,
        create_time -> BigInt,
    }
}

diesel::table! {
    /// Per tenant: the last change sequence handed out, and what was purged.
    change_sequences (tenant_id) {
        tenant_id -> Text,
        last_sequence -> BigInt,
        purged_through -> BigInt,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use crate::store::sql_types::Json;

    /// The change feed of all tenants.
    changes (tenant_id, sequence) {
        tenant_id -> Text,
        sequence -> BigInt,
        resource_type -> Integer,
        resource_id -> Text,
        kind -> Integer,
        revision -> BigInt,
        actor -> Text,
        request_id -> Nullable<Text>,
        time -> BigInt,
        diff -> Json,
        resource -> Nullable<Binary>,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use crate::store::sql_types::Json;

    /// Activity types of all tenants; `id` is the type's key.
    activity_types (tenant_id, id) {
        tenant_id -> Text,
        id -> Text,
        display_name -> Text,
        localized_names -> Json,
        sort_order -> Integer,
        system -> Bool,
        revision -> BigInt,
        create_time -> BigInt,
        update_time -> BigInt,
        delete_time -> Nullable<BigInt>,
        purge_time -> Nullable<BigInt>,
        created_by -> Text,
        updated_by -> Text,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use crate::store::sql_types::Json;

    /// Activities of all tenants.
    activities (tenant_id, id) {
        tenant_id -> Text,
        id -> Text,
        activity_type -> Text,
        subject -> Text,
        details_format -> Integer,
        details_raw -> Text,
        details_html -> Text,
        status -> Integer,
        priority -> Integer,
        occur_time -> BigInt,
        due_time -> Nullable<BigInt>,
        duration -> Nullable<BigInt>,
        location -> Text,
        phone_number -> Text,
        medium -> Integer,
        parent_id -> Nullable<Text>,
        source_contact_id -> Nullable<Text>,
        assignee_user_id -> Text,
        assignee_group -> Text,
        participants -> Json,
        related -> Json,
        custom_fields -> Json,
        is_test -> Bool,
        is_auto -> Bool,
        result -> Text,
        category_id -> Nullable<Text>,
        contact_id -> Nullable<Text>,
        notify_responsible -> Bool,
        alert_minutes -> Integer,
        time_zone -> Text,
        recurrence -> Text,
        recurrence_origin_id -> Nullable<Text>,
        recurrence_start -> Nullable<BigInt>,
        successor_id -> Nullable<Text>,
        completed_time -> Nullable<BigInt>,
        completed_by -> Text,
        reminded_for -> Nullable<BigInt>,
        reminder_at -> Nullable<BigInt>,
        revision -> BigInt,
        create_time -> BigInt,
        update_time -> BigInt,
        delete_time -> Nullable<BigInt>,
        purge_time -> Nullable<BigInt>,
        created_by -> Text,
        updated_by -> Text,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use crate::store::sql_types::Json;

    /// The revision journal of activities.
    activity_revisions (tenant_id, activity_id, revision) {
        tenant_id -> Text,
        activity_id -> Text,
        revision -> BigInt,
        kind -> Integer,
        actor -> Text,
        time -> BigInt,
        diff -> Json,
        comment_format -> Integer,
        comment_raw -> Text,
        comment_html -> Text,
    }
}

diesel::table! {
    /// Task categories of all tenants.
    task_categories (tenant_id, id) {
        tenant_id -> Text,
        id -> Text,
        title -> Text,
        title_key -> Text,
        description -> Text,
        image_url -> Text,
        sort_order -> Integer,
        revision -> BigInt,
        create_time -> BigInt,
        update_time -> BigInt,
        delete_time -> Nullable<BigInt>,
        purge_time -> Nullable<BigInt>,
        created_by -> Text,
        updated_by -> Text,
    }
}
