#!/usr/bin/env bash
# The one place that builds Pyfhel (see docs/pyfhel-offline.md). Usage: build-pyfhel.sh PYTHON
#
# Builds Pyfhel 3.5.0 from its PyPI sdist with the patches in scripts/pyfhel/*.patch (seeded
# serialization of keys and symmetric-key ciphertexts; fused products and hoisted rotations), SEAL against Debian's GSL/zlib/zstd (its
# own build would download them), for the interpreter PYTHON, once: the wheel is cached under
# ${FHE_EDGE_WHEELS:-~/.cache/fhe-edge/wheels}. Prints the wheel's path on stdout.
#
# The wheel's version is 3.5.0+fheedge.h<hash of the patches>: a changed patch never reuses a cached
# wheel, pip replaces an installed plain 3.5.0 (or an older patch level) with it, and it still
# satisfies the project's `pyfhel==3.5.0` (PEP 440 ignores the local part of a candidate).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
VPY=${1:?usage: build-pyfhel.sh PYTHON (the interpreter the wheel is built for)}
WHEELS=${FHE_EDGE_WHEELS:-$HOME/.cache/fhe-edge/wheels}
UPSTREAM=3.5.0
# FHE_EDGE_PYFHEL_AARCH64_ROOT=DIR: cross-build the aarch64 wheel on x86 against the arm64 Debian
# root DIR (scripts/arm64-cross-pyfhel.sh; PYTHON is then a host interpreter of the root's version).
CROSS_ROOT=${FHE_EDGE_PYFHEL_AARCH64_ROOT:-}
PIP_PLATFORM=() CROSS_ENV=() CROSS_PIP=()
[ -z "$CROSS_ROOT" ] || PIP_PLATFORM=(--platform linux_aarch64)
# The sdist the patches were written against (pip fetches it over HTTPS; this pins its content).
SDIST_SHA256=0375b83b5a83026924f59db25c4efa9f27e1e8a66d004658f4d24195986a04b6

shopt -s nullglob
PATCHES=("$HERE"/pyfhel/*.patch)
[ ${#PATCHES[@]} -gt 0 ] || { echo "build-pyfhel: no patches in $HERE/pyfhel" >&2; exit 1; }
VERSION="$UPSTREAM+fheedge.h$(cat "${PATCHES[@]}" | sha256sum | cut -c1-8)"

mkdir -p "$WHEELS"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# A cached wheel of exactly this version whose tags fit PYTHON (pip does the tag matching, so
# an x86_64 wheel in a shared cache is never taken on arm64 and vice versa).
if "$VPY" -m pip download -q --no-index --no-deps --only-binary :all: --find-links "$WHEELS" \
     "${PIP_PLATFORM[@]}" -d "$tmp/found" "pyfhel==$VERSION" >/dev/null 2>&1; then
  found=("$tmp"/found/*.whl)
  echo "$WHEELS/$(basename "${found[0]}")"
  exit 0
fi

# shellcheck source=arm64-cross-pyfhel.sh
[ -z "$CROSS_ROOT" ] || . "$HERE/arm64-cross-pyfhel.sh"
echo "build-pyfhel: building Pyfhel $VERSION (once, ~6 min on 2 cores) into $WHEELS" >&2
# --no-binary only for pyfhel: its build dependencies (Cython, numpy, cmake) stay wheels.
"$VPY" -m pip download -q --no-deps --no-binary pyfhel -d "$tmp" "pyfhel==$UPSTREAM" >&2
sdist="$tmp/pyfhel-$UPSTREAM.tar.gz"
echo "$SDIST_SHA256  $sdist" | sha256sum -c --quiet - >&2 \
  || { echo "build-pyfhel: $sdist is not the sdist the patches were written for" >&2; exit 1; }
tar xzf "$sdist" -C "$tmp"
src="$tmp/pyfhel-$UPSTREAM"
for p in "${PATCHES[@]}"; do
  patch -d "$src" -p1 --forward --batch --quiet < "$p" >&2
done
# pyproject.toml is Pyfhel's single source of its version (setup.py copies it into __init__.py).
# (Its pyproject.toml has CRLF line ends: keep them.)
sed -i -E "0,/^version = \"$UPSTREAM\"(\r?)$/s//version = \"$VERSION\"\1/" "$src/pyproject.toml"
grep -qF "version = \"$VERSION\"" "$src/pyproject.toml" \
  || { echo "build-pyfhel: could not set the version in $src/pyproject.toml" >&2; exit 1; }

printf 'set(SEAL_BUILD_DEPS OFF)\n%s' "${CROSS_CMAKE:-}" > "$tmp/seal-offline.cmake"   # SEAL uses Debian's GSL/zlib/zstd
[ -z "$CROSS_ROOT" ] || cross_build_requires "$src"
# Without the LDFLAGS the module fails to import: undefined symbol deflateInit_.
env "${CROSS_ENV[@]}" CMAKE_TOOLCHAIN_FILE="$tmp/seal-offline.cmake" \
LDFLAGS="-Wl,--no-as-needed -lz -lzstd" \
  "$VPY" -m pip wheel -q --no-deps "${CROSS_PIP[@]}" "$src" -w "$tmp/built" >&2
built=("$tmp"/built/*.whl)
[ ${#built[@]} -eq 1 ] || { echo "build-pyfhel: expected one wheel, got ${built[*]}" >&2; exit 1; }
cp "${built[0]}" "$WHEELS/"
echo "$WHEELS/$(basename "${built[0]}")"
