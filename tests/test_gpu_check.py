"""`bench/gpu_check.py`, the one prepared script for a lent GPU machine, runs whole in its CPU dry
mode (marked `ray`: it starts a local Ray), so that on the GPU it does not fail on a typo."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.ray
def test_the_gpu_check_runs_whole_in_its_cpu_dry_mode(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(done.stdout.rsplit("RESULT_JSON ", 1)[1])
    assert result["dry"] and result["train_fp32_s"] > 0 and result["train_bf16_s"] is None
    assert result["packed_at_once"] >= 2  # trials of half a CPU share the machine's cores
    assert result["reused_model_loads"] == [1, 1, 1]  # one actor served every trial
    assert result["reused_cuda_peak_mb"] == [None, None, None]  # no CUDA figures on the CPU
    assert result["search_complete"] == 2, result["search_statuses"]
