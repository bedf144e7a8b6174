#!/usr/bin/env bash
# Install the anchor libraries of the curvature benchmarks into .venv WITHOUT touching torch.
#
#   bash benchmarks/setup_anchors.sh            # from the repository root (or anywhere)
#   VENV=/path/to/venv bash benchmarks/setup_anchors.sh
#
# Anchors: PyHessian 0.1, curvlinops-for-pytorch 3.0.1 (+ backpack-for-pytorch, which it
# imports), hessian-eigenthings 1.0.0a5, torch-cka 0.21, galore-torch 1.0, repeng 0.4.0,
# steering-vectors 0.12.2, fancyimpute 0.7.0. (Optional, not installed here: `pip install ray`
# for d_int90_search(backend="ray").) A plain `pip install curvlinops-for-pytorch` pulls
# backpack-for-pytorch -> torchvision, whose newest release pins the newest torch: pip then
# replaces our CPU torch 2.13.0 by a CUDA build plus ~4.5 GB of nvidia wheels. So every package
# is installed with --no-deps (the pure-Python dependencies are listed by hand, each pinned)
# and under the torch constraint. torchvision is deliberately NOT installed: backpack imports
# it only for its example/utility modules, none of which the benchmarks use.
#
# Idempotent: pip skips what is already installed at the pinned version. Fails loudly if
# torch is not 2.13.0+cpu at the end or an anchor does not import.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
EXPECTED_TORCH="2.13.0+cpu"

if [[ ! -x "$PY" ]]; then
    echo "setup_anchors: no virtual environment at $VENV (run 'make venv' first)" >&2
    exit 1
fi

before="$("$PY" -c 'import torch; print(torch.__version__)')"
if [[ "$before" != "$EXPECTED_TORCH" ]]; then
    echo "setup_anchors: torch is $before before installing, expected $EXPECTED_TORCH" >&2
    exit 1
fi

# Pure-Python dependencies of the anchors (numpy, scipy, torch are already in the venv).
DEPS=(
    "packaging>=21"          # imported by unfoldNd
    "einops==0.8.2"          # backpack, curvlinops
    "unfoldNd==0.2.3"        # backpack (convolution utilities)
    "einconv==0.1.0"         # curvlinops (KFAC for convolutions)
    "opt-einsum==3.4.0"      # curvlinops
    "linear_operator==0.6.1" # curvlinops (inverse operators)
    "tqdm>=4"                # curvlinops (progress bars)
)
ANCHORS=(
    "backpack-for-pytorch==1.7.1"
    "curvlinops-for-pytorch==3.0.1"
    "pyhessian==0.1"
    "hessian-eigenthings==1.0.0a5"
    "torch-cka==0.21"                # minibatch CKA (benchmarks/similarity_cka.py)
)

"$PY" -m pip install --quiet --disable-pip-version-check --no-deps \
    -c "$ROOT/constraints.txt" "${DEPS[@]}" "${ANCHORS[@]}"

# Optimizer anchor: galore-torch 1.0 imports transformers, bitsandbytes and tensorly.
"$PY" -m pip install --quiet --disable-pip-version-check -c "$ROOT/constraints.txt" \
    "galore-torch==1.0" "bitsandbytes==0.50.2" "tensorly==0.10.0"
# Steering anchors: repeng wants numpy < 2 and steering-vectors transformers < 5, so both come
# without their dependencies (the benchmark adapts repeng to NumPy 2 at run time); gguf is a
# repeng import.
"$PY" -m pip install --quiet --disable-pip-version-check --no-deps -c "$ROOT/constraints.txt" \
    "repeng==0.4.0" "steering-vectors==0.12.2"
"$PY" -m pip install --quiet --disable-pip-version-check -c "$ROOT/constraints.txt" "gguf==0.19.0"
# Completion anchor: fancyimpute 0.7 imports cvxpy at load time and knnimpute needs six; the
# benchmark maps scikit-learn >= 1.8's renamed check_array argument at run time.
"$PY" -m pip install --quiet --disable-pip-version-check -c "$ROOT/constraints.txt" \
    cvxpy cvxopt six
"$PY" -m pip install --quiet --disable-pip-version-check --no-deps -c "$ROOT/constraints.txt" \
    "fancyimpute==0.7.0" "knnimpute==0.1.0"

after="$("$PY" -c 'import torch; print(torch.__version__)')"
if [[ "$after" != "$EXPECTED_TORCH" ]]; then
    echo "setup_anchors: FAILED: torch changed from $before to $after;" \
        "reinstall it with: $PY -m pip install torch==2.13.0 -c constraints.txt" >&2
    exit 1
fi

"$PY" - <<'EOF'
import importlib.metadata as md
import warnings

warnings.simplefilter("ignore")
import curvlinops  # noqa: F401
import galore_torch  # noqa: F401
import hessian_eigenthings  # noqa: F401
import steering_vectors  # noqa: F401
from pyhessian import hessian  # noqa: F401

for dist in ("pyhessian", "curvlinops-for-pytorch", "backpack-for-pytorch", "hessian-eigenthings",
             "galore-torch", "repeng", "steering-vectors", "fancyimpute", "torch"):
    print(f"  {dist:<24} {md.version(dist)}")
EOF
echo "setup_anchors: OK (torch still $after)"
