"""Fixtures shared by every part's tests."""

from __future__ import annotations

import pytest

from tokenyard.runtime.loaders import packaged_model_path


@pytest.fixture(scope="session")
def smollm2_gguf():
    """The real SmolLM2-135M-Instruct (Q4_1 GGUF) that `make install` puts in the venv."""
    path = packaged_model_path()
    assert path is not None, "the packaged model is missing: run `make install`"
    return path
