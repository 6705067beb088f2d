//! The binaries' command lines: help, bad configuration, printed config.

use std::process::Command;

use aeris_tests::process::binary;

#[test]
fn help_lists_every_config_key_of_both_binaries() {
    for (bin, keys) in [
        (
            "aeris-edge",
            &[
                "device_id",
                "cloud.prefix",
                "uplink.ack_timeout",
                "sensors.<id>.lat",
                "ingest.retention",
                "ingest.allow_list",
                "preprocess.reference_temp_c",
                "preprocess.windows.<sensor>",
            ][..],
        ),
        (
            "aeris-gateway",
            &[
                "database_url",
                "broker.share_group",
                "writer.max_batches_per_commit",
                "api.auth.tokens",
                "api.auth.open_reads",
                "api.rate_limit.per_second",
                "api.live.max_streams",
                "api.live.max_streams_per_client",
                "api.live.idle_timeout",
                "broker.tls.ca_file",
                "broker.tls.cert_file",
                "verify",
                "resend",
            ][..],
        ),
    ] {
        let out = Command::new(binary(bin)).arg("--help").output().unwrap();
        assert!(out.status.success());
        let help = String::from_utf8_lossy(&out.stdout);
        for key in keys {
            assert!(help.contains(key), "{bin} --help lacks {key}:\n{help}");
        }
        assert!(help.contains("--config"), "{help}");
    }
}

#[test]
fn a_bad_config_exits_2_naming_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("edge.toml");
    std::fs::write(
        &file,
        "device_id = \"lamp-1\"\n[uplink]\nbatch_max_readings = \"many\"\n",
    )
    .unwrap();
    let out = Command::new(binary("aeris-edge"))
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("uplink.batch_max_readings"), "{err}");
    assert!(err.contains(&file.display().to_string()), "{err}");

    // An environment override is checked the same way.
    let out = Command::new(binary("aeris-gateway"))
        .env("AERIS_BROKER__PORT", "not-a-port")
        .arg("--print-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("broker.port"));

    // A commit of more batches than PostgreSQL's lock table can hold the
    // locks of (one per device) is refused, not retried forever.
    let out = Command::new(binary("aeris-gateway"))
        .env("AERIS_WRITER__MAX_BATCHES_PER_COMMIT", "5000")
        .arg("--print-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("writer.max_batches_per_commit") && err.contains("1 to 1024"),
        "{err}"
    );
}

#[test]
fn print_config_merges_file_and_environment_and_hides_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gw.toml");
    std::fs::write(
        &file,
        "database_url = \"postgres://aeris:s3cret@db/aeris\"\n[broker]\nport = 1884\n",
    )
    .unwrap();
    let out = Command::new(binary("aeris-gateway"))
        .env("AERIS_WRITER__MAX_BATCHES_PER_COMMIT", "7")
        .args(["--print-config", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("port = 1884"), "{text}");
    assert!(text.contains("max_batches_per_commit = 7"), "{text}");
    assert!(!text.contains("s3cret"), "secret printed: {text}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(binary("aeris-edge"))
        .env("AERIS_LOG_FORMAT", "json")
        .env("AERIS_LOG", "info")
        .env("AERIS_DATA_DIR", dir.path())
        .env("AERIS_HEALTH_LISTEN", "")
        .env("AERIS_INFER__ENABLED", "false")
        // Nothing listens there: the agent logs its connection attempts.
        .env("AERIS_LOCAL__PORT", aeris_tests::free_port().to_string())
        .env("AERIS_CLOUD__PORT", aeris_tests::free_port().to_string())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 3, "{text}");
    let mut messages = vec![];
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        messages.push(v["fields"]["message"].as_str().unwrap_or("").to_owned());
    }
    assert!(messages.iter().any(|m| m == "agent starting"), "{text}");
    assert!(messages.iter().any(|m| m == "agent stopped"), "{text}");
}

/// Anonymous read-write mappings that start on a 64 MiB boundary in the
/// process's address space: the heaps of glibc's per-thread malloc arenas
/// (each reserves 64 MiB, aligned to it; the main arena is `[heap]`).
fn thread_arenas(pid: u32) -> usize {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    maps.lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let start = f
                .first()
                .and_then(|r| r.split('-').next())
                .and_then(|a| u64::from_str_radix(a, 16).ok());
            f.len() == 5 && f[1] == "rw-p" && start.is_some_and(|s| s % (64 << 20) == 0)
        })
        .count()
}

/// Runs the agent against a broker until it subscribed, with `arena_max`
/// as MALLOC_ARENA_MAX (None: unset), and counts its thread arenas.
fn arenas_of_a_running_agent(arena_max: Option<&str>) -> usize {
    let broker = aeris_tests::mosquitto::Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("edge.log");
    let mut cmd = Command::new(binary("aeris-edge"));
    cmd.env("AERIS_DATA_DIR", dir.path())
        .env("AERIS_HEALTH_LISTEN", "")
        .env("AERIS_INFER__ENABLED", "false")
        .env("AERIS_LOCAL__PORT", broker.port.to_string())
        .env("AERIS_CLOUD__PORT", broker.port.to_string())
        .env_remove("GLIBC_TUNABLES")
        .env_remove("MALLOC_ARENA_MAX")
        .stderr(std::fs::File::create(&log).unwrap());
    if let Some(n) = arena_max {
        cmd.env("MALLOC_ARENA_MAX", n);
    }
    let mut child = cmd.spawn().unwrap();
    let start = std::time::Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("subscribed to sensor topic")
    {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "agent did not subscribe:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let arenas = thread_arenas(child.id());
    let _ = child.kill();
    let _ = child.wait();
    arenas
}

#[test]
fn the_agent_allocates_from_one_malloc_arena_unless_the_environment_says_otherwise() {
    assert_eq!(arenas_of_a_running_agent(None), 0);
    // The check sees arenas when there are some: the environment decides.
    assert!(arenas_of_a_running_agent(Some("8")) >= 1);
}
