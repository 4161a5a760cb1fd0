#!/usr/bin/env bash
# A separate virtual environment for the d3rlpy baseline (d3rlpy pins gymnasium==1.0.0).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-d3rlpy
.venv-d3rlpy/bin/pip install -q torch==2.13.0
.venv-d3rlpy/bin/pip install -q "d3rlpy==2.8.1" "gymnasium[mujoco]==1.0.0" minari h5py
