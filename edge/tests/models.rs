//! The shipped models in tract: test vectors, corrupt and incompatible files,
//! NaN inputs, and shadow evaluation.

use std::path::{Path, PathBuf};

use aeris_edge::infer::{Change, Engine, EngineConfig, Model, ModelError};
use aeris_wire::{Reading, Value};

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
}

struct Vectors {
    inputs: Vec<Vec<f32>>,
    expected: Vec<f32>,
}

fn vectors(name: &str) -> Vectors {
    let text = std::fs::read_to_string(models().join(name).join("test_vectors.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let rows = |k: &str| -> Vec<Vec<f32>> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|r| match r.as_array() {
                Some(a) => a.iter().map(|x| x.as_f64().unwrap() as f32).collect(),
                None => vec![r.as_f64().unwrap() as f32],
            })
            .collect()
    };
    Vectors {
        inputs: rows("inputs"),
        expected: rows("expected").into_iter().map(|r| r[0]).collect(),
    }
}

/// Relative to the value (absolute below 1). The vectors come from
/// onnxruntime on the machine that exported them; tract sums the same f32
/// products in the order of the SIMD kernel it picks for the CPU it runs on
/// (AVX2, AVX-512, NEON), so the last bits differ between machines. On an
/// AVX-512 EPYC one vector deviated by 1.02e-5 (the nowcast's terms
/// include pressure near 1,000 hPa times its weight, cancelling to an output
/// near 2), so the bound is 2e-5: still about 170 f32 ulps at 1.0.
const TOLERANCE: f32 = 2e-5;

fn close(actual: f32, expected: f32) -> bool {
    (actual - expected).abs() <= TOLERANCE * expected.abs().max(1.0)
}

#[test]
fn tract_matches_onnxruntime_test_vectors_at_batch_1_and_64() {
    for name in ["pm25_nowcast", "pm_anomaly"] {
        let v = vectors(name);
        assert!(v.inputs.len() >= 128, "{name}: {} vectors", v.inputs.len());
        let one = Model::load_dir(&models().join(name), &[], 1).unwrap();
        for (row, want) in v.inputs.iter().zip(&v.expected) {
            let got = one.run(row).unwrap()[0];
            assert!(
                close(got, *want),
                "{name} batch 1: {got} vs {want} for {row:?}"
            );
        }
        let many = Model::load_dir(&models().join(name), &[], 64).unwrap();
        for (chunk, want) in v.inputs.chunks(64).zip(v.expected.chunks(64)) {
            let flat: Vec<f32> = chunk.iter().flatten().copied().collect();
            let got = many.run(&flat).unwrap();
            for (g, w) in got.iter().zip(want) {
                assert!(close(*g, *w), "{name} batch 64: {g} vs {w}");
            }
        }
    }
}

fn copy_model(name: &str, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["model.onnx", "manifest.json"] {
        std::fs::copy(models().join(name).join(f), to.join(f)).unwrap();
    }
}

#[test]
fn a_corrupt_file_is_a_checksum_error_and_a_garbled_one_with_a_matching_manifest_a_load_error() {
    let dir = tempfile::tempdir().unwrap();
    copy_model("pm25_nowcast", dir.path());
    let path = dir.path().join("model.onnx");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[40] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let err = Model::load_dir(dir.path(), &[], 1).unwrap_err();
    assert!(matches!(err, ModelError::Checksum { .. }), "{err}");

    // Garbage whose sha256 the manifest does state: the loader must fail cleanly.
    std::fs::write(&path, b"definitely not protobuf").unwrap();
    let manifest_path = dir.path().join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    manifest["sha256"] = aeris_edge::infer::model::sha256_hex(b"definitely not protobuf").into();
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
    let err = Model::load_dir(dir.path(), &[], 1).unwrap_err();
    assert_eq!(err.reason(), "load", "{err}");
}

#[test]
fn a_model_whose_graph_does_not_fit_its_manifest_is_incompatible() {
    // The anomaly graph (8 inputs) behind the nowcast manifest (12 features).
    let dir = tempfile::tempdir().unwrap();
    copy_model("pm25_nowcast", dir.path());
    let graph = std::fs::read(models().join("pm_anomaly/model.onnx")).unwrap();
    std::fs::write(dir.path().join("model.onnx"), &graph).unwrap();
    let manifest_path = dir.path().join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    manifest["sha256"] = aeris_edge::infer::model::sha256_hex(&graph).into();
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
    let err = Model::load_dir(dir.path(), &[], 1).unwrap_err();
    assert_eq!(err.reason(), "incompatible", "{err}");
    // And a row of the wrong width is refused by a loaded model.
    let ok = Model::load_dir(&models().join("pm25_nowcast"), &[], 1).unwrap();
    assert_eq!(ok.run(&[1.0; 8]).unwrap_err().reason(), "incompatible");
}

