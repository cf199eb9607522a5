#!/usr/bin/env bash
# Run the gateway side on aarch64 under qemu user emulation, from an x86 Debian 12 machine:
#   1. Debian's qemu-user-static, binfmt-support, debootstrap, aarch64 cross compiler on the host;
#      binfmt_misc + qemu-aarch64
#   2. a minimal arm64 Debian 12 root under a cache directory (made once, reused; arm64-root.sh),
#      while the aarch64 Pyfhel wheel is cross-built natively by the same recipe
#      (build-pyfhel.sh + arm64-cross-pyfhel.sh against arm64-sysroot.sh's unpacked packages)
#   3. this repository copied into the root and set up there by its own scripts/setup.sh, which
#      finds the cross-built wheel (nothing is compiled under emulation)
#   4. a cross-architecture round trip: protect + export on the host, `edge-agent infer` on arm64,
#      `backend-decryptor decrypt` on the host, compared with onnxruntime; the same bundle and
#      input also run natively so the two inference times sit side by side
#   5. the gateway-side tests that need no broker or camera, under emulation
# Idempotent; needs root. Slow (see docs/gateway.md, "aarch64"): not part of scripts/test.sh.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: scripts/check-arm64.sh [--root DIR] [--mirror URL] [--skip-tests] [--skip-roundtrip] [-h]

  --root DIR        arm64 root (default: $FHE_EDGE_ARM64_ROOT or ~/.cache/fhe-edge/arm64-root)
  --mirror URL      Debian mirror for debootstrap (default: the one this machine's apt uses)
  --skip-tests      do not run the pytest selection under emulation
  --skip-roundtrip  do not run the cross-architecture round trip
Run it niced on a shared machine: nice -n 10 scripts/check-arm64.sh
EOF
}

die() {
  echo "check-arm64: FAIL: $*" >&2
  [ -z "${PHASE:-}" ] || phase_end FAIL
  exit 1
}
log() { echo "check-arm64: $*"; }

REPO=$(cd "$(dirname "$0")/.." && pwd)
ROOT=${FHE_EDGE_ARM64_ROOT:-$HOME/.cache/fhe-edge/arm64-root}
MIRROR=${FHE_EDGE_ARM64_MIRROR:-}
BINFMT=${FHE_EDGE_BINFMT_DIR:-/proc/sys/fs/binfmt_misc}   # overridable so a test can fake the kernel
MOUNT_TIMEOUT=${FHE_EDGE_MOUNT_TIMEOUT:-20}               # a refused mount must not hang the script
RUN_TESTS=1 RUN_ROUNDTRIP=1
while [ $# -gt 0 ]; do
  case "$1" in
    --root) [ $# -ge 2 ] || { usage >&2; exit 2; }; ROOT=$2; shift 2 ;;
    --mirror) [ $# -ge 2 ] || { usage >&2; exit 2; }; MIRROR=$2; shift 2 ;;
    --skip-tests) RUN_TESTS=0; shift ;;
    --skip-roundtrip) RUN_ROUNDTRIP=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "check-arm64: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
