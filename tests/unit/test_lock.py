"""requirements.lock (what bootstrap.sh and CI install) agrees with the ranges in pyproject.toml, and .venv with it."""

from __future__ import annotations

import importlib.metadata
import os
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.helpers import PROJECT

LOCK = PROJECT / "requirements.lock"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def locked(text: str) -> dict[str, tuple[str, int]]:
    """Package name (canonical) to its pinned version and number of hashes, from a pip-compile output."""
    pins: dict[str, tuple[str, int]] = {}
    name = None
    for line in text.splitlines():
        if m := PIN.match(line):
            name = canonicalize_name(m.group(1))
            pins[name] = (m.group(2), 0)
        elif name and line.strip().startswith("--hash=sha256:"):
            pins[name] = (pins[name][0], pins[name][1] + 1)
        elif not line.startswith(" "):
            name = None
    return pins


def declared(extras: tuple[str, ...]) -> list[Requirement]:
    """The dependencies of pyproject.toml plus those of the locked extras."""
    project = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return reqs


def lock_extras() -> tuple[str, ...]:
    """The extras scripts/lock.sh passes to pip-compile (the lock holds those and no others)."""
    return tuple(re.findall(r"--extra (\w+)", (PROJECT / "scripts" / "lock.sh").read_text()))


def disagreements(reqs: list[Requirement], pins: dict[str, tuple[str, int]]) -> list[str]:
    """Each declared requirement the lock lacks or pins outside its range, and each pin without a hash."""
    out = []
    for req in reqs:
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        pin = pins.get(canonicalize_name(req.name))
        if pin is None:
            out.append(f"{req.name}: in pyproject.toml, not in requirements.lock")
        elif not req.specifier.contains(pin[0], prereleases=True):
            out.append(f"{req.name}: pyproject.toml asks {req.specifier}, requirements.lock pins {pin[0]}")
    out += [f"{name}=={version}: no hash" for name, (version, hashes) in pins.items() if not hashes]
    return out


def test_the_lock_satisfies_every_range_in_pyproject() -> None:
    assert LOCK.is_file(), "requirements.lock is missing: run bash scripts/lock.sh"
    problems = disagreements(declared(lock_extras()), locked(LOCK.read_text()))
    assert not problems, "pyproject.toml and requirements.lock disagree (run bash scripts/lock.sh): " + "; ".join(
        problems)


def test_a_range_the_lock_does_not_satisfy_is_reported() -> None:
    """The check above can fail: a pin outside a range, a missing package and a hashless pin are each named."""
    pins = {"numpy": ("2.4.6", 2), "scipy": ("1.17.1", 0)}
    problems = disagreements([Requirement("numpy<2"), Requirement("pandas>=2"), Requirement("scipy")], pins)
    assert problems == ["numpy: pyproject.toml asks <2, requirements.lock pins 2.4.6",
                        "pandas: in pyproject.toml, not in requirements.lock", "scipy==1.17.1: no hash"]


def test_the_venv_holds_the_locked_versions() -> None:
    """The suite runs on what the lock says (bootstrap.sh installs it): a drifted .venv would test other code."""
    if os.environ.get("DFD_UNLOCKED"):
        pytest.skip("DFD_UNLOCKED is set: .venv holds the newest releases within pyproject's ranges, not the lock")
    drift = []
    for name, (version, _) in locked(LOCK.read_text()).items():
        try:
            have = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            drift.append(f"{name}: locked {version}, not installed")
            continue
        if canonicalize_name(have) != canonicalize_name(version) and have != version:
            drift.append(f"{name}: locked {version}, installed {have}")
    assert not drift, "; ".join(drift) + f" (rerun bash scripts/bootstrap.sh from {Path.cwd()})"