fn engine(shadow_windows: u32) -> Engine {
    let mut cadence = std::collections::BTreeMap::new();
    cadence.insert("pm25_nowcast".to_owned(), 3_600_000);
    Engine::new(EngineConfig {
        shadow_windows,
        utc_offset_ms: 8 * 3_600_000,
        cadence_ms: cadence,
    })
}

/// Hourly Beijing-like readings of one sensor.
fn hourly(i: i64, pm25: f64) -> Reading {
    let v = |q: &str, value: f64| Value {
        quantity: q.into(),
        value,
    };
    Reading {
        sensor: "bj".into(),
        ts_ms: 1_400_000_000_000 + i * 3_600_000,
        lat: 39.9,
        lon: 116.4,
        flags: 0,
        values: vec![
            v("pm25", pm25),
            v("dewp", -5.0),
            v("temp", 10.0),
            v("pres", 1020.0),
            v("iws", 12.0),
        ],
    }
}

fn output(r: &Reading) -> Option<(&str, f64)> {
    r.values
        .iter()
        .find(|v| v.quantity.starts_with("model:"))
        .map(|v| (v.quantity.as_str(), v.value))
}

#[test]
fn outputs_attach_once_the_window_is_full_and_nan_inputs_are_skipped() {
    let mut e = engine(3);
    assert!(matches!(
        e.offer(
            Model::load_dir(&models().join("pm25_nowcast"), &[], 1).unwrap(),
            false
        ),
        Change::Installed { .. }
    ));
    for i in 0..6 {
        let mut r = hourly(i, 50.0 + i as f64);
        e.process(&mut r);
        assert!(output(&r).is_none(), "hour {i}: no full window yet");
    }
    let mut r = hourly(6, 60.0);
    e.process(&mut r);
    let (q, v) = output(&r).expect("an output once 6 lags exist");
    assert_eq!(q, "model:pm25_nowcast@1.0.0");
    assert!(
        v > 20.0 && v < 100.0,
        "a nowcast near the recent level: {v}"
    );
    assert_eq!(e.stats.runs, 1);

    let mut bad = hourly(7, 60.0);
    bad.values[1].value = f64::NAN;
    e.process(&mut bad);
    assert!(output(&bad).is_none());
    assert_eq!(e.stats.skipped.get("nan_input"), Some(&1));
}

fn variant(name: &str) -> Model {
    Model::load_dir(&models().join("testdata").join(name), &[], 1).unwrap()
}

#[test]
fn a_shadow_that_agrees_is_promoted_and_one_that_disagrees_is_not() {
    let mut e = engine(5);
    e.offer(
        Model::load_dir(&models().join("pm25_nowcast"), &[], 1).unwrap(),
        false,
    );
    assert!(matches!(
        e.offer(variant("pm25_nowcast_disagree"), false),
        Change::ShadowStarted { .. }
    ));
    let mut changes = vec![];
    for i in 0..20 {
        let mut r = hourly(i, 40.0 + (i % 5) as f64);
        changes.extend(e.process(&mut r));
        if i >= 6 {
            // While in shadow the active model alone writes outputs.
            assert_eq!(output(&r).unwrap().0, "model:pm25_nowcast@1.0.0");
        }
    }
    assert!(
        matches!(changes.as_slice(), [Change::Discarded { version, .. }] if version == "1.1.0"),
        "{changes:?}"
    );
    assert_eq!(
        e.active(),
        vec![("pm25_nowcast".to_owned(), "1.0.0".to_owned())]
    );

    assert!(matches!(
        e.offer(variant("pm25_nowcast_agree"), false),
        Change::ShadowStarted { .. }
    ));
    let mut changes = vec![];
    let mut last = None;
    for i in 20..40 {
        let mut r = hourly(i, 40.0 + (i % 5) as f64);
        changes.extend(e.process(&mut r));
        last = output(&r).map(|(q, _)| q.to_owned());
    }
    match changes.as_slice() {
        [Change::Promoted {
            from,
            to,
            windows,
            max_diff,
            forced: false,
            ..
        }] => {
            assert_eq!(
                (from.as_str(), to.as_str(), *windows),
                ("1.0.0", "1.0.1", 5)
            );
            assert!((max_diff - 0.5).abs() < 1e-3, "{max_diff}");
        }
        other => panic!("expected one promotion, got {other:?}"),
    }
    assert_eq!(
        last.as_deref(),
        Some("model:pm25_nowcast@1.0.1"),
        "the promoted model writes from then on"
    );
    assert_eq!((e.stats.promotions, e.stats.discards), (1, 1));
}

