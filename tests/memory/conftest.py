"""The sampler choice: tests that run the monitor's sampler run once per sampler."""

from __future__ import annotations

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
