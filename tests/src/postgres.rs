//! A fresh PostGIS database per test on the local PostgreSQL server, dropped
//! when the test ends.
//!
//! The server is reached with `AERIS_TEST_PG_URL` (default
//! `postgres://aeris_test:aeris_test@127.0.0.1:5432/postgres`, a superuser
//! that `scripts/test.sh` creates).

use tokio_postgres::{Client, NoTls};

pub fn admin_url() -> String {
    std::env::var("AERIS_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://aeris_test:aeris_test@127.0.0.1:5432/postgres".into())
}

async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// A connection to the server's admin database (for faults: terminating
/// backends, refusing connections to a test database).
pub async fn admin() -> Client {
    connect(&admin_url())
        .await
        .expect("connect to the admin database")
}

pub struct TestDb {
    pub name: String,
    /// URL of the test database, for the gateway.
    pub url: String,
}

impl TestDb {
    /// Creates `aeris_t_<random>` with the PostGIS extension.
    pub async fn create() -> TestDb {
        let admin = connect(&admin_url()).await.unwrap_or_else(|e| {
            panic!(
                "cannot reach PostgreSQL at {} ({e}); run scripts/test.sh, which installs \
                 postgresql-15-postgis-3, starts the server and creates the test role",
                admin_url()
            )
        });
        let name = format!("aeris_t_{:016x}", fastrand::u64(..));
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        let url = match admin_url().rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => panic!("AERIS_TEST_PG_URL has no database part"),
        };
        let db = TestDb { name, url };
        db.client()
            .await
            .batch_execute("CREATE EXTENSION IF NOT EXISTS postgis")
            .await
            .expect("PostGIS extension (Debian package postgresql-15-postgis-3)");
        db
    }

    pub async fn client(&self) -> Client {
        connect(&self.url).await.expect("connect to test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside async context; use a private runtime on a thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let admin = connect(&admin_url()).await.ok()?;
                admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                    .ok()
            })
        })
        .join();
    }
}
