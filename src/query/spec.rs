//! What a resource declares so it can be filtered and ordered: its table,
//! and for each field the caller may name, the column and the kind of value.

use super::filter::{Expr, Op, Value};

/// How a filterable field is stored and compared.
#[derive(Debug, Clone, Copy)]
pub enum FieldKind {
    /// Text; `nullable` columns compare as '' when NULL.
    Text {
        /// Whether the column may be NULL.
        nullable: bool,
    },
    /// A time, stored as microseconds since the epoch; compared with RFC 3339 strings.
    Timestamp,
    /// A time that may be unset (NULL): it matches no comparison, and sorts
    /// after every time.
    OptionalTimestamp,
    /// A boolean.
    Bool,
    /// A whole number.
    Integer,
    /// Whether a task is overdue at the time of the query: its deadline (this
    /// column) passed and its status is not COMPLETED or CANCELLED. A time
    /// comparison the deadline index serves, not a scan.
    Overdue,
    /// An enum stored as its number; values are names, with or without the prefix.
    Enum {
        /// The enum's prefix, e.g. `STATUS_`.
        prefix: &'static str,
        /// Names (with prefix) and numbers.
        values: &'static [(&'static str, i32)],
    },
    /// One key of the objects in a JSON array column (e.g. `emails.address`):
    /// `=` and `:` mean "has an element that matches".
    RepeatedKey {
        /// The key inside each element.
        key: &'static str,
        /// On SQLite, which has no index over JSON array elements: a table of
        /// (tenant_id, path, value, <resource>_id) rows, kept by triggers,
        /// with the field's name as path and `id_column` naming the resource.
        lookup: Option<Lookup>,
    },
    /// A JSON object column whose keys the caller names (`custom_fields.<key>`).
    Custom,
}

/// A SQLite table holding the elements of a JSON array column, one row per
/// element key and value ([`FieldKind::RepeatedKey`]).
#[derive(Debug, Clone, Copy)]
pub struct Lookup {
    /// The table.
    pub table: &'static str,
    /// Its column holding the resource's id.
    pub id_column: &'static str,
}

/// A field a caller may filter or order by.
#[derive(Debug, Clone, Copy)]
pub struct FieldSpec {
    /// The name in filters and order_by (for Custom: the prefix before the key).
    pub name: &'static str,
    /// The column.
    pub column: &'static str,
    /// How it is compared.
    pub kind: FieldKind,
    /// Whether it may appear in order_by.
    pub orderable: bool,
}

/// What the shared machinery needs to know of a resource.
#[derive(Debug)]
pub struct ResourceSpec {
    /// The table; its key is (tenant_id, id) and it has delete_time.
    pub table: &'static str,
    /// The fields callers may name.
    pub fields: &'static [FieldSpec],
    /// The order when order_by is empty, e.g. "display_name".
    pub default_order: &'static str,
    /// A condition over the alias `t` that every row of the resource meets,
    /// when its table holds others too (tasks among activities).
    pub scope: Option<&'static str>,
}

/// A bound parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    /// Text.
    Text(String),
    /// A 64-bit integer.
    BigInt(i64),
    /// A double.
    Double(f64),
    /// A boolean.
    Bool(bool),
}

/// SQL text being built, with its parameters.
#[derive(Debug, Clone)]
pub struct Sql {
    /// The text.
    pub text: String,
    /// The parameters, in number order.
    pub params: Vec<Param>,
    /// PostgreSQL (`$n`) or SQLite (`?n`).
    pub pg: bool,
}

impl Sql {
    /// Empty SQL for a backend.
    pub fn new(pg: bool) -> Self {
        Sql { text: String::new(), params: Vec::new(), pg }
    }

    /// Adds a parameter and returns its placeholder.
    pub fn param(&mut self, param: Param) -> String {
        self.params.push(param);
        let n = self.params.len();
        if self.pg { format!("${n}") } else { format!("?{n}") }
    }
}

/// A filter or order_by fault: where and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// Character offset.
    pub pos: usize,
    /// What is wrong.
    pub message: String,
}

fn fault<T>(pos: usize, message: impl Into<String>) -> Result<T, Fault> {
    Err(Fault { pos, message: message.into() })
}

