use super::*;
use ed25519_dalek::SigningKey;

fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

#[test]
fn manifest_verifies_only_with_a_trusted_key_and_untouched_bytes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("models/m")).unwrap();
    std::fs::write(dir.path().join("aeris-edge"), b"binary").unwrap();
    std::fs::write(dir.path().join("models/m/model.onnx"), b"onnx").unwrap();
    let m = Manifest::of_dir(dir.path(), "1.2.3", "t").unwrap();
    assert_eq!(m.files.len(), 2);
    assert_eq!(m.files[1].path, "models/m/model.onnx");
    let bytes = m.to_bytes();
    let sig = sign(&bytes, &key(1));
    let trusted = [key(1).verifying_key()];
    assert_eq!(Manifest::verify(&bytes, &sig, &trusted).unwrap(), m);
    let other = [key(2).verifying_key()];
    assert!(matches!(
        Manifest::verify(&bytes, &sig, &other),
        Err(PackageError::Signature)
    ));
    let mut changed = bytes.clone();
    changed[10] ^= 1;
    assert!(Manifest::verify(&changed, &sig, &trusted).is_err());
    m.check_files(dir.path()).unwrap();
    std::fs::write(dir.path().join("aeris-edge"), b"binarz").unwrap();
    let e = m.check_files(dir.path()).unwrap_err();
    assert_eq!(e.reason(), "checksum");
}

#[test]
fn paths_leaving_the_package_are_refused() {
    for p in ["../x", "/etc/passwd", "a/../../b", ""] {
        assert!(safe_path(p).is_err(), "{p}");
    }
    assert!(safe_path("models/m/model.onnx").is_ok());
}

#[test]
fn versions_compare_by_semver_precedence() {
    use std::cmp::Ordering::*;
    let cmp = |a: &str, b: &str| {
        version_cmp(
            &parse_version("a", a).unwrap(),
            &parse_version("b", b).unwrap(),
        )
    };
    assert_eq!(cmp("0.10.0", "0.9.9"), Greater);
    assert_eq!(cmp("1.0.0", "1.0.0"), Equal);
    assert_eq!(cmp("0.1.0", "0.2.0"), Less);
    // A release candidate is older than its release (was Equal).
    assert_eq!(cmp("1.2.0-rc1", "1.2.0"), Less);
    assert_eq!(cmp("1.2.0", "1.2.0-rc1"), Greater);
    assert_eq!(cmp("1.2.0-rc1", "1.2.0-rc2"), Less);
    assert_eq!(cmp("1.2.0-rc.2", "1.2.0-rc.10"), Less);
    assert_eq!(cmp("1.2.0-alpha", "1.2.0-rc1"), Less);
    assert_eq!(cmp("1.1.9", "1.2.0-rc1"), Less);
    // Build metadata is not part of the order.
    assert_eq!(cmp("1.2.0+build.7", "1.2.0"), Equal);
    assert_eq!(cmp("1.2.0+a", "1.2.0+b"), Equal);
    for bad in ["", "1.2", "v1.2.0", "1.2.0.1", "1.2.x", "01.2.0", "latest"] {
        let e = parse_version("version", bad).unwrap_err();
        assert_eq!(e.reason(), "bad_version", "{bad}");
        assert!(e.to_string().contains("not a semver version"), "{e}");
    }
}

#[test]
fn only_listed_regular_files_survive_pruning() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("models/m")).unwrap();
    std::fs::write(d.join("aeris-edge"), b"binary").unwrap();
    std::fs::write(d.join("models/m/model.onnx"), b"onnx").unwrap();
    let m = Manifest::of_dir(d, "1.0.0", "t").unwrap();
    std::fs::write(d.join(MANIFEST), m.to_bytes()).unwrap();
    std::fs::write(d.join(SIGNATURE), b"sig").unwrap();
    // Planted: a file, a file beside a listed one, a folder, a symlink
    // pointing outside, and a symlink where a listed folder would be.
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("keep"), b"x").unwrap();
    std::fs::write(d.join("extra"), b"x").unwrap();
    std::fs::write(d.join("models/m/extra.onnx"), b"x").unwrap();
    std::fs::create_dir_all(d.join("hooks/deep")).unwrap();
    std::fs::write(d.join("hooks/deep/run.sh"), b"x").unwrap();
    std::os::unix::fs::symlink(outside.path(), d.join("link")).unwrap();
    std::os::unix::fs::symlink(outside.path(), d.join("models/n")).unwrap();
    let mut removed = m.prune_unlisted(d).unwrap();
    removed.sort();
    assert_eq!(
        removed,
        ["extra", "hooks", "link", "models/m/extra.onnx", "models/n"]
    );
    m.check_files(d).unwrap();
    assert!(d.join(MANIFEST).exists() && d.join(SIGNATURE).exists());
    assert!(
        outside.path().join("keep").exists(),
        "a symlink was followed"
    );
    // A symlink at a listed path is removed too: the check then fails.
    std::fs::remove_file(d.join("aeris-edge")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("keep"), d.join("aeris-edge")).unwrap();
    assert_eq!(m.prune_unlisted(d).unwrap(), ["aeris-edge"]);
    assert!(outside.path().join("keep").exists());
    assert_eq!(m.check_files(d).unwrap_err().reason(), "io");
}
