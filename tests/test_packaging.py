"""guardbot as users install it: the wheel's metadata, a build free of setuptools
deprecations, and a fresh environment holding guardbot next to current ccxt (the library
these users most likely have), resolved for real by pip."""

from __future__ import annotations

import email
import email.message
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def pip(python: Path | str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(python), "-m", "pip", *args], capture_output=True, text=True,
                          timeout=600, check=False)  # fmt: skip


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """guardbot's wheel, built from the checkout the way pip builds it, and the build log."""
    # From a copy of what the Docker context holds, so the build leaves nothing in the tree.
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source)
    shutil.copytree(ROOT / "guardbot", source / "guardbot",
                    ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    built = pip(sys.executable, "wheel", "--no-deps", "--verbose", "--wheel-dir", str(out),
                str(source))  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    (path,) = out.glob("guardbot-*.whl")
    return path, built.stdout + built.stderr


def metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return email.message_from_bytes(archive.read(name))


def test_the_build_has_no_setuptools_deprecation(wheel: tuple[Path, str]) -> None:
    _, log = wheel
    assert "SetuptoolsDeprecationWarning" not in log, log
    assert "deprecat" not in log.lower(), log


def test_the_license_is_an_spdx_expression_with_its_file(wheel: tuple[Path, str]) -> None:
    path, _ = wheel
    meta = metadata(path)
    assert meta["License-Expression"] == "MIT"
    assert meta.get_all("License-File") == ["LICENSE"]
    with zipfile.ZipFile(path) as archive:
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in archive.namelist())


def test_no_runtime_dependency_caps_a_released_major(wheel: tuple[Path, str]) -> None:
    """Caps stay only where the next major is an announced rewrite; nothing holds users back
    on a security library, and the official SDK (with its old pins) is no extra at all."""
    requirements = [Requirement(r) for r in metadata(wheel[0]).get_all("Requires-Dist") or []]
    runtime = {r.name.lower(): r for r in requirements if r.marker is None}
    capped = {name for name, r in runtime.items()
              if any(s.operator in ("<", "<=", "==", "~=") for s in r.specifier)}
    assert capped == {"apscheduler", "pydantic", "pydantic-settings"}
    assert not any(r.name == "orderly-evm-connector" for r in requirements)


def test_guardbot_installs_next_to_current_ccxt(wheel: tuple[Path, str], tmp_path: Path) -> None:
    """A fresh environment, pip's real resolver, no constraints: the newest ccxt first (it
    needs a current cryptography), then guardbot, which must fit beside it without moving
    anything ccxt needs; both import."""
    venv.create(tmp_path / "env", with_pip=True)
    python = tmp_path / "env" / "bin" / "python"
    for requirement in ("ccxt", str(wheel[0])):
        installed = pip(python, "install", "--quiet", requirement)
        assert installed.returncode == 0, installed.stdout + installed.stderr
        assert "incompatible" not in installed.stderr, installed.stderr
    checked = pip(python, "check")
    assert checked.returncode == 0, checked.stdout
    imported = subprocess.run(
        [str(python), "-c", "import ccxt, guardbot.cli, guardbot.exchange.signing"],
        capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert imported.returncode == 0, imported.stderr


def test_the_docker_build_gets_the_license_files() -> None:
    """The image's wheel is built from the Docker context: the files `license-files` names
    must be in it, or the build fails."""
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    copy = next(line for line in (ROOT / "Dockerfile").read_text().splitlines()
                if line.startswith("COPY pyproject.toml"))
    assert "!LICENSE" in ignore and "LICENSE" in copy.split()
