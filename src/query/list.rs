//! List requests: page size, order_by, show_deleted, filter and an opaque
//! page token, planned into one keyset-paginated SQL query. Page N costs
//! what page 1 costs: the token names the last row seen, and the next page
//! starts after that row's sort key, through the index of the order.

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{
    filter,
    spec::{Fault, Param, Resolved, ResourceSpec, Sql},
};
use crate::error::{Error, Reason, Result};

/// Page size when none is asked for.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Largest page; larger requests are lowered to it.
pub const MAX_PAGE_SIZE: usize = 1000;

/// The list parameters every List RPC takes.
#[derive(Debug, Clone, Default)]
pub struct ListParams {
    /// Requested page size (0: default).
    pub page_size: i32,
    /// The previous page's next_page_token.
    pub page_token: String,
    /// AIP-160 filter.
    pub filter: String,
    /// `field [desc], …`.
    pub order_by: String,
    /// Include soft-deleted rows.
    pub show_deleted: bool,
}

/// What a page token holds: the request it belongs to and the last row seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageToken {
    /// Hash of filter, order_by and show_deleted.
    q: String,
    /// Id of the last row of the previous page.
    a: String,
}

impl PageToken {
    fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    fn decode(token: &str) -> Option<PageToken> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token.trim()).ok()?;
        let token: PageToken = serde_json::from_slice(&bytes).ok()?;
        // The anchor is a resource id: a UUID, or a key (activity types).
        let canonical = crate::domain::parse_id(&token.a).is_some_and(|id| id == token.a);
        (canonical || crate::domain::is_key(&token.a)).then_some(token)
    }
}

/// A planned list: the checked filter, order and page size of one request,
/// from which the SQL of a page (or of a part of one, after any anchor row)
/// is made.
#[derive(Debug, Clone)]
pub struct ListPlan {
    spec: &'static ResourceSpec,
    tenant: String,
    show_deleted: bool,
    filter: Option<filter::Expr>,
    order: Vec<OrderKey>,
    pg: bool,
    /// Rows per page.
    pub page_size: usize,
    /// The last row of the previous page, from the page token.
    pub anchor: Option<String>,
    query_hash: String,
}

impl ListPlan {
    /// The token of the page after one whose last row is `last_id`.
    pub fn next_token(&self, last_id: &str) -> String {
        PageToken { q: self.query_hash.clone(), a: last_id.to_string() }.encode()
    }

    /// The table listed.
    pub fn table(&self) -> &'static str {
        self.spec.table
    }

    /// The tenant listed.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The query of at most `limit` rows after `anchor` (the id of a row of
    /// the tenant; from the start without one), in the plan's order; selects `t.*`.
    pub fn sql(&self, anchor: Option<&str>, limit: usize) -> Result<Sql> {
        let spec = self.spec;
        let pg = self.pg;
        let mut sql = Sql::new(pg);
        let tenant_param = sql.param(Param::Text(self.tenant.clone()));
        let mut conditions = vec![format!("t.tenant_id = {tenant_param}")];
        if !self.show_deleted {
            conditions.push("t.delete_time IS NULL".to_string());
        }
        conditions.extend(spec.scope.map(str::to_string));
        if let Some(expr) = &self.filter {
            conditions.push(spec.compile(expr, &mut sql).map_err(|f| invalid(Reason::FilterInvalid, "filter", f))?);
        }

        // Sort expressions over the row (t) and over the anchor row (a).
        let last_desc = self.order.last().is_some_and(|k| k.desc);
        let mut keys: Vec<(String, String, bool)> = Vec::with_capacity(self.order.len() + 1);
        for key in &self.order {
            let key_param = key.resolved.key.as_ref().map(|k| {
                let value = if pg { k.clone() } else { format!("$.\"{k}\"") };
                sql.param(Param::Text(value))
            });
            let row = spec.order_expr(&key.resolved, "t", key_param.as_deref(), pg);
            let anchor = spec.order_expr(&key.resolved, "a", key_param.as_deref(), pg);
            keys.push((row, anchor, key.desc));
        }
        keys.push(("t.id".to_string(), "a.id".to_string(), last_desc));

        if let Some(anchor_id) = anchor {
            let anchor_param = sql.param(Param::Text(anchor_id.to_string()));
            let from = format!("FROM {} a WHERE a.tenant_id = {tenant_param} AND a.id = {anchor_param}", spec.table);
            if keys.iter().all(|(_, _, desc)| *desc == last_desc) {
                let op = if last_desc { "<" } else { ">" };
                let rows: Vec<&str> = keys.iter().map(|(r, _, _)| r.as_str()).collect();
                let anchors: Vec<&str> = keys.iter().map(|(_, a, _)| a.as_str()).collect();
                conditions.push(format!("({}) {op} (SELECT {} {from})", rows.join(", "), anchors.join(", ")));
            } else {
                // Mixed directions: (k1 > a1) OR (k1 = a1 AND k2 < a2) OR …
                let mut alternatives = Vec::new();
                for i in 0..keys.len() {
                    let mut parts: Vec<String> =
                        keys[..i].iter().map(|(r, a, _)| format!("{r} = (SELECT {a} {from})")).collect();
                    let (r, a, desc) = &keys[i];
                    parts.push(format!("{r} {} (SELECT {a} {from})", if *desc { "<" } else { ">" }));
                    alternatives.push(format!("({})", parts.join(" AND ")));
                }
                conditions.push(format!("({})", alternatives.join(" OR ")));
            }
        }

        let order_sql: Vec<String> =
            keys.iter().map(|(r, _, desc)| if *desc { format!("{r} DESC") } else { r.clone() }).collect();
        let limit = sql.param(Param::BigInt(i64::try_from(limit).unwrap_or(i64::MAX)));
        sql.text = format!(
            "SELECT t.* FROM {} t WHERE {} ORDER BY {} LIMIT {limit}",
            spec.table,
            conditions.join(" AND "),
            order_sql.join(", ")
        );
        Ok(sql)
    }
}