#[test]
fn a_forced_candidate_is_promoted_without_shadow() {
    let mut e = engine(100);
    e.offer(
        Model::load_dir(&models().join("pm25_nowcast"), &[], 1).unwrap(),
        false,
    );
    assert!(matches!(
        e.offer(variant("pm25_nowcast_disagree"), true),
        Change::Promoted { forced: true, .. }
    ));
    assert_eq!(e.active()[0].1, "1.1.0");
}

#[test]
fn with_trusted_keys_only_a_model_signed_over_manifest_and_model_by_one_of_them_loads() {
    use aeris_edge::infer::signing::{sign, SIGNATURE_FILE};
    use ed25519_dalek::{Signer, SigningKey};
    let dir = tempfile::tempdir().unwrap();
    copy_model("pm25_nowcast", dir.path());
    let bytes = std::fs::read(dir.path().join("model.onnx")).unwrap();
    let manifest = std::fs::read(dir.path().join("manifest.json")).unwrap();
    let fleet = SigningKey::from_bytes(&[7; 32]);
    let other = SigningKey::from_bytes(&[9; 32]);
    let trusted = [fleet.verifying_key()];
    let sig_path = dir.path().join(SIGNATURE_FILE);
    let reason = || {
        Model::load_dir(dir.path(), &trusted, 1)
            .unwrap_err()
            .reason()
    };

    // No signature file at all.
    assert_eq!(reason(), "signature");
    // Signed by a key the board does not trust.
    std::fs::write(&sig_path, hex::encode(sign(&manifest, &bytes, &other))).unwrap();
    assert_eq!(reason(), "signature");
    // The old format, a signature over model.onnx alone, in either file.
    let model_only = hex::encode(fleet.sign(&bytes).to_bytes());
    std::fs::write(&sig_path, &model_only).unwrap();
    assert_eq!(reason(), "signature");
    std::fs::remove_file(&sig_path).unwrap();
    std::fs::write(dir.path().join("model.onnx.sig"), &model_only).unwrap();
    assert_eq!(reason(), "signature");
    // The right one, hex or raw.
    std::fs::write(&sig_path, hex::encode(sign(&manifest, &bytes, &fleet))).unwrap();
    assert!(Model::load_dir(dir.path(), &trusted, 1).is_ok());
    std::fs::write(&sig_path, sign(&manifest, &bytes, &fleet)).unwrap();
    assert!(Model::load_dir(dir.path(), &trusted, 1).is_ok());
    // The manifest changed after signing (a looser shadow tolerance, the
    // model untouched): refused.
    let mut m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    m["tolerance"]["shadow_vs_active"]["abs"] = 1e9.into();
    std::fs::write(dir.path().join("manifest.json"), m.to_string()).unwrap();
    assert_eq!(reason(), "signature");
    // Without configured keys no signature is asked for.
    std::fs::remove_file(&sig_path).unwrap();
    assert!(Model::load_dir(dir.path(), &[], 1).is_ok());
}

#[test]
fn a_manifest_name_or_version_that_is_not_a_plain_token_is_refused() {
    for (field, value) in [
        ("name", "../../x"),
        ("name", ".."),
        ("name", "a/b"),
        ("name", "/tmp/x"),
        ("name", ""),
        ("version", "1.0.0/../../x"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        copy_model("pm25_nowcast", dir.path());
        let path = dir.path().join("manifest.json");
        let mut m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        m[field] = value.into();
        std::fs::write(&path, m.to_string()).unwrap();
        let e = Model::load_dir(dir.path(), &[], 1).unwrap_err();
        assert_eq!(e.reason(), "name", "{field} {value:?}: {e}");
        assert!(e.to_string().contains("not a plain name"), "{e}");
    }
}

/// The loader's next news, within 20 s.
async fn next(
    rx: &mut tokio::sync::mpsc::Receiver<aeris_edge::infer::models_dir::LoaderNews>,
) -> Option<aeris_edge::infer::models_dir::LoaderNews> {
    tokio::time::timeout(std::time::Duration::from_secs(20), rx.recv())
        .await
        .unwrap()
}

/// Serves `files` (path -> body) over HTTP/1.1 on a free port, one request
/// per connection, until the test ends.
async fn serve(files: Vec<(String, Vec<u8>)>) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = vec![0u8; 4096];
            let n = sock.read(&mut buf).await.unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("").to_owned();
            let reply = match files.iter().find(|(p, _)| *p == path) {
                Some((_, body)) => {
                    let mut r = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    r.extend_from_slice(body);
                    r
                }
                None => b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    .to_vec(),
            };
            let _ = sock.write_all(&reply).await;
        }
    });
    port
}

