"""The wheel works on its own: built, installed into a fresh venv, `sidecar check` runs
from another directory and finds the grammar inside the package.

Offline: the wheel is built without build isolation, and the fresh venv reaches the
dependencies through a .pth file pointing at this venv's site-packages.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 120


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=TIMEOUT_S
    )


def test_wheel_installs_and_checks_rules(tmp_path: Path) -> None:
    # Build from a copy, so that setuptools' build/ and egg-info never touch the work tree.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "build_hooks.py", "MANIFEST.in", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "sidecar", src / "sidecar", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "grammar", src / "grammar")
    dist = tmp_path / "dist"
    built = run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        dist,
        src,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = dist.glob("sidecar-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    assert "sidecar/grammar/mirror.lark" in names
    assert any(n.startswith("sidecar/demo/rules/") and n.endswith(".mirror") for n in names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), sorted(names)

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    installed = run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        py,
        "install",
        "-q",
        "--no-deps",
        "--no-index",
        wheel,
    )
    assert installed.returncode == 0, installed.stderr
    site = Path(
        run(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
    )
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run(py, "-c", "import sidecar; print(sidecar.__file__)", cwd=elsewhere)
    assert where.stdout.startswith(str(env_dir)), where.stdout + where.stderr
    result = run(env_dir / "bin" / "sidecar", "check", ROOT / "rules", cwd=elsewhere)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "0 errors, 0 warnings in 4 files"


def test_pyproject_lists_every_package() -> None:
    """`[tool.setuptools] packages` is explicit (the grammar is copied in by build_hooks.py,
    not listed): a new layer package must be added there, or the wheel would ship without it."""
    import tomllib

    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "sidecar").rglob("__init__.py")
    }
    assert found == listed
