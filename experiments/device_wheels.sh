#!/bin/bash
# Wheels of what a GPU machine without network lacks for experiments/gpu_check.py (its image holds torch, triton,
# numba, pandas, h5py, onnx, typer, ...; not gymnasium, MuJoCo or Minari), for CPython 3.12 on x86-64 Linux,
# into .whl/ (ignored by git). There, before the check:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
#   PYTHONPATH=/tmp/site:. python3 experiments/gpu_check.py --out "$OUT"
set -euo pipefail
cd "$(dirname "$0")/.."
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
for pkg in gymnasium==1.4.0 farama-notifications==0.0.6 mujoco==4.0.1 mujoco-core==4.0.1 mujoco-studio==4.0.1 \
           mujoco-studio-wasm==4.0.1 websockets==17.4 glfw==2.11.0 pyopengl==3.1.10 minari==0.5.4; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      "${platforms[@]}" -d .whl "$pkg"
done
du -sh .whl
