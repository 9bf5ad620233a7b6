//! Where the tests find PostgreSQL: `DATABASE_URL` if set, else the local
//! server at 127.0.0.1:5432 (database `test`), else — with the opt-in
//! `testcontainers` feature, on machines with Docker — a container.

#![allow(dead_code)]

use std::time::Duration;

/// The local default.
pub const LOCAL_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A reachable database URL, or a panic with one line saying how to
/// provide one.
pub async fn database_url() -> String {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        return url;
    }
    let reachable = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::net::TcpStream::connect("127.0.0.1:5432"),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    if reachable {
        return LOCAL_URL.to_owned();
    }
    #[cfg(feature = "testcontainers")]
    if let Some(url) = container_url().await {
        return url;
    }
    panic!(
        "no PostgreSQL for the tests: set DATABASE_URL, start the local server \
         (pg_ctlcluster --skip-systemctl-redirect 15 main start), or run with \
         --features testcontainers on a machine with Docker"
    );
}

/// A fresh, unique name for a test's namespace or schema (the conformance
/// kit's, so the two never collide).
#[allow(unused_imports)] // not every test target uses it
pub use regent_conformance::support::unique;

/// Starts (once per test binary) a PostgreSQL container; `None` if Docker
/// is not available.
#[cfg(feature = "testcontainers")]
async fn container_url() -> Option<String> {
    use testcontainers_modules::postgres::Postgres;
    use testcontainers_modules::testcontainers::ContainerAsync;
    use testcontainers_modules::testcontainers::runners::AsyncRunner;
    use tokio::sync::OnceCell;

    static CONTAINER: OnceCell<Option<(ContainerAsync<Postgres>, String)>> = OnceCell::const_new();
    CONTAINER
        .get_or_init(|| async {
            let container = Postgres::default().start().await.ok()?;
            let port = container.get_host_port_ipv4(5432).await.ok()?;
            let url = format!("postgres://postgres:postgres@127.0.0.1:{port}/postgres");
            Some((container, url))
        })
        .await
        .as_ref()
        .map(|(_, url)| url.clone())
}
