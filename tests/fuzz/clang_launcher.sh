#!/bin/sh
# CXX_COMPILER_LAUNCHER / CXX_LINKER_LAUNCHER of the fuzz targets when the
# project's compiler is not clang: `clang_launcher.sh CLANGXX COMPILER ARGS...`
# runs CLANGXX ARGS... (libFuzzer and its coverage instrumentation are clang's).
clang="$1"
shift 2
exec "$clang" "$@"
