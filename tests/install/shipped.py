"""The package as a user installs it: a wheel built from the checkout, and clean virtualenvs.

A clean virtualenv is made by `python -m venv` with nothing of the development environment in it.
Creating one and installing the dependencies from the package index takes tens of seconds, so
the virtualenvs are kept between runs in the test cache folder (`cache_dir()`), keyed by a hash
of pyproject.toml (which names the dependencies) and of the Python that runs the tests. A kept
virtualenv is used only once it was completed (a marker file written last), and the package
itself is reinstalled in it whenever the wheel's contents differ from the installed one, so a
warm run pays only for building and reinstalling the package. A lock per virtualenv keeps two
test runs from changing one at the same time; stale ones (another key) are removed.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.procs import ROOT

PYPROJECT = ROOT / "pyproject.toml"
#: what a dependency install may take on a cold cache (the package index is remote)
INSTALL_TIMEOUT = 900


def cache_dir() -> Path:
    """The folder the tests keep between runs (virtualenvs, the image test's engine data)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    path = Path(base) / "abgate-tests"
    path.mkdir(parents=True, exist_ok=True)
    return path


def shipped_paths() -> list[str]:
    """What `pip install .` reads: pyproject.toml, the readme it names, and the packages."""
    project = tomllib.loads(PYPROJECT.read_text())
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = sorted({pattern.rstrip("*").split(".")[0] for pattern in include})
    return ["pyproject.toml", project["project"]["readme"], *packages]


def source_copy(dest: Path) -> Path:
    """A copy of the checkout's shipped files, so that a build writes nothing into the tree."""
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.py[cod]", "*.egg-info")
    for name in shipped_paths():
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)
    return dest


def build_wheel(tmp: Path) -> Path:
    """`pip wheel . --no-deps` of a copy of the checkout."""
    src = source_copy(tmp / "src")
    dist = tmp / "dist"
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(src)],
        capture_output=True, text=True, timeout=INSTALL_TIMEOUT,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    (wheel,) = dist.glob("abgate-*.whl")
    return wheel


def wheel_digest(wheel: Path) -> str:
    """A hash of the wheel's members (names and bytes), blind to the zip's timestamps."""
    digest = hashlib.sha256()
    with zipfile.ZipFile(wheel) as zf:
        for name in sorted(zf.namelist()):
            digest.update(name.encode() + b"\0" + zf.read(name) + b"\0")
    return digest.hexdigest()


@contextmanager
def locked(path: Path, *, wait: bool = True) -> Iterator[bool]:
    """An exclusive `flock` on `path`; yields False if `wait` is off and someone holds it."""
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass(frozen=True)
class Venv:
    path: Path

    def bin(self, name: str) -> str:
        return str(self.path / "bin" / name)

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a user who activated this virtualenv: nothing of the checkout
        (no PYTHONPATH), no ABGATE_* setting of the caller."""
        drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
        env = {k: v for k, v in os.environ.items() if not k.startswith("ABGATE_") and k not in drop}
        env["PATH"] = f"{self.path / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(self.path)
        env.update(extra)
        return env

    def run(
        self, *argv: str, cwd: Path, timeout: float = 120, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        argv0 = self.bin(argv[0]) if (self.path / "bin" / argv[0]).exists() else argv[0]
        return subprocess.run(
            [argv0, *argv[1:]], cwd=cwd, env=env or self.env(), capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip


def _key(*parts: str, project: bool = True) -> str:
    """The virtualenv's key: the Python, `parts` and, with `project`, pyproject.toml."""
    digest = hashlib.sha256(PYPROJECT.read_bytes() if project else b"")
    for part in (sys.version, sys.base_prefix, *parts):
        digest.update(b"\0" + part.encode())
    return digest.hexdigest()[:16]


def _prune(name: str, keep: Path) -> None:
    """Remove this kind's virtualenvs of other keys that no test run is using."""
    for other in cache_dir().glob(f"venv-{name}-*"):
        if other == keep or other.suffix == ".lock":
            continue
        lock = other.with_name(other.name + ".lock")
        with locked(lock, wait=False) as free:
            if free:
                shutil.rmtree(other, ignore_errors=True)
                lock.unlink(missing_ok=True)


def _create(name: str, path: Path) -> None:
    if not (path / ".created").exists():
        shutil.rmtree(path, ignore_errors=True)
        out = subprocess.run(
            [sys.executable, "-m", "venv", str(path)], capture_output=True, text=True,
            timeout=INSTALL_TIMEOUT,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        (path / ".created").touch()
        _prune(name, path)


@contextmanager
def cached_venv(name: str, *key_parts: str) -> Iterator[Venv]:
    """A clean virtualenv (pip and nothing else when new), held under its lock while in use."""
    path = cache_dir() / f"venv-{name}-{_key(*key_parts)}"
    with locked(path.with_name(path.name + ".lock")):
        _create(name, path)
        yield Venv(path)


@contextmanager
def shared_venv(
    name: str, *key_parts: str, marker: str, setup: Callable[[Venv], None]
) -> Iterator[Venv]:
    """A kept virtualenv that several test runs may use at once: `setup` installs into it
    under the exclusive lock, once (`marker` is written last); using it holds a shared lock,
    which keeps other runs from rebuilding or pruning it but not from using it. Its key is
    `key_parts` and the Python only: it holds none of the project's dependencies."""
    path = cache_dir() / f"venv-{name}-{_key(*key_parts, project=False)}"
    with path.with_name(path.name + ".lock").open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH)
            if not (path / marker).exists():
                fcntl.flock(handle, fcntl.LOCK_EX)  # converts: waits for the other users
                if not (path / marker).exists():
                    _create(name, path)
                    setup(Venv(path))
                    (path / marker).write_text("\n".join(key_parts))
                fcntl.flock(handle, fcntl.LOCK_SH)
            yield Venv(path)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def installed_wheel(wheel: Path) -> Iterator[Venv]:
    """A clean virtualenv with `wheel` installed without extras, its dependencies from the
    package index; a cached one gets only the package itself reinstalled when it changed."""
    with cached_venv("wheel") as venv:
        digest = wheel_digest(wheel)
        marker = venv.path / ".wheel"
        steps = []
        if not marker.exists():  # new: the dependencies, from the wheel's metadata
            steps.append(["pip", "install", "-q", str(wheel)])
        if not marker.exists() or marker.read_text() != digest:  # this very package
            steps.append(["pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel)])
        marker.unlink(missing_ok=True)
        for argv in steps:
            out = venv.run(*argv, cwd=wheel.parent, timeout=INSTALL_TIMEOUT)
            assert out.returncode == 0, out.stdout + out.stderr
        marker.write_text(digest)
        yield venv
