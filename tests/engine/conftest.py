"""Fixtures of the engine tests."""
from __future__ import annotations

import pytest

from protected_nn.compiler import planner


@pytest.fixture(scope="module")
def forced_mapped():
    """Force the multi-ciphertext packing (the planner would pick either for models this small)."""
    mp = pytest.MonkeyPatch()
    mp.setattr(planner, "_compile_best", lambda n, o, g, p: planner._compile(n, o, g, p, mapped=True))
    yield
    mp.undo()
