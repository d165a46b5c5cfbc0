#!/usr/bin/env bash
# The one prepared GPU session (guide: under 8 minutes, the most valuable GPU work first):
#   1. pretraining steps (issue 15: the prior is the science's bottleneck), benchmarks/gpu_pretrain.py, ~3.5 min;
#   2. the Triton neighbour tests on the GPU and the benchmark tables of issue 19 (benchmarks/gpu_session.py) in
#      the time left.
#
# Here, before the device run (../shared and the package registry are reachable here, nothing is there):
#   bash benchmarks/gpu_session.sh --pack      # .gpu/: the pretraining DFT sets (they live in ../shared, which
#                                              # does not travel), then wheels into .whl/ as many as fit beside
#                                              # the working tree under the 64 MiB travel limit (ASE first)
# On the device machine (the `run` tool, from the repo root, carry [".gpu", ".whl"]), one command:
#   bash benchmarks/gpu_session.sh             # [--dry-run] [--sections neighbors,relax,training]
# It installs the carried wheels offline (pip --no-index) into /tmp/gpu-site, or none if .whl/ is absent;
# downloads nothing. With $OUT set (the device machine) it leaves there pretrain.tar (new pretraining state and
# logs: `tar -xf <files_at>/pretrain.tar -C checkpoints/pretrain5`, the folder it prints, then commit), the
# gpu_*.md tables (copy into benchmarks/results/) and the log. PRETRAIN_MINUTES=0 skips the pretraining; --dry-run runs everything on CPU
# on tiny sizes and a copy of the state.
set -u
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--pack" ]; then
    shift
    python3 benchmarks/gpu_pretrain.py --pack || exit
    exec python3 benchmarks/gpu_wheels.py "$@"
fi
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
started=$(date +%s)
dry=""
for arg in "$@"; do [ "$arg" = "--dry-run" ] && dry="--dry-run"; done
if ls .whl/*.whl > /dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu-site \
        .whl/*.whl && export PYTHONPATH="/tmp/gpu-site:$PYTHONPATH"
else
    echo "gpu_session: no wheels in .whl/ (bash benchmarks/gpu_session.sh --pack): peers and ASE not installed"
fi
log=$(mktemp)
pretrain_out=$(mktemp -d)
has_cuda() { python3 -c "import torch; assert torch.cuda.is_available()" 2> /dev/null; }
{
    if [ "${PRETRAIN_MINUTES:-3.5}" = "0" ]; then
        echo "== Pretraining skipped (PRETRAIN_MINUTES=0) =="
    elif ! python3 -c "import ase" 2> /dev/null; then
        echo "== Pretraining skipped: ASE not installed (bash benchmarks/gpu_session.sh --pack, carry .whl) =="
    elif [ ! -f .gpu/pretrain.json ]; then
        echo "== Pretraining skipped: no .gpu/pretrain.json (bash benchmarks/gpu_session.sh --pack, carry .gpu) =="
    elif [ -z "$dry" ] && ! has_cuda; then
        echo "== Pretraining skipped: no CUDA device (--dry-run checks the path on CPU) =="
    else
        echo "== Pretraining on the device for ${PRETRAIN_MINUTES:-3.5} min (issue 15) =="
        timeout 330 python3 benchmarks/gpu_pretrain.py --minutes "${PRETRAIN_MINUTES:-3.5}" --out "$pretrain_out" \
            $dry 2>&1 | grep -v "step/s"
        echo "gpu_pretrain.py exit status ${PIPESTATUS[0]}"
    fi
    if [ -z "$dry" ] && python3 -c "import ase, pytest" 2> /dev/null && has_cuda; then
        echo "== Triton neighbour tests on the GPU (all random cases against ASE) =="
        timeout 90 python3 -m pytest -q -x -p no:cacheprovider tests/unit/kernels/test_triton_cells.py \
            tests/unit/kernels/test_neighbors.py -k "triton and not compile" 2>&1 | tail -5
    else
        echo "== Triton neighbour tests skipped: needs ASE, pytest and a CUDA device (not run in a dry run) =="
    fi
    left=$(( 470 - ($(date +%s) - started) ))
    budget=$(( left - 60 > 30 ? left - 60 : 30 ))
    timeout $(( left > 60 ? left : 60 )) python3 benchmarks/gpu_session.py --budget "$budget" "$@"
    echo "gpu_session.py exit status $? ($(( $(date +%s) - started )) s since the start)"
} 2>&1 | tee "$log"
if [ -n "${OUT:-}" ]; then
    [ -f "$pretrain_out/pretrain.tar" ] && cp "$pretrain_out/pretrain.tar" "$OUT"/
    [ -z "$dry" ] && cp benchmarks/results/gpu_*.md "$OUT"/ 2> /dev/null
    cp "$log" "$OUT/gpu_session.log"
elif [ -f "$pretrain_out/pretrain.tar" ]; then
    echo "gpu_session: pretraining state and logs in $pretrain_out/pretrain.tar"
fi
