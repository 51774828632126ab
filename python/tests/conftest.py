"""Fixtures: the prh binary (PRH_BIN, set by tests/python.rs) and registries made with it."""

import json
import os
import subprocess
from pathlib import Path

import pytest

BIN = os.environ.get("PRH_BIN", "prh")


def cli(reg: Path, *args: str) -> str:
    """Runs `prh --registry REG ARGS…`, asserts success, returns stdout."""
    p = subprocess.run(
        [BIN, "--registry", str(reg), *args], capture_output=True, text=True
    )
    assert p.returncode == 0, f"prh {args} failed: {p.stderr}"
    return p.stdout


def cli_json(reg: Path, *args: str):
    return json.loads(cli(reg, *args, "--format", "json"))


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> Path:
    """The demo zoo (12 models, 6 layers, n = 256), aligned language × vision, plus every
    checkpoint of lm-large against the vision models."""
    reg = tmp_path_factory.mktemp("demo") / "reg"
    cli(reg, "demo", "--dir", str(reg))
    cli(reg, "align", "--metric", "mutual_knn", "--x", "lm-large", "--y", "modality=vision",
        "--all-checkpoints", "-q")
    return reg


@pytest.fixture
def empty(tmp_path) -> Path:
    reg = tmp_path / "reg"
    cli(reg, "init")
    return reg


def pytest_sessionfinish(session, exitstatus):
    """A skipped test is a failed run: CI must not pass with tests that did not run (a missing
    optional package, a platform check)."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if skipped and session.exitstatus == 0:
        print(f"\n{skipped} test(s) skipped: failing the run (every test must run)")
        session.exitstatus = 1
