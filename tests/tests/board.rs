//! The board build (`cross/build.sh`): the aarch64 agent needs no glibc
//! newer than 2.31 (JetPack 5), its package is signed and lists every file,
//! and the aarch64 agent run under qemu-user takes readings from a real
//! Mosquitto, buffers them and syncs them to a gateway on the host.
//!
//! The package is built once per run with the `board-ci` profile and a key
//! made here; scripts/test.sh has built the binary by then, so this only
//! packages. When the binary is missing and AERIS_SKIP_BOARD_TESTS is set,
//! the tests are skipped with a message; otherwise they build it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use aeris_tests::process::binary;
use aeris_tests::sensors::{readings, Publisher};
use aeris_tests::stack::Stack;

const SKIP_ENV: &str = "AERIS_SKIP_BOARD_TESTS";
const VERSION: &str = "0.1.0";

struct Board {
    package: PathBuf,
    public_key: String,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn build_sh() -> Command {
    let mut c = Command::new(repo().join("cross/build.sh"));
    c.args(["--profile", "board-ci"]);
    c
}

/// The board package, or None (after a loud message) when skipping.
fn board() -> Option<&'static Board> {
    static BOARD: OnceLock<Option<Board>> = OnceLock::new();
    BOARD
        .get_or_init(|| {
            let out = build_sh().arg("--print-binary").output().unwrap();
            let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if !bin.exists() && std::env::var_os(SKIP_ENV).is_some() {
                eprintln!(
                    "\n######## SKIPPED: the board (aarch64) tests: {} is missing and {SKIP_ENV} is set. \
                     Build it with `cross/build.sh --binary-only --profile board-ci`. ########\n",
                    bin.display()
                );
                return None;
            }
            let dir = tempfile::tempdir().unwrap().keep();
            let key = dir.join("signing.key");
            let out = Command::new(binary("aeris-package"))
                .arg("keygen")
                .arg(&key)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            let public_key = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            let out = build_sh()
                .arg("--key")
                .arg(&key)
                .arg("--out")
                .arg(&dir)
                .args(["--version", VERSION])
                .env("AERIS_PACKAGE_TOOL", binary("aeris-package"))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "cross/build.sh failed:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            Some(Board {
                package: dir.join(format!("aeris-edge-{VERSION}-aarch64")),
                public_key,
            })
        })
        .as_ref()
}

/// The highest `GLIBC_x.y[.z]` version named in `objdump -T` output.
fn newest_glibc(objdump: &str) -> Option<Vec<u32>> {
    objdump
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .filter_map(|w| w.strip_prefix("GLIBC_"))
        .filter_map(|v| v.split('.').map(|n| n.parse().ok()).collect())
        .max()
}

#[test]
fn newest_glibc_is_read_from_objdump_output() {
    let sample =
        "0000 DF *UND* 0000 (GLIBC_2.17) malloc\n0000 DF *UND* 0000 (GLIBC_2.28) fcntl64\n\
                  0000 DF *UND* 0000  GLIBC_2.3.4 x\n0000 DF *UND* 0000 (GLIBC_PRIVATE) y\n";
    assert_eq!(newest_glibc(sample), Some(vec![2, 28]));
    assert_eq!(newest_glibc("no versions"), None);
}

#[test]
fn board_binary_needs_no_glibc_newer_than_2_31() {
    let Some(board) = board() else { return };
    let bin = board.package.join("aeris-edge");
    let head = Command::new("aarch64-linux-gnu-objdump")
        .arg("-f")
        .arg(&bin)
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&head.stdout);
    assert!(head.contains("architecture: aarch64"), "{head}");
    let out = Command::new("aarch64-linux-gnu-objdump")
        .arg("-T")
        .arg(&bin)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let newest = newest_glibc(&text).expect("the binary names no glibc symbol version");
    assert!(
        newest <= vec![2, 31],
        "the board binary needs glibc {newest:?}, newer than JetPack 5's 2.31:\n{}",
        text.lines()
            .filter(|l| l.contains("GLIBC_2.3") && !l.contains("GLIBC_2.3)"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Stripped: no symbol table left.
    let syms = Command::new("aarch64-linux-gnu-objdump")
        .arg("-t")
        .arg(&bin)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&syms.stdout).contains("no symbols"));
}

#[test]
fn package_is_signed_and_lists_every_file_it_ships() {
    let Some(board) = board() else { return };
    let verify = |dir: &Path, key: &str| {
        Command::new(binary("aeris-package"))
            .arg("verify")
            .arg("--dir")
            .arg(dir)
            .args(["--public", key])
            .output()
            .unwrap()
    };
    let out = verify(&board.package, &board.public_key);
    assert!(out.status.success(), "{out:?}");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(board.package.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["version"], VERSION);
    assert_eq!(manifest["target"], "aarch64-unknown-linux-gnu.2.31");
    let paths: Vec<&str> = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["path"].as_str())
        .collect();
    for p in [
        "aeris-edge",
        "aeris-edge.service",
        "edge.toml",
        "models/pm25_nowcast/model.onnx",
        "models/pm25_nowcast/manifest.json",
        "models/pm_anomaly/model.onnx",
        "models/pm_anomaly/manifest.json",
    ] {
        assert!(paths.contains(&p), "{p} not in {paths:?}");
    }
    // Another key, or one changed byte in a shipped file, fails the check.
    let other = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
    assert!(!verify(&board.package, other).status.success());
    let copy = tempfile::tempdir().unwrap();
    let status = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", board.package.display()))
        .arg(copy.path())
        .status()
        .unwrap();
    assert!(status.success());
    let model = copy.path().join("models/pm_anomaly/model.onnx");
    let mut bytes = std::fs::read(&model).unwrap();
    bytes[100] ^= 0x40;
    std::fs::write(&model, bytes).unwrap();
    let out = verify(copy.path(), &board.public_key);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("models/pm_anomaly/model.onnx"));
    // The shipped default config is one the agent accepts.
    let out = Command::new(binary("aeris-edge"))
        .arg("--config")
        .arg(board.package.join("edge.toml"))
        .arg("--print-config")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn board_agent_under_qemu_syncs_readings_exactly_once() {
    let Some(board) = board() else { return };
    // The shipped models run too: the board binary includes inference.
    let models = board.package.join("models");
    let toml = format!(
        "[infer]\nmodels = [{:?}, {:?}]\n",
        models.join("pm25_nowcast"),
        models.join("pm_anomaly")
    );
    let stack = Stack::start_with_board_binary(&board.package.join("aeris-edge"), &toml).await;
    let sensors = Publisher::connect(stack.local.port).await;
    let published = readings(300, 6);
    for r in &published {
        sensors.publish(r).await;
    }
    stack
        .wait_rows(published.len() as i64, Duration::from_secs(120))
        .await;
    stack.assert_exactly_once(&published).await;
    let log = stack.edge.log();
    assert_eq!(log.matches("model active").count(), 2, "{}", stack.logs());
}
