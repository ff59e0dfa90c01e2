"""Fixtures shared by several test files."""

from __future__ import annotations

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` skip where no CUDA device is present."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture
def one_thread():
    """Run the test with one torch thread (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