/// A resolved field: its spec and, for Custom, the key.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The spec.
    pub spec: FieldSpec,
    /// The custom key, for Custom fields.
    pub key: Option<String>,
}

impl ResourceSpec {
    /// Finds the field a dotted path names.
    pub fn resolve(&self, path: &[String], pos: usize) -> Result<Resolved, Fault> {
        let name = path.join(".");
        if let Some(spec) = self.fields.iter().find(|f| f.name == name && !matches!(f.kind, FieldKind::Custom)) {
            return Ok(Resolved { spec: *spec, key: None });
        }
        if let [head, key] = path
            && let Some(spec) =
                self.fields.iter().find(|f| f.name == head.as_str() && matches!(f.kind, FieldKind::Custom))
        {
            if !crate::domain::custom_fields::is_valid_key(key) {
                return fault(pos, format!("{key:?} is not a valid {head} key"));
            }
            return Ok(Resolved { spec: *spec, key: Some(key.clone()) });
        }
        let known: Vec<String> = self
            .fields
            .iter()
            .map(|f| if matches!(f.kind, FieldKind::Custom) { format!("{}.<key>", f.name) } else { f.name.to_string() })
            .collect();
        fault(pos, format!("{name:?} cannot be filtered or ordered by; use one of {}", known.join(", ")))
    }

    /// Compiles a parsed filter to a SQL condition over the alias `t`.
    pub fn compile(&self, expr: &Expr, sql: &mut Sql) -> Result<String, Fault> {
        Ok(match expr {
            Expr::And(items) => {
                let parts = items.iter().map(|e| self.compile(e, sql)).collect::<Result<Vec<_>, _>>()?;
                format!("({})", parts.join(" AND "))
            }
            Expr::Or(items) => {
                let parts = items.iter().map(|e| self.compile(e, sql)).collect::<Result<Vec<_>, _>>()?;
                format!("({})", parts.join(" OR "))
            }
            Expr::Not(inner) => format!("(NOT COALESCE({}, FALSE))", self.compile(inner, sql)?),
            Expr::Compare { field, op, value, pos } => {
                let resolved = self.resolve(&field.path, field.pos.0)?;
                compare(&resolved, &field.name(), *op, value, pos.0, sql)?
            }
        })
    }

    /// The SQL expression that orders by a resolved field, over `alias`.
    /// Never NULL, so row comparisons for keyset pagination are exact.
    pub fn order_expr(&self, resolved: &Resolved, alias: &str, key_param: Option<&str>, pg: bool) -> String {
        let column = format!("{alias}.{}", resolved.spec.column);
        match (resolved.spec.kind, key_param) {
            (FieldKind::Text { nullable: true }, _) => format!("COALESCE({column}, '')"),
            (FieldKind::OptionalTimestamp, _) => format!("COALESCE({column}, {})", i64::MAX),
            (FieldKind::Custom, Some(key)) if pg => format!("COALESCE({column} ->> {key}, '')"),
            (FieldKind::Custom, Some(key)) => format!("COALESCE(CAST(json_extract({column}, {key}) AS TEXT), '')"),
            _ => column,
        }
    }
}

fn comparison(op: Op) -> &'static str {
    match op {
        Op::Eq => "=",
        Op::Ne => "<>",
        Op::Lt => "<",
        Op::Le => "<=",
        Op::Gt => ">",
        Op::Ge => ">=",
        Op::Has => "LIKE",
    }
}

/// A LIKE pattern matching `text` anywhere, with `\` escaping.
fn contains_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// The SQLite JSON path of a custom key (keys are letters, digits, '_' and '-').
fn sqlite_path(key: &str) -> String {
    format!("$.\"{key}\"")
}

