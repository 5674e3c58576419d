"""Shared fixtures: small converted packages, made once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


def assert_one_line(exc: pytest.ExceptionInfo[Exception], *needles: str) -> str:
    """The error a user sees is one clean line that says what is wrong (each needle in it)."""
    msg = str(exc.value)
    assert "\n" not in msg and msg.strip() == msg, msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


def shared_fixture(name: str) -> Path:
    """A file from ../shared/fixtures, or skip (with the reason) when it is not there."""
    path = SHARED / "fixtures" / name
    if not path.exists():
        pytest.skip(f"{path} not present (../shared is only beside the repo in CI and dev)")
    return path


@pytest.fixture(scope="session")
def small_packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """alpha 0.25 / res 128 random-weight packages: fp16 and fp32, validated at birth."""
    from mnv1_coreml.pipeline import ConvertOptions, convert

    root = tmp_path_factory.mktemp("small")
    made = {}
    for precision in ("fp16", "fp32"):
        out = root / f"MobileNetV1_{precision}.mlpackage"
        opts = ConvertOptions(
            alpha=0.25, res=128, weights="random", precision=precision, output=out
        )
        result = convert(opts)
        assert result.validation is not None and result.validation.passed, (
            result.validation.verdict_line() if result.validation else "not validated"
        )
        made[precision] = out
    return made
