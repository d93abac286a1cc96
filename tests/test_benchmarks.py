"""Benchmarks stay runnable: each script runs on a tiny load and prints its figures."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT, cli_env


def test_revor_client_benchmark_prints_a_ratio():
    result = subprocess.run([sys.executable, "-m", "benchmarks.revor_client", "--count", "10", "--rounds", "1"],
                            cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    ratio_line = result.stdout.strip().splitlines()[-1]
    assert ratio_line.startswith("ratio client/bare")
    assert float(ratio_line.split(":")[1]) > 0


def test_ingest_benchmark_stores_every_event_and_prints_a_ratio():
    result = subprocess.run([sys.executable, "-m", "benchmarks.ingest_generic", "--requests", "40", "--rounds", "1",
                             "--workers", "1", "--clients", "2"],
                            cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr + result.stdout
    lines = result.stdout.strip().splitlines()
    assert "events stored by the bridge: 140 of 140 sent" in lines
    assert lines[-1].startswith("ratio bridge/bare") and float(lines[-1].split(":")[1].split()[0]) > 0


def test_pipeline_benchmark_gets_every_event_to_revor():
    result = subprocess.run([sys.executable, "-m", "benchmarks.pipeline", "--events", "20", "--workers", "1",
                             "--clients", "2", "--noop-jobs", "200"],
                            cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("events: 20 sent, 20 reached Revor's 202, 20 Revor tasks created")
    assert lines[-1].startswith("ratio events/no-ops") and float(lines[-1].split(":")[1].split()[0]) > 0


def test_tracking_benchmark_batches_polls():
    result = subprocess.run([sys.executable, "-m", "benchmarks.tracking", "--dispatches", "120"], cwd=ROOT,
                            env=cli_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("dispatches tracked to their end: 120 of 120")
    poll_jobs = int(lines[1].split(":")[1].split()[0])
    assert 0 < poll_jobs < 120 / 10  # batched: a handful of jobs, not one per dispatch
