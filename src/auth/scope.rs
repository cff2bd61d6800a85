//! Scopes: the typed OAuth 2 scopes (docs/calling.md), and the map from each RPC to
//! the scope its proto declares with `option (agenda.v1.required_scope)`.

use std::{collections::HashMap, fmt, str::FromStr};

use prost_reflect::{DescriptorPool, Value};

/// The full name of the method option that declares an RPC's scope.
pub const REQUIRED_SCOPE_OPTION: &str = "agenda.v1.required_scope";

/// One scope a token can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    ContactsRead,
    ContactsWrite,
    ActivitiesRead,
    ActivitiesWrite,
    TasksRead,
    TasksWrite,
    TasksAdmin,
    ChangesRead,
    Admin,
}

impl Scope {
    /// Every scope, in a stable order.
    pub const ALL: [Scope; 9] = [
        Scope::ContactsRead,
        Scope::ContactsWrite,
        Scope::ActivitiesRead,
        Scope::ActivitiesWrite,
        Scope::TasksRead,
        Scope::TasksWrite,
        Scope::TasksAdmin,
        Scope::ChangesRead,
        Scope::Admin,
    ];

    /// The scope as written in tokens and protos.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::ContactsRead => "contacts.read",
            Scope::ContactsWrite => "contacts.write",
            Scope::ActivitiesRead => "activities.read",
            Scope::ActivitiesWrite => "activities.write",
            Scope::TasksRead => "tasks.read",
            Scope::TasksWrite => "tasks.write",
            Scope::TasksAdmin => "tasks.admin",
            Scope::ChangesRead => "changes.read",
            Scope::Admin => "admin",
        }
    }

    /// The scopes this one grants besides itself: `X.write` grants `X.read`,
    /// `tasks.admin` grants `tasks.write` and `tasks.read`; `admin` grants
    /// nothing else.
    fn implied(self) -> &'static [Scope] {
        match self {
            Scope::ContactsWrite => &[Scope::ContactsRead],
            Scope::ActivitiesWrite => &[Scope::ActivitiesRead],
            Scope::TasksWrite => &[Scope::TasksRead],
            Scope::TasksAdmin => &[Scope::TasksWrite, Scope::TasksRead],
            _ => &[],
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == s).ok_or_else(|| format!("unknown scope {s:?}"))
    }
}

/// The scopes of a token, with the implied ones expanded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeSet(Vec<Scope>);

impl ScopeSet {
    /// Parses a space-separated `scope` claim; unknown scopes are ignored, as
    /// OAuth 2 tokens often carry scopes for other services.
    pub fn parse(claim: &str) -> Self {
        let mut scopes: Vec<Scope> = claim
            .split_ascii_whitespace()
            .filter_map(|s| s.parse::<Scope>().ok())
            .flat_map(|s| std::iter::once(s).chain(s.implied().iter().copied()))
            .collect();
        scopes.sort();
        scopes.dedup();
        ScopeSet(scopes)
    }

    /// Whether the token grants `scope`.
    pub fn allows(&self, scope: Scope) -> bool {
        self.0.contains(&scope)
    }
}

/// What the proto declares for each RPC path (`/agenda.v1.ContactService/GetContact`).
#[derive(Debug, Clone)]
pub enum Declared {
    /// The RPC requires this scope.
    Scope(Scope),
    /// The RPC declares no scope, or one that is not known: refused.
    Missing,
}

/// The scope every RPC requires, read once from the descriptor set.
#[derive(Debug, Clone)]
pub struct ScopeMap {
    methods: HashMap<String, Declared>,
}

impl ScopeMap {
    /// Reads `required_scope` of every method of every service in the encoded
    /// descriptor set.
    pub fn from_descriptor_set(bytes: &[u8]) -> Result<Self, String> {
        let pool = DescriptorPool::decode(bytes).map_err(|e| format!("descriptor set: {e}"))?;
        let extension = pool
            .get_extension_by_name(REQUIRED_SCOPE_OPTION)
            .ok_or_else(|| format!("the descriptor set lacks the {REQUIRED_SCOPE_OPTION} extension"))?;
        let mut methods = HashMap::new();
        for service in pool.services() {
            for method in service.methods() {
                let options = method.options();
                let declared = if options.has_extension(&extension) {
                    match options.get_extension(&extension).as_ref() {
                        Value::String(s) => s.parse().map_or(Declared::Missing, Declared::Scope),
                        _ => Declared::Missing,
                    }
                } else {
                    Declared::Missing
                };
                methods.insert(format!("/{}/{}", service.full_name(), method.name()), declared);
            }
        }
        Ok(ScopeMap { methods })
    }

    /// The declaration of an RPC path; `None` if no such RPC exists.
    pub fn get(&self, path: &str) -> Option<&Declared> {
        self.methods.get(path)
    }

    /// Every RPC path with its declaration.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Declared)> {
        self.methods.iter().map(|(k, v)| (k.as_str(), v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rpc_declares_a_known_scope() {
        let map = ScopeMap::from_descriptor_set(crate::api::FILE_DESCRIPTOR_SET).expect("descriptor set decodes");
        assert!(map.iter().count() >= 10, "the ContactService alone has 10 RPCs");
        let missing: Vec<&str> =
            map.iter().filter(|(_, d)| matches!(d, Declared::Missing)).map(|(path, _)| path).collect();
        assert!(missing.is_empty(), "RPCs without a valid required_scope: {missing:?}");
    }

    #[test]
    fn contact_rpcs_have_the_expected_scopes() {
        let map = ScopeMap::from_descriptor_set(crate::api::FILE_DESCRIPTOR_SET).expect("descriptor set decodes");
        assert!(matches!(map.get("/agenda.v1.ContactService/GetContact"), Some(Declared::Scope(Scope::ContactsRead))));
        assert!(matches!(
            map.get("/agenda.v1.ContactService/CreateContact"),
            Some(Declared::Scope(Scope::ContactsWrite))
        ));
        assert!(map.get("/agenda.v1.ContactService/Nope").is_none());
    }

    #[test]
    fn write_implies_read_and_admin_implies_nothing() {
        let set = ScopeSet::parse("contacts.write admin other.scope");
        assert!(set.allows(Scope::ContactsWrite));
        assert!(set.allows(Scope::ContactsRead));
        assert!(set.allows(Scope::Admin));
        assert!(!set.allows(Scope::TasksRead));
        assert!(!set.allows(Scope::ActivitiesWrite));
        let set = ScopeSet::parse("contacts.read");
        assert!(!set.allows(Scope::ContactsWrite));
        let set = ScopeSet::parse("tasks.admin");
        assert!(set.allows(Scope::TasksWrite) && set.allows(Scope::TasksRead));
        assert!(!ScopeSet::parse("").allows(Scope::ContactsRead));
    }

    #[test]
    fn scope_names_round_trip() {
        for scope in Scope::ALL {
            assert_eq!(scope.as_str().parse::<Scope>(), Ok(scope));
        }
        assert!("contacts".parse::<Scope>().is_err());
    }
}
