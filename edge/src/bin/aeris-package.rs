//! Signs and checks agent packages (see `aeris_edge::ota::package`) and
//! models (see `aeris_edge::infer::signing`): `keygen` makes a signing key,
//! `sign` writes a folder's `manifest.json` and `manifest.json.sig`,
//! `verify` checks them as a device would; `sign-model` writes a model
//! folder's `model.sig` (over its `manifest.json` and `model.onnx`) and
//! prints it, the value of a `Model` command's `signature`; `verify-model`
//! checks one. `cross/build.sh` calls `sign`; an operator calls `keygen`
//! once per fleet.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use aeris_edge::infer::signing;
use aeris_edge::ota::package::{read_signing_key, sign, Manifest, MANIFEST, SIGNATURE};
use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "aeris-package", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Writes a new ed25519 secret key (hex, mode 0600) to FILE and prints
    /// its public key (hex), the value devices list in `ota.trusted_keys`.
    Keygen {
        #[arg(value_name = "FILE")]
        secret: PathBuf,
    },
    /// Lists every file in DIR with its size and sha256 in manifest.json and
    /// signs it (manifest.json.sig).
    Sign {
        #[arg(long)]
        dir: PathBuf,
        /// Secret key file written by `keygen`.
        #[arg(long)]
        key: PathBuf,
        /// The agent version in the package.
        #[arg(long)]
        version: String,
        #[arg(long, default_value = "aarch64-unknown-linux-gnu.2.31")]
        target: String,
        /// Devices running an older agent refuse the package.
        #[arg(long)]
        min_version: Option<String>,
        /// Devices running exactly this version install it even though it
        /// is older (repeat for several); any other device refuses it.
        #[arg(long, value_name = "VERSION")]
        allow_downgrade_from: Vec<String>,
    },
    /// Checks DIR's signature against PUBLIC (hex) and every file's sha256.
    Verify {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, value_name = "HEX")]
        public: String,
    },
    /// Signs the model folder DIR: writes `model.sig` (hex ed25519 over
    /// DIR's manifest.json and model.onnx) and prints it.
    SignModel {
        #[arg(long)]
        dir: PathBuf,
        /// Secret key file written by `keygen`.
        #[arg(long)]
        key: PathBuf,
    },
    /// Checks the model folder DIR as a device with PUBLIC (hex) trusted would.
    VerifyModel {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, value_name = "HEX")]
        public: String,
    },
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Keygen { secret } => {
            let mut seed = [0u8; 32];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed))
                .context("cannot read /dev/urandom")?;
            let key = ed25519_dalek::SigningKey::from_bytes(&seed);
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&secret)
                .and_then(|mut f| writeln!(f, "{}", hex::encode(seed)))
                .with_context(|| format!("cannot write {}", secret.display()))?;
            println!("{}", hex::encode(key.verifying_key().to_bytes()));
        }
        Cmd::Sign {
            dir,
            key,
            version,
            target,
            min_version,
            allow_downgrade_from,
        } => {
            let key = read_signing_key(&key)?;
            let mut m = Manifest::of_dir(&dir, &version, &target)?;
            m.min_version = min_version;
            m.allow_downgrade_from = allow_downgrade_from;
            m.check_versions()?;
            let bytes = m.to_bytes();
            std::fs::write(dir.join(MANIFEST), &bytes)?;
            std::fs::write(dir.join(SIGNATURE), sign(&bytes, &key))?;
            eprintln!(
                "signed {} files of aeris-edge {version} in {}",
                m.files.len(),
                dir.display()
            );
        }
        Cmd::Verify { dir, public } => {
            let trusted = aeris_edge::config::parse_keys(&[public]).map_err(anyhow::Error::msg)?;
            let bytes = std::fs::read(dir.join(MANIFEST))?;
            let sig = std::fs::read_to_string(dir.join(SIGNATURE))?;
            let m = Manifest::verify(&bytes, &sig, &trusted)?;
            m.check_files(&dir)?;
            println!(
                "ok: aeris-edge {} for {}, {} files",
                m.version,
                m.target,
                m.files.len()
            );
        }
        Cmd::SignModel { dir, key } => {
            let key = read_signing_key(&key)?;
            let manifest = read(&dir.join("manifest.json"))?;
            let model = read(&dir.join("model.onnx"))?;
            let m: aeris_edge::infer::manifest::Manifest = serde_json::from_slice(&manifest)
                .with_context(|| format!("{}/manifest.json", dir.display()))?;
            for (what, v) in [("name", &m.name), ("version", &m.version)] {
                anyhow::ensure!(
                    signing::is_plain_name(v),
                    "model {what} {v:?} is not a plain name ([A-Za-z0-9._-], 1 to 64, not . or ..): devices would refuse it"
                );
            }
            let sig = hex::encode(signing::sign(&manifest, &model, &key));
            let path = dir.join(signing::SIGNATURE_FILE);
            std::fs::write(&path, format!("{sig}\n"))
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("signed model {}@{} in {}", m.name, m.version, dir.display());
            println!("{sig}");
        }
        Cmd::VerifyModel { dir, public } => {
            let trusted = aeris_edge::config::parse_keys(&[public]).map_err(anyhow::Error::msg)?;
            let m = aeris_edge::infer::Model::load_dir(&dir, &trusted, 1)
                .with_context(|| format!("model folder {}", dir.display()))?;
            println!("ok: model {}@{}", m.manifest.name, m.manifest.version);
        }
    }
    Ok(())
}
