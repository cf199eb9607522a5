#!/usr/bin/env bash
# The sysroot scripts/arm64-cross-pyfhel.sh cross-builds the aarch64 Pyfhel wheel against:
# the arm64 Debian 12 packages with the headers, libraries and Python sysconfig it needs, fetched
# by the host's apt (a private state dir: the host's dpkg architectures are left alone) and
# unpacked natively with dpkg-deb. Nothing runs under emulation, so scripts/check-arm64.sh runs
# this while debootstrap configures the arm64 root. glibc and libstdc++ come from the cross
# toolchain (g++-aarch64-linux-gnu), the same versions as the root's.
#
# Usage: arm64-sysroot.sh DIR MIRROR   -> DIR/root (made once; DIR/root/.complete marks it done)
set -euo pipefail
DIR=${1:?usage: arm64-sysroot.sh DIR MIRROR}
# Debian 12's Python is 3.11 (the root's python3; the wheel's cp311 tag must match it).
PACKAGES=(libpython3.11-dev libpython3.11-stdlib libpython3.11-minimal libzstd-dev libzstd1 zlib1g-dev zlib1g libmsgsl-dev)
SYSROOT=$DIR/root
[ ! -e "$SYSROOT/.complete" ] || exit 0
MIRROR=${2:?usage: arm64-sysroot.sh DIR MIRROR}

rm -rf "$DIR" && mkdir -p "$DIR/apt/lists/partial" "$DIR/apt/cache/archives/partial" "$DIR/debs" "$SYSROOT"
touch "$DIR/apt/status"
echo "deb $MIRROR bookworm main" > "$DIR/apt/sources.list"
# The host's apt.conf (proxy, snapshot validity) and keyrings apply; everything else is private.
APT=(apt-get -qq -o Dir::Etc::SourceList="$DIR/apt/sources.list" -o Dir::Etc::SourceParts=/nonexistent
     -o Dir::State::Lists="$DIR/apt/lists" -o Dir::State::status="$DIR/apt/status"
     -o Dir::Cache="$DIR/apt/cache" -o APT::Architecture=arm64 -o APT::Architectures::=arm64
     -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
timeout 600 "${APT[@]}" update
(cd "$DIR/debs" && timeout 600 "${APT[@]}" download "${PACKAGES[@]}")
for deb in "$DIR"/debs/*.deb; do dpkg-deb -x "$deb" "$SYSROOT"; done
# Absolute symlinks (libz.so -> /lib/aarch64-linux-gnu/libz.so.1.2.13) would point into the host.
find "$SYSROOT" -type l -lname '/*' | while read -r link; do
  ln -sfn "$SYSROOT$(readlink "$link")" "$link"
done
rm -rf "$DIR/apt" "$DIR/debs"
touch "$SYSROOT/.complete"