/// The error for a page token whose anchor row is gone (purged between pages).
pub fn anchor_gone() -> Error {
    Error::Query {
        reason: Reason::PageTokenInvalid,
        field: "page_token",
        position: None,
        message: "page_token points after a row that no longer exists (it was purged); start the listing again without a token.".into(),
    }
}

/// A token is bound to the tenant and to what decides the rows and their
/// order, so it cannot be replayed by another tenant or with another query.
fn query_hash(spec: &ResourceSpec, tenant: &str, params: &ListParams) -> String {
    let mut hasher = Sha256::new();
    // A token of one resource's list is no token of another's (tasks share
    // the activities' table).
    hasher.update(spec.table.as_bytes());
    hasher.update([0]);
    hasher.update(spec.scope.unwrap_or_default().as_bytes());
    hasher.update([0]);
    hasher.update(tenant.as_bytes());
    hasher.update([0]);
    hasher.update(params.filter.trim().as_bytes());
    hasher.update([0]);
    hasher.update(params.order_by.trim().as_bytes());
    hasher.update([0, u8::from(params.show_deleted)]);
    hex::encode(&hasher.finalize()[..12])
}

fn invalid(reason: Reason, field: &'static str, fault: Fault) -> Error {
    Error::Query {
        reason,
        field,
        position: Some(fault.pos),
        message: format!("{field} is invalid at position {}: {}.", fault.pos, fault.message),
    }
}

/// One key of an order: the field and its direction.
#[derive(Debug, Clone)]
struct OrderKey {
    resolved: Resolved,
    desc: bool,
}

fn parse_order(spec: &ResourceSpec, order_by: &str) -> Result<Vec<OrderKey>, Fault> {
    let order_by = if order_by.trim().is_empty() { spec.default_order } else { order_by };
    let mut keys: Vec<OrderKey> = Vec::new();
    let mut offset = 0;
    for part in order_by.split(',') {
        let start = offset + part.chars().count() - part.trim_start().chars().count();
        offset += part.chars().count() + 1;
        let words: Vec<&str> = part.split_whitespace().collect();
        let (name, desc) = match words.as_slice() {
            [name] => (*name, false),
            [name, dir] if dir.eq_ignore_ascii_case("asc") => (*name, false),
            [name, dir] if dir.eq_ignore_ascii_case("desc") => (*name, true),
            [] => {
                return Err(Fault {
                    pos: start,
                    message: "an empty key; write `field [desc]` separated by commas".into(),
                });
            }
            _ => return Err(Fault { pos: start, message: "write each key as `field` or `field desc`".into() }),
        };
        if name == "id" {
            return Err(Fault { pos: start, message: "id is always the last key; leave it out".into() });
        }
        let path: Vec<String> = name.split('.').map(str::to_string).collect();
        let resolved = spec.resolve(&path, start)?;
        if !resolved.spec.orderable {
            return Err(Fault { pos: start, message: format!("{name} can be filtered by but not ordered by") });
        }
        if keys.iter().any(|k| k.resolved.spec.name == resolved.spec.name && k.resolved.key == resolved.key) {
            return Err(Fault { pos: start, message: format!("{name} appears twice") });
        }
        keys.push(OrderKey { resolved, desc });
    }
    Ok(keys)
}

