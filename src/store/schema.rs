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