fn compare(resolved: &Resolved, name: &str, op: Op, value: &Value, pos: usize, sql: &mut Sql) -> Result<String, Fault> {
    let column = format!("t.{}", resolved.spec.column);
    let like = if sql.pg { "ILIKE" } else { "LIKE" };
    let string = |what: &str| -> Result<&String, Fault> {
        match value {
            Value::String(s) => Ok(s),
            _ => fault(pos, format!("{name} compares with {what} in double quotes")),
        }
    };
    match resolved.spec.kind {
        FieldKind::Text { nullable } => {
            let text = string("a text")?;
            let column = if nullable { format!("COALESCE({column}, '')") } else { column };
            if op == Op::Has {
                let p = sql.param(Param::Text(contains_pattern(text)));
                return Ok(format!("{column} {like} {p} ESCAPE '\\'"));
            }
            let p = sql.param(Param::Text(text.clone()));
            Ok(format!("{column} {} {p}", comparison(op)))
        }
        FieldKind::Timestamp | FieldKind::OptionalTimestamp => {
            let text = string("an RFC 3339 time such as \"2026-01-01T00:00:00Z\"")?;
            if op == Op::Has {
                return fault(pos, format!("{name} is a time: use = != < <= > >="));
            }
            let time = chrono::DateTime::parse_from_rfc3339(text)
                .map_err(|e| Fault { pos, message: format!("{text:?} is not an RFC 3339 time: {e}") })?;
            let p = sql.param(Param::BigInt(time.timestamp_micros()));
            Ok(format!("{column} {} {p}", comparison(op)))
        }
        FieldKind::Overdue => {
            let Value::Bool(b) = value else { return fault(pos, format!("{name} compares with true or false")) };
            if !matches!(op, Op::Eq | Op::Ne) {
                return fault(pos, format!("{name} is true or false: use = or !="));
            }
            let now = sql.param(Param::BigInt(chrono::Utc::now().timestamp_micros()));
            let overdue = format!("(COALESCE({column}, {}) < {now} AND t.status NOT IN (3, 4))", i64::MAX);
            Ok(if *b == (op == Op::Eq) { overdue } else { format!("(NOT {overdue})") })
        }
        FieldKind::Integer => {
            let Value::Number(n) = value else { return fault(pos, format!("{name} compares with a number")) };
            if op == Op::Has || n.fract() != 0.0 {
                return fault(pos, format!("{name} is a whole number: use = != < <= > >= with one"));
            }
            let p = sql.param(Param::BigInt(*n as i64));
            Ok(format!("{column} {} {p}", comparison(op)))
        }
        FieldKind::Bool => {
            let Value::Bool(b) = value else { return fault(pos, format!("{name} compares with true or false")) };
            if !matches!(op, Op::Eq | Op::Ne) {
                return fault(pos, format!("{name} is true or false: use = or !="));
            }
            let p = sql.param(Param::Bool(*b));
            Ok(format!("{column} {} {p}", comparison(op)))
        }
        FieldKind::Enum { prefix, values } => {
            let word = match value {
                Value::Word(w) | Value::String(w) => w,
                _ => {
                    return fault(
                        pos,
                        format!("{name} compares with a name such as {}", values.first().map_or("", |v| v.0)),
                    );
                }
            };
            let number = values
                .iter()
                .find(|(n, _)| *n == word.as_str() || n.strip_prefix(prefix) == Some(word.as_str()))
                .map(|(_, v)| *v)
                .filter(|v| *v != 0)
                .ok_or_else(|| Fault {
                    pos,
                    message: format!(
                        "{word:?} is not a value of {name}; use one of {}",
                        values
                            .iter()
                            .filter(|(_, v)| *v != 0)
                            .map(|(n, _)| n.trim_start_matches(prefix))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                })?;
            if op == Op::Has {
                return fault(pos, format!("{name} is an enum: use = != < <= > >="));
            }
            let p = sql.param(Param::BigInt(i64::from(number)));
            Ok(format!("{column} {} {p}", comparison(op)))
        }
        FieldKind::RepeatedKey { lookup: Some(lookup), .. } if !sql.pg => {
            // List queries bind the tenant first.
            let tenant = sql.params.first().cloned().unwrap_or(Param::Text(String::new()));
            let text = string("a text")?;
            let (value, negate) = match op {
                Op::Eq | Op::Ne => {
                    let p = sql.param(Param::Text(text.clone()));
                    (format!("= {p}"), op == Op::Ne)
                }
                Op::Has => {
                    let p = sql.param(Param::Text(contains_pattern(text)));
                    (format!("LIKE {p} ESCAPE '\\'"), false)
                }
                _ => {
                    return fault(
                        pos,
                        format!("{name} is a list: use = (has), != (has not) or : (has one containing)"),
                    );
                }
            };
            let t = sql.param(tenant);
            let path = sql.param(Param::Text(name.to_string()));
            let condition = format!(
                "t.id IN (SELECT e.{id} FROM {table} AS e WHERE e.tenant_id = {t} AND e.path = {path} AND e.value {value})",
                id = lookup.id_column,
                table = lookup.table,
            );
            Ok(if negate { format!("NOT ({condition})") } else { condition })
        }
        FieldKind::RepeatedKey { key, .. } => {
            let text = string("a text")?;
            let (condition, negate) = match op {
                Op::Eq | Op::Ne if sql.pg => {
                    let p = sql.param(Param::Text(text.clone()));
                    // Containment can use a GIN index on the column.
                    (format!("{column} @> jsonb_build_array(jsonb_build_object('{key}', {p}::text))"), op == Op::Ne)
                }
                Op::Eq | Op::Ne => {
                    let p = sql.param(Param::Text(text.clone()));
                    (
                        format!(
                            "EXISTS (SELECT 1 FROM json_each({column}) AS e WHERE json_extract(e.value, '$.{key}') = {p})"
                        ),
                        op == Op::Ne,
                    )
                }
                Op::Has if sql.pg => {
                    let p = sql.param(Param::Text(contains_pattern(text)));
                    (
                        format!(
                            "EXISTS (SELECT 1 FROM jsonb_array_elements({column}) AS e(v) WHERE e.v ->> '{key}' ILIKE {p} ESCAPE '\\')"
                        ),
                        false,
                    )
                }
                Op::Has => {
                    let p = sql.param(Param::Text(contains_pattern(text)));
                    (
                        format!(
                            "EXISTS (SELECT 1 FROM json_each({column}) AS e WHERE json_extract(e.value, '$.{key}') LIKE {p} ESCAPE '\\')"
                        ),
                        false,
                    )
                }
                _ => {
                    return fault(
                        pos,
                        format!("{name} is a list: use = (has), != (has not) or : (has one containing)"),
                    );
                }
            };
            Ok(if negate { format!("NOT ({condition})") } else { condition })
        }
        FieldKind::Custom => {
            let key = resolved.key.as_deref().unwrap_or_default();
            let k = sql.param(Param::Text(if sql.pg { key.to_string() } else { sqlite_path(key) }));
            let (typed, param) = match value {
                Value::String(s) if op == Op::Has => {
                    let text = if sql.pg {
                        format!("(CASE WHEN jsonb_typeof({column} -> {k}) = 'string' THEN {column} ->> {k} END)")
                    } else {
                        format!("(CASE WHEN json_type({column}, {k}) = 'text' THEN json_extract({column}, {k}) END)")
                    };
                    let p = sql.param(Param::Text(contains_pattern(s)));
                    return Ok(format!("{text} {like} {p} ESCAPE '\\'"));
                }
                Value::String(s) => (
                    if sql.pg {
                        format!("(CASE WHEN jsonb_typeof({column} -> {k}) = 'string' THEN {column} ->> {k} END)")
                    } else {
                        format!("(CASE WHEN json_type({column}, {k}) = 'text' THEN json_extract({column}, {k}) END)")
                    },
                    Param::Text(s.clone()),
                ),
                Value::Number(n) if op != Op::Has => (
                    if sql.pg {
                        format!(
                            "(CASE WHEN jsonb_typeof({column} -> {k}) = 'number' THEN ({column} ->> {k})::float8 END)"
                        )
                    } else {
                        format!(
                            "(CASE WHEN json_type({column}, {k}) IN ('integer', 'real') THEN json_extract({column}, {k}) END)"
                        )
                    },
                    Param::Double(*n),
                ),
                Value::Bool(b) if matches!(op, Op::Eq | Op::Ne) => (
                    if sql.pg {
                        format!(
                            "(CASE WHEN jsonb_typeof({column} -> {k}) = 'boolean' THEN ({column} ->> {k})::boolean END)"
                        )
                    } else {
                        format!("(CASE json_type({column}, {k}) WHEN 'true' THEN 1 WHEN 'false' THEN 0 END)")
                    },
                    Param::Bool(*b),
                ),
                _ => {
                    return fault(
                        pos,
                        format!(
                            "{name} compares with a quoted text, a number or true/false (':' takes a text, true/false only = and !=)"
                        ),
                    );
                }
            };
            let p = sql.param(param);
            Ok(format!("{typed} {} {p}", comparison(op)))
        }
    }
}
