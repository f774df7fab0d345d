#!/usr/bin/env bash
# Fetch the wheels benchmarks/gpu_suite.sh installs on a GPU machine that has no
# network: simpy (pure Python) and xxhash (CPython 3.12, manylinux x86_64), the
# versions this project is tested with. They land in .whl/ (ignored by git),
# which the device command carries along. One version of each is kept: two
# wheels of one package would stop the install there.
set -euo pipefail
cd "$(dirname "$0")/.."

SIMPY_VERSION=4.1.2
XXHASH_VERSION=4.1.0

mkdir -p .whl
find .whl -maxdepth 1 \( -name 'simpy-*.whl' -o -name 'xxhash-*.whl' \) \
    ! -name "simpy-$SIMPY_VERSION-*" ! -name "xxhash-$XXHASH_VERSION-*" -delete
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d .whl "simpy==$SIMPY_VERSION" "xxhash==$XXHASH_VERSION"
ls -l .whl