#[tokio::test]
async fn a_commanded_model_is_downloaded_over_http_checked_and_size_capped() {
    use aeris_edge::infer::models_dir::{Loader, LoaderNews, ModelCommand, ModelsDir};
    use sha2::{Digest, Sha256};
    let dir = models().join("testdata/pm25_nowcast_agree");
    let model = std::fs::read(dir.join("model.onnx")).unwrap();
    let manifest = std::fs::read(dir.join("manifest.json")).unwrap();
    let sha: [u8; 32] = Sha256::digest(&model).into();
    let fleet = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let signature = aeris_edge::infer::signing::sign(&manifest, &model, &fleet).to_vec();
    let mut tampered: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    tampered["outputs"][0]["decision_threshold"] = 0.0.into();
    let port = serve(vec![
        ("/m/model.onnx".into(), model.clone()),
        ("/m/manifest.json".into(), manifest),
        ("/t/model.onnx".into(), model.clone()),
        ("/t/manifest.json".into(), tampered.to_string().into_bytes()),
    ])
    .await;

    let root = tempfile::tempdir().unwrap();
    let run = |max_model_bytes: u64, trusted: Vec<ed25519_dalek::VerifyingKey>| {
        let (cand_tx, cand_rx) = tokio::sync::mpsc::channel(2);
        let (news_tx, news_rx) = tokio::sync::mpsc::channel(8);
        let (cmd_tx, cmd_rx) = tokio::sync::mpsc::channel(2);
        let loader = Loader {
            dir: ModelsDir::create(root.path()).unwrap(),
            trusted,
            poll_interval: std::time::Duration::from_secs(3600),
            max_model_bytes,
            candidates: cand_tx,
            news: news_tx,
        };
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(loader.run(cmd_rx, stop.clone()));
        (cmd_tx, cand_rx, news_rx, stop)
    };
    let command = |url: String| ModelCommand {
        id: 1,
        name: "pm25_nowcast".into(),
        version: "1.0.1".into(),
        url,
        sha256: sha,
        signature: signature.clone(),
        force: false,
    };
    let rejection = |news: Option<LoaderNews>| match news {
        Some(LoaderNews::Rejected { reason, error, .. }) => (reason, error),
        other => panic!("{other:?}"),
    };
    let (cmd, mut candidates, mut news, stop) = run(1 << 20, vec![fleet.verifying_key()]);
    cmd.send(command(format!("http://127.0.0.1:{port}/m")))
        .await
        .unwrap();
    let c = tokio::time::timeout(std::time::Duration::from_secs(20), candidates.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.model.manifest.version, "1.0.1");
    assert!(matches!(news.recv().await, Some(LoaderNews::Loaded { .. })));
    // A manifest changed on the way (same model.onnx, so the command's
    // sha256 still matches) fails the signature.
    cmd.send(command(format!("http://127.0.0.1:{port}/t")))
        .await
        .unwrap();
    assert_eq!(rejection(next(&mut news).await).0, "signature");
    // A command whose name is a path is refused before any request.
    let mut evil = command(format!("http://127.0.0.1:{port}/m"));
    evil.name = "../../x".into();
    cmd.send(evil).await.unwrap();
    assert_eq!(rejection(next(&mut news).await).0, "name");
    // A command naming another model than the manifest describes is refused.
    let mut other = command(format!("http://127.0.0.1:{port}/m"));
    other.version = "2.0.0".into();
    cmd.send(other).await.unwrap();
    let (reason, error) = rejection(next(&mut news).await);
    assert!(
        reason == "manifest" && error.contains("asked for pm25_nowcast@2.0.0"),
        "{error}"
    );
    // A missing file is a clear rejection, not a hang or a crash.
    cmd.send(command(format!("http://127.0.0.1:{port}/nothing")))
        .await
        .unwrap();
    let (reason, error) = rejection(next(&mut news).await);
    assert!(reason == "io" && error.contains("404"), "{error}");
    stop.cancel();

    // Without trusted keys plain http is refused (nothing would prove the
    // manifest), whatever the sha256 says.
    let (cmd, _candidates, mut news, stop) = run(1 << 20, vec![]);
    cmd.send(command(format!("HTTP://127.0.0.1:{port}/m")))
        .await
        .unwrap();
    let (reason, error) = rejection(next(&mut news).await);
    assert!(
        reason == "insecure_url" && error.contains("trusted_keys"),
        "{error}"
    );
    stop.cancel();

    // A model larger than the cap is refused while downloading.
    let (cmd, _candidates, mut news, stop) =
        run(model.len() as u64 - 1, vec![fleet.verifying_key()]);
    cmd.send(command(format!("http://127.0.0.1:{port}/m")))
        .await
        .unwrap();
    let (_, error) = rejection(next(&mut news).await);
    assert!(error.contains("limit"), "{error}");
    stop.cancel();
}
