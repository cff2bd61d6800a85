//! The macro that runs every test body on both backends.

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
