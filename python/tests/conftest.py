"""Shared fixtures; GPU tests (``-m gpu``) are skipped without a CUDA GPU and torch."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU and torch")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    """A directory for test files (PHXFS_TEST_DIR if set: a file system with O_DIRECT)."""
    base = os.environ.get("PHXFS_TEST_DIR")
    if base:
        d = Path(base) / tmp_path.name
        d.mkdir(parents=True, exist_ok=True)
        return d
    return tmp_path


@pytest.fixture
def data_file(tmp: Path) -> Iterator[Path]:
    """A 1 MiB file of known bytes (i % 251)."""
    p = tmp / "data.bin"
    p.write_bytes(bytes(i % 251 for i in range(1 << 20)))
    yield p
