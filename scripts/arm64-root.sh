# Sourced by scripts/check-arm64.sh: the arm64 Debian 12 root it runs the gateway side in.
# Uses ROOT, MIRROR, MARKER, die, log, phase_start/phase_end and in_root from the caller.
# shellcheck shell=bash

# Only what the gateway side needs, because every package is unpacked and configured by an
# emulated dpkg (scripts/setup.sh's whole set, 534 packages, took 26 min of a clean run; a root
# with the cross build's -dev packages too, 16 min): the interpreter, OpenMP for Pyfhel, and
# openssl for its /usr/lib/ssl paths to the CA bundle, which is the host's (root_follows_host).
ROOT_PACKAGES=(python3-venv libgomp1 openssl)

host_mirror() {  # first Debian (non-security) URI this machine's apt uses
  local files=(/etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources)
  cat "${files[@]}" 2>/dev/null | awk '
    /^[[:space:]]*#/ { next }
    $1 == "URIs:" { for (i = 2; i <= NF; i++) print $i; next }
    $1 == "deb" { for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /\]$/) { print $i; break } }' \
    | grep -v -e security -e '^cdrom:' | grep -m1 '/debian/\?$' || true
}

make_root() {
  if [ -e "$ROOT" ] && [ -n "$(ls -A "$ROOT")" ]; then
    # Only a root this script started (debootstrap leaves its work dir until it succeeds) is removed.
    [ -d "$ROOT/debootstrap" ] || [ -e "$ROOT/.fhe-edge-arm64-root" ] \
      || die "$ROOT exists, is not empty and is not an unfinished arm64 root of this script; remove it or pick --root"
    local m
    for m in dev/pts dev sys proc; do mountpoint -q "$ROOT/$m" && umount -l "$ROOT/$m"; done
    log "removing the unfinished root $ROOT"
    rm -rf --one-file-system "$ROOT"
  fi
  mkdir -p "$ROOT" && touch "$ROOT/.fhe-edge-arm64-root"
  local packages
  packages=$(IFS=,; echo "${ROOT_PACKAGES[*]}")
  log "debootstrap --arch=arm64 --variant=minbase --include=$packages bookworm from $MIRROR"
  timeout 3600 debootstrap --arch=arm64 --variant=minbase --include="$packages" \
    bookworm "$ROOT" "$MIRROR" > "$ROOT.debootstrap.log" 2>&1 \
    || { tail -20 "$ROOT.debootstrap.log" >&2; die "debootstrap failed (log: $ROOT.debootstrap.log)"; }
  touch "$MARKER"
}

# A root made earlier (or by an older version of this script) may lack a package added since:
# asked of its dpkg database from the host, so an up-to-date root costs no emulated dpkg call.
add_missing_root_packages() {
  local p missing=()
  for p in "${ROOT_PACKAGES[@]}"; do
    dpkg-query --admindir="$ROOT/var/lib/dpkg" -W -f='${Status}' "$p" 2>/dev/null \
      | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  log "installing into the root: ${missing[*]}"
  { LIMIT=1800 in_root apt-get update -qq &&
    LIMIT=3600 in_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}"; } > "$ROOT.apt.log" 2>&1 \
    || { tail -20 "$ROOT.apt.log" >&2; die "apt-get install ${missing[*]} failed inside the root (log: $ROOT.apt.log)"; }
}

# Name resolution, trusted CAs (the host's bundle, with any local CA such as a TLS-inspecting
# egress proxy's, without which pip fails) and apt's acquire settings (proxy, snapshot validity)
# follow the host. Copying the bundle costs nothing; update-ca-certificates under emulation 2.5 min.
root_follows_host() {
  local bundle=/etc/ssl/certs/ca-certificates.crt
  [ -s "$bundle" ] || die "the host has no $bundle (apt-get install ca-certificates): pip in the root needs it"
  cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
  mkdir -p "$ROOT/etc/ssl/certs"
  cmp -s "$bundle" "$ROOT$bundle" || cp -L "$bundle" "$ROOT$bundle"
  apt-config dump 2>/dev/null | grep -E '^Acquire::(Check-Valid-Until|Check-Date|https?::Proxy) ' \
    > "$ROOT/etc/apt/apt.conf.d/90fhe-edge-from-host" || true
}
