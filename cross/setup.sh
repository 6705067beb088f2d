#!/usr/bin/env bash
# Installs what the aarch64 build and its checks need, each only when
# missing: the Rust target, cargo-zigbuild with Zig (PyPI, pinned; Zig links
# against glibc 2.31 symbols), qemu-user to run the board binary here, the
# aarch64 glibc for qemu, and aarch64 binutils (objdump, strip).
set -euo pipefail

ZIGLANG_VERSION=0.17.0
CARGO_ZIGBUILD_VERSION=0.24.0
TARGET=aarch64-unknown-linux-gnu

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for pkg in qemu-user-static libc6-arm64-cross binutils-aarch64-linux-gnu; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "cross/setup.sh: installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

rustup target list --installed | grep -qx "$TARGET" || rustup target add "$TARGET"

pip_has() { local v; v=$(python3 -m pip show "$1" 2>/dev/null || true); [[ "$v" == *"Version: $2"* ]]; }
if ! pip_has ziglang "$ZIGLANG_VERSION" || ! pip_has cargo-zigbuild "$CARGO_ZIGBUILD_VERSION"; then
  echo "cross/setup.sh: installing ziglang $ZIGLANG_VERSION and cargo-zigbuild $CARGO_ZIGBUILD_VERSION"
  python3 -m pip install -q "ziglang==$ZIGLANG_VERSION" "cargo-zigbuild==$CARGO_ZIGBUILD_VERSION"
fi
command -v cargo-zigbuild >/dev/null || { echo "cargo-zigbuild is not on PATH after pip install" >&2; exit 1; }
