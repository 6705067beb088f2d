#!/usr/bin/env bash
# Builds the agent for the boards (aarch64, glibc 2.31: JetPack 5 and 6) and
# its signed package: stripped binary, systemd unit, default config, models,
# manifest.json (version, target, size and sha256 of each file) and
# manifest.json.sig (ed25519).
#
# Usage: cross/build.sh --key SECRET_FILE [--out DIR] [--version V] [--profile P]
#        cross/build.sh --binary-only [--profile P]   (build, no package)
#        cross/build.sh --print-binary [--profile P]  (where the binary goes)
#   --key      ed25519 secret key file (`aeris-package keygen FILE` makes one)
#   --out      where the package folder and its .tar.gz go (default dist/)
#   --version  version written in the manifest (default: the crate's)
#   --profile  cargo profile: board (default; smallest) or board-ci (fast build)
#
# Environment: AERIS_CROSS_TARGET_DIR, the cargo target dir of the aarch64
# build (default: $CARGO_TARGET_DIR-aarch64, or target-aarch64), kept apart
# so host builds stay valid; AERIS_PACKAGE_TOOL, an aeris-package binary to
# use instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=aarch64-unknown-linux-gnu
GLIBC=2.31
key="" out=dist version="" profile=board print_binary="" binary_only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --key) key=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --version) version=$2; shift 2 ;;
    --profile) profile=$2; shift 2 ;;
    --print-binary) print_binary=1; shift ;;
    --binary-only) binary_only=1; shift ;;
    *) echo "cross/build.sh: unknown argument $1 (see the top of this file)" >&2; exit 2 ;;
  esac
done
host_dir=${CARGO_TARGET_DIR:-target}
cross_dir=${AERIS_CROSS_TARGET_DIR:-$host_dir-aarch64}
binary=$cross_dir/$TARGET/$profile/aeris-edge
if [ -n "$print_binary" ]; then echo "$binary"; exit 0; fi
[ -n "$key" ] || [ -n "$binary_only" ] || { echo "cross/build.sh: --key SECRET_FILE is required" >&2; exit 2; }
[ -n "$version" ] || version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)

cross/setup.sh
echo "== building aeris-edge $version for $TARGET.$GLIBC (profile $profile)"
CARGO_TARGET_DIR=$cross_dir cargo zigbuild --quiet --locked -p aeris-edge --bin aeris-edge \
  --profile "$profile" --target "$TARGET.$GLIBC"
if [ -n "$binary_only" ]; then echo "== $binary"; exit 0; fi

tool=${AERIS_PACKAGE_TOOL:-}
if [ -z "$tool" ]; then
  cargo build --quiet --locked -p aeris-edge --bin aeris-package
  tool=$host_dir/debug/aeris-package
fi

pkg=$out/aeris-edge-$version-aarch64
rm -rf "$pkg"
mkdir -p "$pkg/models"
cp "$binary" "$pkg/aeris-edge"
# The profile strips; this also covers a profile that does not.
aarch64-linux-gnu-strip "$pkg/aeris-edge"
cp deploy/systemd/aeris-edge.service cross/edge.toml "$pkg/"
for m in pm25_nowcast pm_anomaly; do
  mkdir -p "$pkg/models/$m"
  cp "models/$m/model.onnx" "models/$m/manifest.json" "$pkg/models/$m/"
done
"$tool" sign --dir "$pkg" --key "$key" --version "$version" --target "$TARGET.$GLIBC"
tar -C "$out" -czf "$pkg.tar.gz" "$(basename "$pkg")"
echo "== $pkg ($(stat -c %s "$pkg/aeris-edge") byte binary) and $pkg.tar.gz"
