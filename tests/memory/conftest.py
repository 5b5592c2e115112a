"""The sampler choice: tests that run the monitor's sampler run once per sampler."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from montage.memory import native

NATIVE_MISSING = "the native sampler extension was not built (no C compiler at install?)"


@pytest.fixture(params=["native", "python"])
def sampler(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with the native sampler, then with ``MONTAGE_NATIVE_SAMPLER=0``."""
    kind = str(request.param)
    if kind == "native" and native.extension() is None:
        pytest.skip(NATIVE_MISSING)
    monkeypatch.setenv(native.ENV, "1" if kind == "native" else "0")
    assert native.sampler_kind() == kind
    return kind


def wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout_s`` passes; its last answer."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()
