//! Sensors to PostGIS, through real Mosquitto brokers, the edge agent and the
//! gateway as processes, and a fresh PostGIS database.

use std::time::Duration;

use aeris_tests::http::metric;
use aeris_tests::sensors::{readings, Publisher};
use aeris_tests::stack::{watch_status, Stack, DEVICE};

const LAND: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_land_exactly_once_with_their_geometry() {
    let stack = Stack::start().await;
    let mut status = watch_status(stack.cloud.port, DEVICE).await;
    let sensors = Publisher::connect(stack.local.port).await;
    let published = readings(600, 12);
    for r in &published {
        sensors.publish(r).await;
    }
    stack.wait_rows(published.len() as i64, LAND).await;
    stack.assert_exactly_once(&published).await;

    // The edge deletes what was acked: its heartbeat reports an empty buffer
    // and the last seq it assigned.
    wait_all_acked(&stack, &mut status, published.len() as u64).await;
}

/// Waits until the agent's heartbeat reports an empty buffer after
/// assigning `last_seq`: every reading it took was acked.
async fn wait_all_acked(
    stack: &Stack,
    status: &mut tokio::sync::watch::Receiver<Option<aeris_wire::Status>>,
    last_seq: u64,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = status.borrow_and_update().clone();
        if let Some(s) = s {
            if s.queued_readings == 0 && s.last_seq == last_seq {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "buffer never emptied: {:?}\n{}",
            status.borrow(),
            stack.logs()
        );
        let _ = tokio::time::timeout(Duration::from_secs(1), status.changed()).await;
    }
}

/// Publishes `published` at about `per_sec`, running `fault` once a third
/// has gone out.
async fn publish_with_fault(
    stack: &mut Stack,
    published: &[aeris_tests::sensors::SensorReading],
    per_sec: u64,
    fault: impl FnOnce(&mut Stack),
) {
    let sensors = Publisher::connect(stack.local.port).await;
    let mut fault = Some(fault);
    let pause = Duration::from_micros(1_000_000 / per_sec);
    for (i, r) in published.iter().enumerate() {
        sensors.publish(r).await;
        if i == published.len() / 3 {
            // Let some batches get in flight first.
            tokio::time::sleep(Duration::from_millis(300)).await;
            if let Some(f) = fault.take() {
                f(stack);
            }
        }
        tokio::time::sleep(pause).await;
    }
    stack.wait_rows(published.len() as i64, LAND).await;
    // Settle: late resends must not add rows.
    tokio::time::sleep(Duration::from_secs(4)).await;
    stack.assert_exactly_once(published).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_killed_mid_stream_loses_and_duplicates_nothing() {
    let mut stack = Stack::start().await;
    let published = readings(1500, 10);
    publish_with_fault(&mut stack, &published, 400, |s| {
        s.gateway.kill();
        std::thread::sleep(Duration::from_millis(1500));
        s.gateway.restart();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_broker_restart_mid_stream_loses_and_duplicates_nothing() {
    let mut stack = Stack::start().await;
    let published = readings(1500, 10);
    publish_with_fault(&mut stack, &published, 400, |s| {
        s.cloud.restart(Duration::from_millis(1500));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_sigterm_flushes_and_exits_zero_then_resumes_seqs() {
    let mut stack = Stack::start().await;
    let sensors = Publisher::connect(stack.local.port).await;
    let first = readings(200, 4);
    for r in &first {
        sensors.publish(r).await;
    }
    stack.wait_rows(200, LAND).await;
    let status = stack.edge.terminate().expect("edge was running");
    assert!(
        status.success(),
        "edge exit on SIGTERM: {status:?}\n{}",
        stack.logs()
    );
    // Readings published while the agent is down wait in its persistent
    // session on the local broker; after restart their seqs continue.
    let mut second = readings(200, 4);
    for r in &mut second {
        r.ts_ms -= 10_000_000;
        sensors.publish(r).await;
    }
    stack.edge.restart();
    stack.wait_edge_subscribed(2).await;
    stack.wait_rows(400, LAND).await;
    let all: Vec<_> = first.iter().chain(&second).cloned().collect();
    stack.assert_exactly_once(&all).await;
    let max: i64 = stack
        .db
        .client()
        .await
        .query_one("SELECT max(seq) FROM readings", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        max, 400,
        "seqs continue across restarts without reuse or gaps"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_connections_killed_under_load_lose_and_duplicate_nothing() {
    let stack = Stack::start().await;
    let mut status = watch_status(stack.cloud.port, DEVICE).await;
    let admin = aeris_tests::postgres::admin().await;
    let db_name = stack.db.name.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Terminates every connection of the gateway, again and again, while
    // readings stream in: each in-flight COPY/INSERT transaction dies. In
    // the middle, the database refuses connections for two seconds (an
    // outage): writes fail, acks are held, the gateway retries with backoff.
    let killer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut killed = 0i64;
            let mut round = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(300)).await;
                round += 1;
                let allow = if round == 6 { "false" } else { "true" };
                if round == 6 || round == 13 {
                    admin
                        .batch_execute(&format!(
                            "ALTER DATABASE {db_name} ALLOW_CONNECTIONS {allow}"
                        ))
                        .await
                        .expect("toggle connections");
                }
                killed += admin
                    .query_one(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                         WHERE datname = $1 AND application_name = 'aeris-gateway'",
                        &[&db_name],
                    )
                    .await
                    .map(|r| r.get::<_, i64>(0))
                    .unwrap_or(0);
            }
            if round < 13 {
                let _ = admin
                    .batch_execute(&format!("ALTER DATABASE {db_name} ALLOW_CONNECTIONS true"))
                    .await;
            }
            killed
        })
    };
    let sensors = Publisher::connect(stack.local.port).await;
    let published = readings(3000, 10);
    for r in &published {
        sensors.publish(r).await;
        tokio::time::sleep(Duration::from_micros(1_500)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let killed = killer.await.unwrap();
    assert!(killed >= 3, "only {killed} connections terminated");
    stack.wait_rows(published.len() as i64, LAND).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stack.assert_exactly_once(&published).await;
    let errors = metric(stack.api_port, "aeris_gateway_write_errors_total");
    assert!(
        errors >= 1.0,
        "the outage never hit a write\n{}",
        stack.logs()
    );
    // Held acks went out after the retries: the agent's buffer empties.
    wait_all_acked(&stack, &mut status, published.len() as u64).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_split_the_load_and_one_killed_mid_stream_loses_and_duplicates_nothing() {
    let mut stack = Stack::start_with_gateways(2).await;
    let mut status = watch_status(stack.cloud.port, DEVICE).await;
    let published = readings(2000, 10);
    publish_with_fault(&mut stack, &published, 400, |s| {
        let first = metric(s.api_port, "aeris_gateway_batches_received_total");
        let second = s.more_gateways[0].metric("aeris_gateway_batches_received_total");
        assert!(
            first > 0.0 && second > 0.0,
            "both gateways take batches: {first} and {second}\n{}",
            s.logs()
        );
        s.more_gateways[0].proc.kill();
    })
    .await;
    // No lost acks: the agent's buffer empties, every reading acked.
    wait_all_acked(&stack, &mut status, published.len() as u64).await;
}
