//! SQL types that differ between the backends but mean the same: a JSON
//! document is `jsonb` on PostgreSQL (so filters can use its operators and
//! indexes) and `TEXT` on SQLite. Rust sees a `String` of JSON either way.

use std::io::Write;

use diesel::{
    deserialize::{self, FromSql},
    pg::{Pg, PgValue},
    serialize::{self, IsNull, Output, ToSql},
    sql_types::SqlType,
    sqlite::{Sqlite, SqliteValue},
};

/// A JSON document: `jsonb` on PostgreSQL, `TEXT` on SQLite.
#[derive(Debug, Clone, Copy, SqlType, diesel::query_builder::QueryId)]
#[diesel(postgres_type(name = "jsonb"))]
#[diesel(sqlite_type(name = "Text"))]
pub struct Json;

/// A JSON document's text, as read from or written to a [`Json`] column.
#[derive(Debug, Clone, PartialEq, Eq, diesel::AsExpression, diesel::FromSqlRow)]
#[diesel(sql_type = Json)]
pub struct JsonText(pub String);

/// The version byte of PostgreSQL's binary jsonb format.
const JSONB_VERSION: u8 = 1;

impl ToSql<Json, Pg> for JsonText {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        out.write_all(&[JSONB_VERSION])?;
        out.write_all(self.0.as_bytes())?;
        Ok(IsNull::No)
    }
}

impl FromSql<Json, Pg> for JsonText {
    fn from_sql(value: PgValue<'_>) -> deserialize::Result<Self> {
        match value.as_bytes().split_first() {
            Some((&JSONB_VERSION, json)) => Ok(JsonText(String::from_utf8(json.to_vec())?)),
            _ => Err("unsupported jsonb format version".into()),
        }
    }
}

impl ToSql<Json, Sqlite> for JsonText {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Sqlite>) -> serialize::Result {
        out.set_value(self.0.as_str());
        Ok(IsNull::No)
    }
}

impl FromSql<Json, Sqlite> for JsonText {
    fn from_sql(value: SqliteValue<'_, '_, '_>) -> deserialize::Result<Self> {
        <String as FromSql<diesel::sql_types::Text, Sqlite>>::from_sql(value).map(JsonText)
    }
}
