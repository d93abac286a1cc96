"""Benchmarks stay runnable: each script runs on a tiny load and prints its figures."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT, cli_env


def test_revor_client_benchmark_prints_a_ratio():
    result = subprocess.run([sys.executable, "benchmarks/revor_client.py", "--count", "10", "--rounds", "1"],
                            cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    ratio_line = result.stdout.strip().splitlines()[-1]
    assert ratio_line.startswith("ratio client/bare")
    assert float(ratio_line.split(":")[1]) > 0
