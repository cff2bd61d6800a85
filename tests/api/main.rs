//! Integration tests: the real server over real gRPC, every test body on
//! SQLite and on PostgreSQL, as two tests named after their backend.

/// Declares, for each async fn `name(backend: Backend)` of the module, the
/// tests `name::sqlite` and `name::postgres`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(crate::helpers::Backend::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if !crate::helpers::enabled(crate::helpers::Backend::Postgres) {
                    eprintln!("PostgreSQL left out by AGENDA_TEST_BACKENDS");
                    return;
                }
                super::$name(crate::helpers::Backend::Postgres).await;
            }
        }
    )*};
}

mod auth;
mod contact_batches;
mod contact_lists;
mod contact_updates;
mod contacts;
mod health;
mod helpers;
mod ops;
