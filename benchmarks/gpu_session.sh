#!/usr/bin/env bash
# The whole GPU check in one call, for the few minutes a GPU is lent:
#
#   OUT=/some/folder bash benchmarks/gpu_session.sh        # BUDGET=480 by default
#
# 1. records nvidia-smi and the Python stack;
# 2. installs the project from this checkout without touching the network
#    (falls back to PYTHONPATH when pip cannot install it offline);
# 3. runs `python -m gpu_cnmf.bench --device both --budget $BUDGET --out $OUT/bench`,
#    which runs `pytest -m gpu` first (log and JUnit XML in $OUT/bench, counts
#    in bench.json) and then every stage on the GPU and the CPU.
# Everything lands under $OUT; the bench stops at its budget with what it has,
# so the whole call ends within BUDGET + about a minute.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench_out}
BUDGET=${BUDGET:-480}
PY=${PYTHON:-python3}
mkdir -p "$OUT/bench"
{
  date -u
  nvidia-smi 2>&1 || echo "nvidia-smi: not available"
  "$PY" -c "import torch, sys; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
  "$PY" -c "import cupy; print('cupy', cupy.__version__)" 2>&1 || true
} > "$OUT/environment.txt" 2>&1
timeout 60 "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . \
  > "$OUT/pip_install.log" 2>&1 || echo "pip install -e . failed offline: using PYTHONPATH" >> "$OUT/pip_install.log"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -m gpu_cnmf.bench --device both --budget "$BUDGET" --out "$OUT/bench" 2> "$OUT/bench/stderr.log"
rc=$?
tail -n 5 "$OUT/bench/stderr.log"
exit $rc
