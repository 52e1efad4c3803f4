"""Fixtures of the run-folder tests."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture()
def key_env(tmp_path, monkeypatch) -> Path:
    key = tmp_path / "keys" / "signing.key"
    monkeypatch.setenv("KNNGUARD_SIGNING_KEY", str(key))
    monkeypatch.delenv("KNNGUARD_REQUIRE_SIGNATURE", raising=False)
    return key
