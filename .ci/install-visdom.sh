#!/usr/bin/env bash
# Install Visdom (the "visdom" extra) into the active Python environment, on a clean machine too.
#
# visdom is published as a source distribution whose setup.py imports pkg_resources, which
# setuptools>=81 no longer ships, so the isolated build fails with a current setuptools. The
# constraints file pins setuptools<81 for that build (and tornado<6.6, with which the Visdom page
# answers 403). It is passed both as PIP_CONSTRAINT, which the isolated build environment of
# older pips inherits, and as --build-constraint where pip knows it (pip>=25.3), because newer
# pips stop applying -c/PIP_CONSTRAINT to build dependencies.
#
# Usage: .ci/install-visdom.sh [extra pip args...]   (PYTHON overrides the interpreter)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
constraints="$here/visdom-constraints.txt"
python="${PYTHON:-python}"

build_args=()
if "$python" -m pip install --help 2>/dev/null | grep -q -- "--build-constraint"; then
    build_args=(--build-constraint "$constraints")
fi

PIP_CONSTRAINT="$constraints" "$python" -m pip install "${build_args[@]}" \
    -c "$constraints" "visdom>=0.2.4" "tornado<6.6" "$@"

# Fail here, not in the tests, if the install is unusable.
"$python" - <<'PY'
import importlib.metadata as md

import tornado
import visdom.server.run_server  # noqa: F401  (the entry point the tests start)

major, minor = (int(p) for p in tornado.version.split(".")[:2])
assert (major, minor) < (6, 6), f"tornado {tornado.version} makes Visdom answer 403; need <6.6"
print(f"visdom {md.version('visdom')} with tornado {tornado.version} installed")
PY