/// Plans one page of `spec`'s rows of `tenant`: checks the page size,
/// token, filter and order. The SQL is made by [`ListPlan::sql`].
pub fn plan(spec: &'static ResourceSpec, tenant: &str, params: &ListParams, pg: bool) -> Result<ListPlan> {
    if params.page_size < 0 {
        return Err(Error::invalid("page_size", Reason::FieldInvalid, "page_size must not be negative."));
    }
    let page_size = match params.page_size as usize {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    };
    let query_hash = query_hash(spec, tenant, params);
    let anchor = if params.page_token.trim().is_empty() {
        None
    } else {
        let token = PageToken::decode(&params.page_token).ok_or_else(|| Error::Query {
            reason: Reason::PageTokenInvalid,
            field: "page_token",
            position: None,
            message: "page_token is not a token this service made; start again without one.".into(),
        })?;
        if token.q != query_hash {
            return Err(Error::Query {
                reason: Reason::PageTokenInvalid,
                field: "page_token",
                position: None,
                message: "page_token belongs to another list (another filter, order_by or show_deleted, or another caller's tenant); use it only with the list that made it.".into(),
            });
        }
        Some(token.a)
    };
    let filter = filter::parse(&params.filter)
        .map_err(|e| invalid(Reason::FilterInvalid, "filter", Fault { pos: e.pos, message: e.message }))?;
    let order = parse_order(spec, &params.order_by).map_err(|f| invalid(Reason::OrderByInvalid, "order_by", f))?;
    let plan = ListPlan {
        spec,
        tenant: tenant.to_string(),
        show_deleted: params.show_deleted,
        filter,
        order,
        pg,
        page_size,
        anchor,
        query_hash,
    };
    // Compiles the filter once now, so its faults are reported before any query.
    plan.sql(None, 1)?;
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::spec::{FieldKind, FieldSpec};

    const SPEC: ResourceSpec = ResourceSpec {
        table: "things",
        fields: &[
            FieldSpec { name: "name", column: "name", kind: FieldKind::Text { nullable: false }, orderable: true },
            FieldSpec { name: "create_time", column: "create_time", kind: FieldKind::Timestamp, orderable: true },
            FieldSpec {
                name: "tags.name",
                column: "tags",
                kind: FieldKind::RepeatedKey { key: "name", lookup: None },
                orderable: false,
            },
            FieldSpec { name: "custom_fields", column: "custom_fields", kind: FieldKind::Custom, orderable: true },
        ],
        default_order: "name",
        scope: None,
    };

    fn params(filter: &str, order_by: &str) -> ListParams {
        ListParams { filter: filter.into(), order_by: order_by.into(), ..Default::default() }
    }

    #[test]
    fn user_values_are_bound_never_written_into_the_sql() {
        let plan =
            plan(&SPEC, "t1", &params("name = \"x'); DROP TABLE things; --\" AND custom_fields.a = \"b\"", ""), true)
                .unwrap();
        let sql = plan.sql(Some("01930000-0000-7000-8000-000000000000"), 51).unwrap();
        assert!(!sql.text.contains("DROP"), "{}", sql.text);
        assert!(sql.params.contains(&Param::Text("x'); DROP TABLE things; --".into())));
    }

    #[test]
    fn faults_name_their_position() {
        let err = plan(&SPEC, "t1", &params("name = \"a\" AND nope = 1", ""), false).unwrap_err();
        assert!(matches!(err, Error::Query { reason: Reason::FilterInvalid, position: Some(15), .. }), "{err:?}");
        let err = plan(&SPEC, "t1", &params("create_time > \"yesterday\"", ""), false).unwrap_err();
        assert!(matches!(err, Error::Query { position: Some(14), .. }), "{err:?}");
        let err = plan(&SPEC, "t1", &params("", "name, tags.name desc"), false).unwrap_err();
        assert!(matches!(err, Error::Query { reason: Reason::OrderByInvalid, position: Some(6), .. }), "{err:?}");
        let err = plan(&SPEC, "t1", &params("", "name sideways"), false).unwrap_err();
        assert!(matches!(err, Error::Query { reason: Reason::OrderByInvalid, position: Some(0), .. }), "{err:?}");
    }

    #[test]
    fn tokens_are_bound_to_their_query() {
        let first = plan(&SPEC, "t1", &params("name = \"a\"", ""), true).unwrap();
        let token = first.next_token("01930000-0000-7000-8000-000000000000");
        let same = ListParams { page_token: token.clone(), ..params("name = \"a\"", "") };
        assert!(plan(&SPEC, "t1", &same, true).is_ok());
        let other = ListParams { page_token: token.clone(), ..params("name = \"b\"", "") };
        let err = plan(&SPEC, "t1", &other, true).unwrap_err();
        assert_eq!(err.reason(), Reason::PageTokenInvalid);
        let foreign = ListParams { page_token: token, ..params("name = \"a\"", "") };
        let err = plan(&SPEC, "t2", &foreign, true).unwrap_err();
        assert_eq!(err.reason(), Reason::PageTokenInvalid);
        for garbage in ["x", "!!!", "eyJ9", "eyJxIjoiIiwiYSI6IjEnIE9SIDE9MSJ9"] {
            let bad = ListParams { page_token: garbage.into(), ..params("", "") };
            assert_eq!(plan(&SPEC, "t1", &bad, true).unwrap_err().reason(), Reason::PageTokenInvalid, "{garbage}");
        }
    }

    #[test]
    fn page_sizes_default_and_cap() {
        assert_eq!(plan(&SPEC, "t", &params("", ""), true).unwrap().page_size, DEFAULT_PAGE_SIZE);
        let big = ListParams { page_size: 5000, ..Default::default() };
        assert_eq!(plan(&SPEC, "t", &big, true).unwrap().page_size, MAX_PAGE_SIZE);
        let negative = ListParams { page_size: -1, ..Default::default() };
        assert!(plan(&SPEC, "t", &negative, true).is_err());
    }
}
