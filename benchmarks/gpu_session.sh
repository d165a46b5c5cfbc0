#!/usr/bin/env bash
# The one prepared GPU benchmark session of issue 19 (item 6). Under 8 minutes on one H100/H200.
#
# Here, before the device run (pip reaches the package registry here, nothing is reachable there):
#   bash benchmarks/gpu_session.sh --pack      # wheels for the device into .whl/ (git-ignored), as many as fit
#                                              # beside the working tree under the 64 MiB travel limit
# On the device machine (the `run` tool, from the repo root, carry [".whl"]), one command:
#   bash benchmarks/gpu_session.sh             # [--dry-run] [--sections neighbors,relax,training]
# It installs the carried wheels offline (pip --no-index) into /tmp/gpu-site, or none if .whl/ is absent;
# downloads nothing; runs the Triton neighbour tests on the GPU (when ASE is there), then
# benchmarks/gpu_session.py, which writes benchmarks/results/gpu_{neighbors,relax,training}.md; with $OUT set
# (the device machine) the tables and the log are copied there, to be copied back into benchmarks/results/.
# Missing peers (vesin-torch, deepmd-kit, torch-sim) or ASE: their rows say "not installed".
set -u
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--pack" ]; then
    shift
    exec python3 benchmarks/gpu_wheels.py "$@"
fi
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
if ls .whl/*.whl > /dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu-site \
        .whl/*.whl && export PYTHONPATH="/tmp/gpu-site:$PYTHONPATH"
else
    echo "gpu_session: no wheels in .whl/ (bash benchmarks/gpu_session.sh --pack): peers and ASE not installed"
fi
log=$(mktemp)
{
    if python3 -c "import ase, pytest" 2> /dev/null && python3 -c "import torch; assert torch.cuda.is_available()" \
            2> /dev/null; then
        echo "== Triton neighbour tests on the GPU (all random cases against ASE) =="
        timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/unit/kernels/test_triton_cells.py \
            tests/unit/kernels/test_neighbors.py -k "triton and not compile" 2>&1 | tail -5
    else
        echo "== Triton neighbour tests skipped: needs ASE, pytest and a CUDA device =="
    fi
    timeout 450 python3 benchmarks/gpu_session.py "$@"
    echo "gpu_session.py exit status $?"
} 2>&1 | tee "$log"
if [ -n "${OUT:-}" ]; then
    out_dir=benchmarks/results
    for arg in "$@"; do [ "$arg" = "--dry-run" ] && out_dir=""; done
    [ -n "$out_dir" ] && cp "$out_dir"/gpu_*.md "$OUT"/ 2> /dev/null
    cp "$log" "$OUT/gpu_session.log"
fi