case "$ROOT" in /*) ;; *) ROOT=$PWD/$ROOT ;; esac
[ "$ROOT" != / ] || die "--root / would turn this machine into the arm64 root"
SRC_IN_ROOT=/opt/fhe-edge               # the repository copy, as seen inside the root
MARKER=$ROOT/.fhe-edge-arm64-root-complete

# Gateway-side tests that need no broker, camera or TenSEAL: config, preprocessing, bundle
# verification, envelopes, encrypted inference of the shipped model and of a multi-conv zoo CNN
# (conv, BatchNorm, residual add, pooling, dense head). The Relu variant of that CNN is left out:
# it costs as much as the rest together under emulation and adds no aarch64-specific code path.
TESTS=(tests/gateway/test_config.py tests/formats/test_bundle.py tests/formats/test_envelope.py
       tests/engine/test_encrypted_inference.py tests/engine/test_shipped_model_encrypted.py
       "tests/gateway/test_pipeline.py::test_preprocess_matches_the_trainers_features"
       "tests/gateway/test_pipeline.py::test_preprocess_modes_and_normalisation"
       "tests/gateway/test_pipeline.py::test_bad_input_spec_is_refused_clearly"
       --deselect "tests/engine/test_encrypted_inference.py::test_random_small_cnns_match_onnxruntime[2-relu]")

SUMMARY=() NOTES=()
record() { SUMMARY+=("$(printf '%-44s %-5s %6ss' "$1" "$2" "$3")"); }
phase_start() { PHASE=$1; T0=$(date +%s); log "== $PHASE"; }
phase_end() { record "$PHASE" "${1:-ok}" "$(( $(date +%s) - T0 ))"; PHASE=; }
print_summary() {
  echo; echo "check-arm64 summary (root $ROOT)"
  printf '  %s\n' "${SUMMARY[@]}"
  [ ${#NOTES[@]} -eq 0 ] || printf '  %s\n' "${NOTES[@]}"
}

# -- 1. host: packages, binfmt_misc, qemu-aarch64 ----------------------------------------------
[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap, chroot and mounting binfmt_misc need it)"
command -v dpkg-query >/dev/null && command -v apt-get >/dev/null \
  || die "this script expects a Debian host (dpkg-query and apt-get not found)"
command -v git >/dev/null || die "git is needed to copy the repository into the root"
START=$(date +%s)
phase_start "host packages"
missing=()
# g++-aarch64-linux-gnu and python3-venv: the aarch64 Pyfhel wheel is cross-built on the host.
for p in qemu-user-static binfmt-support debootstrap g++-aarch64-linux-gnu python3-venv patch; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  timeout 900 apt-get update -qq || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
fi
phase_end

phase_start "binfmt_misc + qemu-aarch64"
if [ ! -e "$BINFMT/status" ]; then
  # A container without binfmt_misc refuses this mount: say so and stop (nothing else can work).
  err=$(timeout "$MOUNT_TIMEOUT" mount -t binfmt_misc binfmt_misc "$BINFMT" 2>&1) || true
  [ -e "$BINFMT/status" ] || die "the kernel refused binfmt_misc at $BINFMT (${err:-mount gave no reason});
  aarch64 programs cannot run here. In a container, the host must provide binfmt_misc with
  qemu-aarch64 registered (flag F), or run this on a VM or bare-metal Debian machine."
fi
[ "$(cat "$BINFMT/status")" = enabled ] || echo 1 > "$BINFMT/status" 2>/dev/null \
  || die "binfmt_misc is mounted at $BINFMT but disabled and cannot be enabled"
if [ ! -e "$BINFMT/qemu-aarch64" ]; then
  timeout 60 update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
  [ -e "$BINFMT/qemu-aarch64" ] || die "qemu-aarch64 is not registered in $BINFMT and
  'update-binfmts --enable qemu-aarch64' did not register it (is qemu-user-static installed?)"
fi
grep -qx enabled "$BINFMT/qemu-aarch64" || timeout 60 update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 \
  || die "qemu-aarch64 is registered in $BINFMT but disabled and cannot be enabled"
# Without flag F the kernel would look for the interpreter inside the chroot, where it is absent.
grep -q '^flags:.*F' "$BINFMT/qemu-aarch64" \
  || die "qemu-aarch64 is registered without flag F (fix-binary); re-register it with qemu-user-static's binfmt"
phase_end

# -- 2. the arm64 root -------------------------------------------------------------------------
# shellcheck source=arm64-root.sh
. "$REPO/scripts/arm64-root.sh"

ROOT_MOUNTS=()
umount_root() {
  local i
  for ((i = ${#ROOT_MOUNTS[@]} - 1; i >= 0; i--)); do
    umount "${ROOT_MOUNTS[$i]}" 2>/dev/null || umount -l "${ROOT_MOUNTS[$i]}" 2>/dev/null || true
  done
  ROOT_MOUNTS=()
}
on_exit() {
  local rc=$?
  if [ -n "${ROOT_JOB:-}" ]; then   # a debootstrap still running in the background
    pkill -TERM -P "$ROOT_JOB" 2>/dev/null || true
    kill "$ROOT_JOB" 2>/dev/null || true
    wait "$ROOT_JOB" 2>/dev/null || true
  fi
  umount_root
  [ -z "${WORK:-}" ] || rm -rf "$WORK"
  if [ ${#SUMMARY[@]} -gt 0 ]; then print_summary; fi
  [ $rc -eq 0 ] && echo "check-arm64: PASS ($(( $(date +%s) - START )) s)" \
                || echo "check-arm64: FAIL (exit $rc, $(( $(date +%s) - START )) s)" >&2
  exit $rc
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# No /sys in the root, on purpose: under qemu-user, /sys and /proc/cpuinfo describe the x86 host.
# onnxruntime's cpuinfo (1.32.0 aarch64 wheel) then finds the host's CPUs and caches in /sys but no
# ARM processor in /proc/cpuinfo, and dereferences NULL while reading cpu1's cache topology:
# "import onnxruntime" segfaulted every time /sys was mounted. Without /sys, cpuinfo_initialize
# fails cleanly, onnxruntime warns and runs its portable kernels. Nothing in the root needs /sys.
mount_root() {
  local what
  ! mountpoint -q "$ROOT/sys" || umount -l "$ROOT/sys"   # left by an older version of this script
  for what in proc dev dev/pts; do
    mountpoint -q "$ROOT/$what" && continue
    mkdir -p "$ROOT/$what"
    case $what in
      proc) mount -t proc proc "$ROOT/proc" ;;
      dev) mount --bind /dev "$ROOT/dev" ;;
      dev/pts) mount -t devpts devpts "$ROOT/dev/pts" ;;
    esac
    ROOT_MOUNTS+=("$ROOT/$what")
  done
}

# A clean environment inside the root: none of the host's PIP_*, VIRTUAL_ENV or PYTHONPATH.
# Bounded ($LIMIT seconds, default 1 h) so a wedged emulated program cannot hang the check.
in_root() {
  timeout "${LIMIT:-3600}" chroot "$ROOT" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"
}

# An emulated debootstrap (the root) and a native cross build (the aarch64 Pyfhel wheel) share
# nothing until the wheel is installed: they run side by side. The root's job reports below.
ROOT_JOB=
[ -n "$MIRROR" ] || MIRROR=$(host_mirror)
if [ ! -e "$MARKER" ]; then
  [ -n "$MIRROR" ] || die "no Debian mirror found in /etc/apt/sources.list*; pass --mirror URL"
  ROOT_T0=$(date +%s)
  log "== arm64 root (debootstrap bookworm), in the background"
  make_root &
  ROOT_JOB=$!
fi

# The wheel: cross-built on the host against an unpacked arm64 sysroot, into a wheel cache beside
# the root, instead of an hour of compiling under emulation (the root's setup.sh then finds it:
# build-pyfhel.sh matches the tags). Debian's python3 on the host is the root's version.
phase_start "aarch64 Pyfhel wheel (cross-built on the host)"
CROSS_VENV=$ROOT.cross-venv SYSROOT_DIR=$ROOT.sysroot HOST_WHEELS=$ROOT.wheels
[ -e "$SYSROOT_DIR/root/.complete" ] || [ -n "$MIRROR" ] \
  || die "no Debian mirror found in /etc/apt/sources.list*; pass --mirror URL"
"$REPO/scripts/arm64-sysroot.sh" "$SYSROOT_DIR" "$MIRROR" > "$ROOT.pyfhel.log" 2>&1 \
  || { tail -20 "$ROOT.pyfhel.log" >&2; die "fetching the arm64 sysroot packages failed (log: $ROOT.pyfhel.log)"; }
if [ ! -x "$CROSS_VENV/bin/python" ]; then
  { /usr/bin/python3 -m venv "$CROSS_VENV" && "$CROSS_VENV/bin/python" -m pip install -q --upgrade pip; } \
    >> "$ROOT.pyfhel.log" 2>&1 || { rm -rf "$CROSS_VENV"; tail -5 "$ROOT.pyfhel.log" >&2; die "could not make $CROSS_VENV"; }
fi
wheel=$(FHE_EDGE_WHEELS="$HOST_WHEELS" FHE_EDGE_PYFHEL_AARCH64_ROOT="$SYSROOT_DIR/root" \
          "$REPO/scripts/build-pyfhel.sh" "$CROSS_VENV/bin/python" 2>> "$ROOT.pyfhel.log") \
  || { tail -30 "$ROOT.pyfhel.log" >&2; die "cross-building the aarch64 Pyfhel wheel failed (log: $ROOT.pyfhel.log)"; }
log "$(basename "$wheel")"
if grep -q "building Pyfhel" "$ROOT.pyfhel.log"; then phase_end; else phase_end reuse; fi

phase_start "arm64 root (debootstrap bookworm)"
if [ -n "$ROOT_JOB" ]; then
  wait "$ROOT_JOB" || die "making the arm64 root failed (log: $ROOT.debootstrap.log)"
  ROOT_JOB=''
  mount_root
  root_follows_host
  # its own duration (make_root touches the marker last), most of it beside the wheel's
  record "$PHASE" ok "$(( $(stat -c %Y "$MARKER") - ROOT_T0 ))"; PHASE=
else
  log "reusing $ROOT"
  mount_root
  root_follows_host
  add_missing_root_packages
  phase_end reuse
fi
[ "$(timeout 120 chroot "$ROOT" /usr/bin/uname -m)" = aarch64 ] \
  || die "an aarch64 program in $ROOT did not run as aarch64 (binfmt/qemu broken?)"
ROOT_WHEELS=$ROOT/root/.cache/fhe-edge/wheels
mkdir -p "$ROOT_WHEELS" && cp -u "$wheel" "$ROOT_WHEELS/"

# -- 3. the repository in the root, set up by its own recipe -----------------------------------
phase_start "copy repository into the root"
# HEAD plus uncommitted changes to tracked files; the root keeps its own .venv across runs.
rev=$(git -C "$REPO" stash create 2>/dev/null || true)
rev=${rev:-HEAD}
DEST=$ROOT$SRC_IN_ROOT
mkdir -p "$DEST"
find "$DEST" -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf {} +
git -C "$REPO" archive "$rev" | tar -x -C "$DEST"
log "copied $(git -C "$REPO" rev-parse --short HEAD)$([ "$rev" = HEAD ] || echo ' + uncommitted changes') to $SRC_IN_ROOT"
phase_end

phase_start "scripts/setup.sh inside the root"
# FHE_EDGE_SKIP_APT: the root carries only the gateway side's Debian packages (arm64-root.sh).
LIMIT=5400 in_root FHE_EDGE_SKIP_APT=1 bash "$SRC_IN_ROOT/scripts/setup.sh" > "$ROOT.setup.log" 2>&1 \
  || { tail -30 "$ROOT.setup.log" >&2; die "scripts/setup.sh failed inside the root (log: $ROOT.setup.log)"; }
tail -1 "$ROOT.setup.log"
in_root "$SRC_IN_ROOT/.venv/bin/python" -c \
  'import platform, Pyfhel; assert platform.machine() == "aarch64", platform.machine(); print("aarch64 Pyfhel", Pyfhel.__version__)' \
  || die "the root's venv has no working aarch64 Pyfhel"
phase_end

FAILED=0
# -- 4. cross-architecture round trip (before the tests: it is the quicker one) ----------------
make_input() {  # the first N calibration samples beside the model, stacked as (N, *model input)
  PYTHONPATH=$REPO "$HPY" - "$MODEL" "$WORK/input.npy" "$N" <<'PY'
import sys, numpy as np, onnx
model, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
shape = tuple(d.dim_value for d in onnx.load(model).graph.input[0].type.tensor_type.shape.dim)
cal = np.load(model[: -len(".onnx")] + ".calibration.npy").astype(np.float32)
np.save(out, cal[:n].reshape((n,) + shape))
PY
}
compare_with_onnxruntime() {  # both decrypted results vs onnxruntime on the same inputs
  PYTHONPATH=$REPO "$HPY" - "$MODEL" "$WORK" <<'PY'
import sys
import numpy as np
import onnxruntime as ort
model, work = sys.argv[1], sys.argv[2]
x = np.load(f"{work}/input.npy")
sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
name = sess.get_inputs()[0].name
ref = np.stack([np.concatenate([o.ravel() for o in sess.run(None, {name: xi})]) for xi in x])
span = float(ref.max() - ref.min())
worst = 0.0
for kind in ("emulated", "native"):
    y = np.load(f"{work}/{kind}.npy").reshape(ref.shape)
    err = float(np.max(np.abs(y - ref)))
    worst = max(worst, err)
    print(f"{kind} result decrypted on the host vs onnxruntime: max abs error {err:.2e} "
          f"(output range [{ref.min():.3f}, {ref.max():.3f}], {err / max(span, 1e-12):.1e} of it)")
# the tolerance `protect` itself applies: 1e-2 of the output range
sys.exit(0 if worst <= 1e-2 * max(span, 1e-12) else 1)
PY
}
# `edge-agent infer`, and a check that it loaded none of the owner-side stacks: a gateway needs
# neither onnxruntime (the oracle) nor onnx nor torch to infer, and must not pay for importing them.
GATEWAY_INFER='import sys
from edge_agent.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as e:
    rc = e.code
heavy = sorted(m for m in ("onnxruntime", "onnx", "torch") if m in sys.modules)
sys.exit(f"edge-agent infer imported {heavy}; the gateway path must not" if heavy else rc)'
host() { (cd "$WORK" && PYTHONPATH=$REPO "$HPY" -m "$@"); }
step() {  # step NAME CMD...: output to $WORK/NAME.log; on failure show it and fail
  if "${@:2}" > "$WORK/$1.log" 2>&1; then return 0; fi
  echo "--- round trip step '$1' failed:" >&2; tail -20 "$WORK/$1.log" >&2; return 1
}
roundtrip() {
  local in_root_work=/tmp/fhe-edge-roundtrip
  rm -rf "${ROOT:?}$in_root_work" && mkdir -p "$ROOT$in_root_work"
  step protect host backend_decryptor.cli protect "$MODEL" --model-id arm64-check --store store &&
  step export host backend_decryptor.cli export arm64-check --out model.bundle --store store &&
  step input make_input &&
  step native host edge_agent.cli infer --bundle model.bundle --owner-key model.bundle.owner.pub input.npy --out native &&
  cp "$WORK/model.bundle" "$WORK/model.bundle.owner.pub" "$WORK/input.npy" "$ROOT$in_root_work/" &&
  step emulated in_root /usr/bin/env -C "$in_root_work" "$SRC_IN_ROOT/.venv/bin/python" -c "$GATEWAY_INFER" \
    infer --bundle model.bundle --owner-key model.bundle.owner.pub input.npy --out emulated &&
  cp -r "$ROOT$in_root_work/emulated" "$WORK/emulated" &&
  step decrypt-emulated host backend_decryptor.cli decrypt arm64-check emulated --out emulated.npy --store store &&
  step decrypt-native host backend_decryptor.cli decrypt arm64-check native --out native.npy --store store &&
  step compare compare_with_onnxruntime
  local rc=$?
  rm -rf "${ROOT:?}$in_root_work"
  return $rc
}
each() { grep -o '[0-9.]* s each' "$1" 2>/dev/null | cut -d' ' -f1 || echo '?'; }

if [ $RUN_ROUNDTRIP -eq 1 ]; then
  phase_start "round trip host -> arm64 -> host"
  HPY=$REPO/.venv/bin/python
  [ -x "$HPY" ] || die "the host has no $REPO/.venv (run scripts/setup.sh on the host first)"
  WORK=$(mktemp -d)
  MODEL=$REPO/models/crowd_incident.onnx
  N=${FHE_EDGE_ARM64_INFERENCES:-3}
  if roundtrip; then phase_end ok; else FAILED=1; phase_end FAIL; fi
  [ ! -f "$WORK/compare.log" ] || while IFS= read -r line; do NOTES+=("$line"); done < "$WORK/compare.log"
  NOTES+=("edge-agent infer, shipped model's bundle, the same $N inputs, s per inference:"
          "  native x86_64 $(each "$WORK/native.log")  emulated aarch64 $(each "$WORK/emulated.log") (qemu: not ARM hardware speed)")
fi
# -- 5. the gateway-side tests under emulation -------------------------------------------------
if [ $RUN_TESTS -eq 1 ]; then
  phase_start "pytest under emulation"
  if in_root bash -c "cd $SRC_IN_ROOT && PYTHONPATH=$SRC_IN_ROOT .venv/bin/python -m pytest -q -p no:cacheprovider --durations=5 $(printf '%q ' "${TESTS[@]}")" \
      > "$ROOT.pytest.log" 2>&1; then
    phase_end ok
  else
    FAILED=1; tail -40 "$ROOT.pytest.log" >&2; phase_end FAIL
  fi
  NOTES+=("pytest under emulation: $(grep -E '(passed|failed|error)' "$ROOT.pytest.log" | tail -1 | tr -d '=') (log: $ROOT.pytest.log)")
fi

[ $FAILED -eq 0 ] || exit 1
