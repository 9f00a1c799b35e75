"""Dependency floors at or above the fixed releases of known multipart-parser advisories:
python-multipart >= 0.0.32 and Starlette >= 1.3.1, both in requirements.txt (what `make`
installs) and in the environment the tests run in."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REQUIREMENTS = Path(__file__).resolve().parents[2] / "requirements.txt"
FLOORS = {"python-multipart": Version("0.0.32"), "starlette": Version("1.3.1")}


def pinned() -> dict[str, Requirement]:
    lines = (re.sub(r"\s+#.*", "", line).strip() for line in REQUIREMENTS.read_text().splitlines())
    found = [Requirement(line) for line in lines if line and not line.startswith("#")]
    return {r.name.lower(): r for r in found}


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_requirements_txt_allows_no_release_below_the_fix(name: str) -> None:
    requirement = pinned().get(name)
    assert requirement is not None, f"{name} is not in requirements.txt"
    lower = [Version(s.version) for s in requirement.specifier if s.operator in (">=", "==", "~=")]
    assert lower and max(lower) >= FLOORS[name], f"{requirement} allows releases below {FLOORS[name]}"
    assert not any(s.operator == "<" and Version(s.version) <= FLOORS[name] for s in requirement.specifier)


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_the_installed_release_is_at_or_above_the_fix(name: str) -> None:
    installed = Version(metadata.version(name))
    assert installed >= FLOORS[name], f"{name} {installed} is installed; the advisories are fixed in {FLOORS[name]}"
    assert installed in pinned()[name].specifier
