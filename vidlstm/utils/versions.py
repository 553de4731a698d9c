"""Release numbers of the libraries a feature depends on, read from their version strings."""

from __future__ import annotations

import re


def release(version: str) -> tuple[tuple[int, ...], bool]:
    """The release numbers of a version string and whether it is final: "0.17.0+cu130" -> ((0, 17, 0), True),
    "0.18.0.dev20260701" or "5.1.0rc1" -> (..., False) (a build made before that release); ((), False) when the
    string starts with no number."""
    public = version.strip().split("+")[0]
    found = re.match(r"\d+(?:\.\d+)*", public)
    if found is None:
        return (), False
    rest = public[found.end():]
    return tuple(int(part) for part in found.group().split(".")), rest == "" or rest.startswith(".post")


def at_least(version: str, floor: tuple[int, ...]) -> bool:
    """Whether ``version`` is release ``floor`` or later; a pre-release or development build of ``floor`` is not."""
    numbers, final = release(version)
    width = max(len(numbers), len(floor))
    numbers, floor = numbers + (0,) * (width - len(numbers)), floor + (0,) * (width - len(floor))
    return numbers > floor or (numbers == floor and final)
