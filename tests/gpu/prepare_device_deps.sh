#!/usr/bin/env bash
# Runs HERE (the development machine, Debian 12), before a device check: copies
# what the lent H200 machine lacks for building kernels/ and the GPU tests
# into build/device-deps (ignored by git; carry it to the device):
#   include/{absl,gtest,gmock,nlohmann}           headers
#   lib/x86_64-linux-gnu/libabsl_*.so*            Abseil shared libraries
#   lib/x86_64-linux-gnu/lib{gtest,gmock}*.a|.so* GoogleTest (Debian ships .a)
#   lib/x86_64-linux-gnu/cmake/{absl,GTest}       their CMake package configs
#   share/cmake/nlohmann_json                     (tests/kernels needs it to configure)
#   testvectors/                                  a copy of shared/testvectors
# The CMake configs locate everything relative to themselves, so the tree works
# from any prefix: device_check.sh passes it as CMAKE_PREFIX_PATH (and the
# *_DIR variables) and puts the lib folder on LD_LIBRARY_PATH.
#
# usage: tests/gpu/prepare_device_deps.sh [DEST]   (default build/device-deps)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEST="${1:-$ROOT/build/device-deps}"
ARCH_LIB=/usr/lib/x86_64-linux-gnu
SHARED="${SIGMA_SHARED_DIR:-}"
if [[ -z "$SHARED" ]]; then
  for c in "$ROOT/shared" "$ROOT/../shared"; do
    if [[ -d "$c/testvectors" ]]; then SHARED="$c"; break; fi
  done
fi

need() { [[ -e "$1" ]] || { echo "prepare_device_deps: missing $1 (apt-get install $2)" >&2; exit 1; }; }
need /usr/include/absl/status/status.h libabsl-dev
need "$ARCH_LIB/cmake/absl/abslConfig.cmake" libabsl-dev
need /usr/include/gtest/gtest.h libgtest-dev
need "$ARCH_LIB/cmake/GTest/GTestConfig.cmake" libgtest-dev

rm -rf "$DEST"
mkdir -p "$DEST/include" "$DEST/lib/x86_64-linux-gnu/cmake" "$DEST/share/cmake"
cp -a /usr/include/absl /usr/include/gtest "$DEST/include/"
[[ -d /usr/include/gmock ]] && cp -a /usr/include/gmock "$DEST/include/"
cp -a "$ARCH_LIB"/libabsl_*.so* "$DEST/lib/x86_64-linux-gnu/"
shopt -s nullglob
for f in "$ARCH_LIB"/libgtest*.so* "$ARCH_LIB"/libgtest*.a "$ARCH_LIB"/libgmock*.so* "$ARCH_LIB"/libgmock*.a; do
  cp -a "$f" "$DEST/lib/x86_64-linux-gnu/"
done
shopt -u nullglob
cp -a "$ARCH_LIB/cmake/absl" "$ARCH_LIB/cmake/GTest" "$DEST/lib/x86_64-linux-gnu/cmake/"
if [[ -d /usr/include/nlohmann && -d /usr/share/cmake/nlohmann_json ]]; then
  cp -a /usr/include/nlohmann "$DEST/include/"
  cp -a /usr/share/cmake/nlohmann_json "$DEST/share/cmake/"
else
  echo "prepare_device_deps: note: nlohmann-json3-dev not installed; tests/kernels may not configure on the device" >&2
fi
if [[ -n "$SHARED" && -d "$SHARED/testvectors" ]]; then
  cp -a "$SHARED/testvectors" "$DEST/testvectors"
else
  echo "prepare_device_deps: note: shared/testvectors not found; the device check will skip them" >&2
fi
# The copied CMake configs must find everything through _IMPORT_PREFIX
# (computed from their own location). Their only absolute paths are CMake's
# "is this still the original install dir?" checks (_realOrig), harmless here.
abs=$(grep -rIn --include='*.cmake' -e '"/usr/' "$DEST/lib/x86_64-linux-gnu/cmake" "$DEST/share/cmake" 2>/dev/null \
        | grep -v -e '_realOrig' -e 'set(_IMPORT_PREFIX "/usr' || true)
if [[ -n "$abs" ]]; then
  echo "prepare_device_deps: warning: absolute /usr paths in copied CMake configs:" >&2
  echo "$abs" >&2
fi
size_kib=$(du -sk "$DEST" | cut -f1)
echo "prepare_device_deps: $DEST ($((size_kib / 1024)) MiB)"
if (( size_kib > 40 * 1024 )); then
  echo "prepare_device_deps: error: larger than 40 MiB" >&2
  exit 1
fi
