"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
# The suite's networks are tiny: one intra-op thread per process is faster than two on a 2-core
# machine, and the DDP tests' spawned processes (which inherit this variable) do not oversubscribe.
os.environ.setdefault("OMP_NUM_THREADS", "1")

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _intra_op_threads():
    """Every test starts with OMP_NUM_THREADS intra-op threads (1 unless set) and cannot leak a change."""
    threads = torch.get_num_threads()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    yield
    torch.set_num_threads(threads)
SHARED_MNIST = REPO_ROOT.parent / "shared" / "data" / "mnist"


@pytest.fixture
def shared_mnist_dir() -> Path:
    """The real MNIST test set beside the checkout (../shared/data/mnist); skip where it is absent."""
    if not (SHARED_MNIST / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"the real MNIST test files are not at {SHARED_MNIST} (they sit beside the checkout in CI)")
    return SHARED_MNIST
