#!/usr/bin/env bash
# One-time (idempotent) set-up of a fresh Debian machine for fhe-edge:
#  - Debian packages: Pyfhel's offline build deps, Mosquitto, GStreamer's RTSP server, systemd-analyze
#  - .venv at the repo root with the project and its test extras
#  - Pyfhel 3.5.0 built offline (see docs/pyfhel-offline.md) once, the wheel cached under
#    ${FHE_EDGE_WHEELS:-~/.cache/fhe-edge/wheels} so a second set-up does not rebuild it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WHEELS=${FHE_EDGE_WHEELS:-$HOME/.cache/fhe-edge/wheels}
EXTRAS=${FHE_EDGE_EXTRAS:-test}

APT_PACKAGES=(
  build-essential cmake git pkg-config python3 python3-venv python3-dev
  libmsgsl-dev libzstd-dev zlib1g-dev            # Pyfhel/SEAL offline build
  mosquitto mosquitto-clients                    # the broker (tests, demo)
  python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-tools
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly
  gstreamer1.0-plugins-bad gstreamer1.0-libav     # the RTSP test camera
  systemd                                        # systemd-analyze verify
  openssl ffmpeg
  postgresql                                     # backend state on several hosts (tests start their own)
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  $PY -m venv .venv
fi
VPY=$ROOT/.venv/bin/python
"$VPY" -m pip install -q --upgrade pip wheel setuptools

mkdir -p "$WHEELS"
if ! ls "$WHEELS"/pyfhel-3.5.0-*.whl >/dev/null 2>&1; then
  echo "setup: building Pyfhel 3.5.0 offline (once, ~6 min on 2 cores) into $WHEELS"
  tmp=$(mktemp -d)
  printf 'set(SEAL_BUILD_DEPS OFF)\n' > "$tmp/seal-offline.cmake"   # SEAL uses Debian's GSL/zlib/zstd
  CMAKE_TOOLCHAIN_FILE="$tmp/seal-offline.cmake" \
  LDFLAGS="-Wl,--no-as-needed -lz -lzstd" \
    "$VPY" -m pip wheel -q --no-deps pyfhel==3.5.0 -w "$WHEELS"
  rm -rf "$tmp"
fi
"$VPY" -m pip install -q --find-links "$WHEELS" "pyfhel==3.5.0"
"$VPY" -m pip install -q --find-links "$WHEELS" -e ".[$EXTRAS]"
echo "setup: ok ($("$VPY" -c 'import Pyfhel, onnxruntime; print("Pyfhel", Pyfhel.__version__, "onnxruntime", onnxruntime.__version__)'))"
