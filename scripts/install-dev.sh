#!/usr/bin/env bash
# Install autoenc for development into the active environment: the package in editable mode
# with every extra the test suite and the docs use, and Visdom (which needs a build constraint).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --upgrade pip
python -m pip install -q -e ".[dev,plot,tensorboard,docs]"
bash .ci/install-visdom.sh
