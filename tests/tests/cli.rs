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
