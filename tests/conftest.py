"""Shared test helpers. In CI (CI=true) a missing tool is a failure, never a skip."""

import importlib
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO / "tests"))


def missing(message: str):
    """Something a test needs is absent: skip locally, fail in CI (where .ci/run installs it all)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def require_tool(name: str) -> str:
    """Path of a command-line tool; skip when absent locally, fail in CI."""
    path = shutil.which(name)
    if path:
        return path
    missing(f"required tool '{name}' is not installed (.ci/run installs it)")


def require_module(name: str):
    """An optional Python package the tests use as an oracle (onnxruntime, tflite-micro)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(f"the Python package providing '{name}' is not installed: pip install -e '.[test]'")


def require_file(path: Path) -> Path:
    if path.exists():
        return path
    message = f"required file {path} is missing"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
