//! What the store's test files share.

/// Turns each scenario into two tests, `sqlite::NAME` and `postgres::NAME`,
/// each calling the test file's own `run(dialect, scenario)`.
#[allow(unused_macros)]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::run(custody_store::Dialect::Sqlite, super::$name).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::run(custody_store::Dialect::Postgres, super::$name).await;
                }
            )*
        }
    };
}
