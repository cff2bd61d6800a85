//! Which statements a connection keeps prepared. diesel keeps a statement
//! prepared, per connection, when its query has a static shape, and keys it
//! by its SQL text when it is built from raw SQL but marked safe to cache.
//! Raw SQL (`sql_query`) is never marked so: it is prepared again at every
//! execution, one more round trip and a fresh plan on PostgreSQL.
//!
//! [`Kept`] marks raw SQL as safe to cache. The cache has no bound, so only
//! SQL of which there are few distinct texts may be kept: fixed statements
//! ([`Kept::fixed`]), and the first [`MAX_ADMITTED`] distinct texts of the
//! statements whose text callers shape (list queries: [`Kept::admitted`]);
//! later texts run unprepared, so no caller can grow every connection's
//! cache, here or in PostgreSQL.

use std::{
    collections::HashSet,
    sync::{Mutex, OnceLock},
};

use diesel::{
    QueryResult,
    backend::Backend,
    query_builder::{AstPass, Query, QueryFragment, QueryId},
};

/// Distinct texts of caller-shaped SQL a process keeps prepared.
pub const MAX_ADMITTED: usize = 128;

/// A query that may be kept prepared when `keep` is set.
#[derive(Debug, Clone)]
pub struct Kept<Q> {
    query: Q,
    keep: bool,
}

impl<Q> Kept<Q> {
    /// A statement whose text is one of a fixed few: always kept.
    pub fn fixed(query: Q) -> Self {
        Kept { query, keep: true }
    }

    /// A statement whose text depends on the request: kept if `text` is one
    /// of the first [`MAX_ADMITTED`] distinct texts this process has seen.
    pub fn admitted(query: Q, text: &str) -> Self {
        Kept { query, keep: admit(text) }
    }
}

fn admit(text: &str) -> bool {
    static ADMITTED: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let Ok(mut admitted) = ADMITTED.get_or_init(Default::default).lock() else {
        return false;
    };
    if admitted.contains(text) {
        return true;
    }
    if admitted.len() >= MAX_ADMITTED {
        return false;
    }
    admitted.insert(text.to_string());
    true
}

impl<Q, DB> QueryFragment<DB> for Kept<Q>
where
    Q: QueryFragment<DB>,
    DB: Backend,
{
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        self.query.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, backend: &DB) -> QueryResult<bool> {
        if self.keep { Ok(true) } else { self.query.is_safe_to_cache_prepared(backend) }
    }
}

impl<Q> QueryId for Kept<Q> {
    type QueryId = ();
    // Keyed by its SQL text, never by its type: one type holds many texts.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: Query> Query for Kept<Q> {
    type SqlType = Q::SqlType;
}

impl<Q, C> diesel::RunQueryDsl<C> for Kept<Q> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_is_bounded() {
        let mine: Vec<String> = (0..MAX_ADMITTED * 2).map(|i| format!("SELECT {i} /* admission test */")).collect();
        let admitted = mine.iter().filter(|text| admit(text)).count();
        assert!(admitted <= MAX_ADMITTED);
        // A text once admitted stays admitted.
        if let Some(first) = mine.iter().find(|text| admit(text)) {
            assert!(admit(first));
        }
    }
}
