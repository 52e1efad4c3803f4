"""End-to-end tests (the real pipeline, kill/resume, the browser, load, concurrency): each is marked ``slow``.

``.ci/run`` runs them with everything else; ``pytest -m "not slow"`` leaves them out for a quick local loop.
"""
from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.slow)
