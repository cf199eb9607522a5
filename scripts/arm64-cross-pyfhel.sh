# Sourced by scripts/build-pyfhel.sh when FHE_EDGE_PYFHEL_AARCH64_ROOT names an arm64 sysroot:
# the aarch64 wheel is then cross-built on the x86 host by Debian's aarch64-linux-gnu-g++ (package
# g++-aarch64-linux-gnu) instead of compiling SEAL and Cython's output under qemu (an hour on this
# 2-core VM). The sysroot (an arm64 Debian root, or scripts/arm64-sysroot.sh's unpacked packages)
# provides the target's Python headers and sysconfig, libz and libzstd, GSL; glibc and libstdc++
# come from the cross toolchain. distutils takes the compiler, flags and extension suffix from
# the target's _sysconfigdata, so the build is the native recipe. SEAL's configure-time checks
# that must *run* a program run it under qemu.
#
# In: CROSS_ROOT, VPY (a host interpreter of the root's Python version), tmp. Checks the root
# before anything is downloaded; out: CROSS_ENV, CROSS_PIP, CROSS_CMAKE (toolchain lines) and
# cross_build_requires SRC.
# shellcheck shell=bash
cross_fail() { echo "build-pyfhel: aarch64 cross build: $*" >&2; exit 1; }

command -v aarch64-linux-gnu-g++ >/dev/null \
  || cross_fail "aarch64-linux-gnu-g++ not found (apt-get install g++-aarch64-linux-gnu)"
command -v qemu-aarch64-static >/dev/null \
  || cross_fail "qemu-aarch64-static not found (apt-get install qemu-user-static)"
sysconfigdata=("$CROSS_ROOT"/usr/lib/python3.*/_sysconfigdata__linux_aarch64-linux-gnu.py)
[ ${#sysconfigdata[@]} -eq 1 ] && [ -e "${sysconfigdata[0]}" ] \
  || cross_fail "$CROSS_ROOT has no (or several) aarch64 Python sysconfig (is python3 installed there?)"
target_py=$(basename "$(dirname "${sysconfigdata[0]}")")             # python3.11
host_py=$("$VPY" -c 'import sys; print(f"python{sys.version_info[0]}.{sys.version_info[1]}")')
[ "$host_py" = "$target_py" ] \
  || cross_fail "$VPY is $host_py but the root's Python is $target_py (the wheel's cpXY tag must match)"
for h in "usr/include/$target_py/Python.h" usr/include/aarch64-linux-gnu/"$target_py"/pyconfig.h \
         usr/include/zstd.h usr/include/zlib.h usr/include/gsl/span; do
  [ -e "$CROSS_ROOT/$h" ] || cross_fail "$CROSS_ROOT lacks /$h (its -dev packages are missing)"
done

mkdir -p "$tmp/sysconfig"
cp -L "${sysconfigdata[0]}" "$tmp/sysconfig/"
CROSS_CMAKE="set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_SYSROOT \"$CROSS_ROOT\")
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64-static -L /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
"

# Pyfhel's own build requirements (from the sdist SRC), installed into the host interpreter: with
# build isolation pip would choose them for the target platform (an aarch64 cmake cannot run here).
cross_build_requires() {
  local reqs
  reqs=$("$VPY" -c 'import sys, tomllib
print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["build-system"]["requires"]))' "$1/pyproject.toml")
  mapfile -t reqs <<< "$reqs"
  "$VPY" -m pip install -q --upgrade "${reqs[@]}" >&2   # the newest, as build isolation would
}

# distutils reads _sysconfigdata__linux_aarch64-linux-gnu (CC=aarch64-linux-gnu-gcc, the aarch64
# extension suffix) and tags the wheel linux_aarch64; the root's Python headers come first.
CROSS_ENV=(_PYTHON_HOST_PLATFORM=linux-aarch64
           _PYTHON_SYSCONFIGDATA_NAME=_sysconfigdata__linux_aarch64-linux-gnu
           PYTHONPATH="$tmp/sysconfig" PATH="$(dirname "$VPY"):$PATH"   # its cmake, as in isolation
           CPPFLAGS="--sysroot=$CROSS_ROOT -I$CROSS_ROOT/usr/include/$target_py")
# (CPPFLAGS, not CFLAGS/CXXFLAGS: distutils adds it to every compile and link line, while CFLAGS
# and CXXFLAGS replace the interpreter's own flags. SEAL's CMake build gets the sysroot above.)
CROSS_PIP=(--no-build-isolation)
