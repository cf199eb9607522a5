#!/usr/bin/env bash
# One-time (idempotent) set-up of a fresh Debian machine for fhe-edge:
#  - Debian packages: Pyfhel's offline build deps, Mosquitto, GStreamer's RTSP server, systemd-analyze
#  - .venv at the repo root with the project and its test extras
#  - Pyfhel 3.5.0 with the patches in scripts/pyfhel/, built offline by scripts/build-pyfhel.sh
#    once, the wheel cached under ${FHE_EDGE_WHEELS:-~/.cache/fhe-edge/wheels}.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WHEELS=${FHE_EDGE_WHEELS:-$HOME/.cache/fhe-edge/wheels}
EXTRAS=${FHE_EDGE_EXTRAS:-test}

APT_PACKAGES=(
  build-essential cmake git patch pkg-config python3 python3-venv python3-dev
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
# FHE_EDGE_SKIP_APT=1: the caller provides the Debian packages (scripts/check-arm64.sh's arm64 root)
[ "${FHE_EDGE_SKIP_APT:-0}" = 1 ] && APT_PACKAGES=()
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

# Pyfhel 3.5.0 with the project's patches (seeded keys and ciphertexts; fused products and hoisted
# rotations), built once and cached.
# Installing the wheel by path replaces a plain 3.5.0 (or an older patch level) in an existing venv.
PYFHEL_WHEEL=$(FHE_EDGE_WHEELS="$WHEELS" scripts/build-pyfhel.sh "$VPY")
"$VPY" -m pip install -q "$PYFHEL_WHEEL"
"$VPY" -m pip install -q --find-links "$WHEELS" -e ".[$EXTRAS]"
# The import check must fail the set-up when it fails (inside "echo $(...)" a crash went unnoticed).
versions=$("$VPY" -c 'import Pyfhel, onnxruntime; print("Pyfhel", Pyfhel.__version__, "onnxruntime", onnxruntime.__version__)')
echo "setup: ok ($versions)"
