"""Version strings read as release numbers, pre-releases below their release."""

from __future__ import annotations

import pytest

from vidlstm.utils.versions import at_least, release


@pytest.mark.parametrize(("version", "numbers", "final"), [
    ("0.17.0+cu130", (0, 17, 0), True), ("5.1.0", (5, 1, 0), True), ("4.10.0.84", (4, 10, 0, 84), True),
    ("0.18.0.dev20260701", (0, 18, 0), False), ("5.1.0rc1", (5, 1, 0), False), ("2.0.post1", (2, 0), True),
    ("", (), False), ("unknown", (), False)])
def test_release_numbers(version: str, numbers: tuple[int, ...], final: bool) -> None:
    assert release(version) == (numbers, final)


@pytest.mark.parametrize(("version", "expected"), [
    ("0.17", True), ("0.17.0", True), ("0.17.1", True), ("1.0", True), ("0.18.0a1", True),
    ("0.16.9", False), ("0.17.0rc2", False), ("0.17.0.dev1", False), ("0.9", False), ("", False)])
def test_at_least(version: str, expected: bool) -> None:
    assert at_least(version, (0, 17)) is expected
