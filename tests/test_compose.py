"""docker-compose.yml, deploy/ and the Dockerfile, tested as data (there is no Docker engine).

- the compose file parses; its services, ports, commands and mounts agree with each other;
- the rules it mounts pass `sidecar check` and point at the compose services' ports;
- Prometheus scrapes the sidecar's admin port;
- the Dockerfile's build stage: copying exactly what it COPYs and running its `pip wheel`
  gives a wheel with the package data (grammar, demo rules), and that wheel, installed on
  its own, runs `sidecar check` and `sidecar demo` from an unrelated directory;
- the demo app entrypoint the compose services use serves HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from sidecar.cli import main as cli_main
from sidecar.dsl import load

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
RULES_TARGET = "/etc/sidecar"
WHEEL_TIMEOUT_S = 300.0  # a cold pip fetching setuptools for the isolated build
RUN_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    svc = compose["services"][name]
    assert isinstance(svc, dict)
    return svc


def listen_port(svc: dict[str, Any]) -> int:
    """The port a service's command listens on (`--listen HOST:PORT`)."""
    cmd = svc["command"]
    return int(cmd[cmd.index("--listen") + 1].rpartition(":")[2])


def flag(svc: dict[str, Any], name: str) -> str:
    cmd = svc["command"]
    return str(cmd[cmd.index(name) + 1])


def rules_mount(svc: dict[str, Any]) -> tuple[Path, str, str]:
    for volume in svc["volumes"]:
        source, target, *mode = volume.split(":")
        if target == RULES_TARGET:
            return (ROOT / source).resolve(), target, (mode or ["rw"])[0]
    raise AssertionError(f"no volume mounted at {RULES_TARGET}")


def test_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"primary", "canary", "sidecar", "prometheus"}
    for name in ("primary", "canary", "sidecar"):
        svc = service(compose, name)
        assert svc["build"] == "."
        assert svc["image"] == "sidecar:dev"
    for name in ("primary", "canary"):
        assert service(compose, name)["entrypoint"] == ["python", "-m", "sidecar.demo.apps"]
        assert str(listen_port(service(compose, name))) in service(compose, name)["expose"]
    assert set(service(compose, "sidecar")["depends_on"]) == {"primary", "canary"}


def test_sidecar_ports_match_its_command(compose: dict[str, Any]) -> None:
    svc = service(compose, "sidecar")
    assert svc["command"][:2] == ["serve", RULES_TARGET]
    listen = int(flag(svc, "--listen").rpartition(":")[2])
    admin = int(flag(svc, "--admin").rpartition(":")[2])
    container_ports = {int(p.rpartition(":")[2]) for p in svc["ports"]}
    assert container_ports == {listen, admin}


def test_rules_are_mounted_read_only_and_pass_check(
    compose: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    source, _, mode = rules_mount(service(compose, "sidecar"))
    assert mode == "ro"
    assert source.is_dir()
    assert cli_main(["check", "--strict", str(source)]) == 0
    assert "0 errors, 0 warnings" in capsys.readouterr().out


def test_rules_point_at_the_compose_services(compose: dict[str, Any]) -> None:
    source, _, _ = rules_mount(service(compose, "sidecar"))
    config = load([source]).config
    assert config is not None and config.primary is not None
    primary = config.primary.endpoint
    assert (primary.host, primary.port) == ("primary", listen_port(service(compose, "primary")))
    servers = {(s.endpoint.host, s.endpoint.port) for c in config.canaries for s in c.servers}
    assert servers == {("canary", listen_port(service(compose, "canary")))}
    # The addresses in the files agree with the flags of the image's CMD.
    svc = service(compose, "sidecar")
    assert config.listen == flag(svc, "--listen")
    assert config.admin == flag(svc, "--admin")


def test_prometheus_scrapes_the_admin_port(compose: dict[str, Any]) -> None:
    prom = service(compose, "prometheus")
    mounts = dict(v.split(":")[:2] for v in prom["volumes"])
    config_file = ROOT / next(src for src, dst in mounts.items() if dst.endswith("prometheus.yml"))
    doc = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    admin_port = flag(service(compose, "sidecar"), "--admin").rpartition(":")[2]
    jobs = {job["job_name"]: job for job in doc["scrape_configs"]}
    job = jobs["sidecar"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"sidecar:{admin_port}"]


# --- the Dockerfile -----------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def build_stage_copies() -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY from the build context (not --from=...)."""
    copies = []
    for keyword, rest in dockerfile_instructions():
        if keyword == "COPY" and not rest.startswith("--from"):
            *sources, dest = rest.split()
            copies.append((sources, dest))
    return copies


def test_dockerfile_shape() -> None:
    ins = dockerfile_instructions()
    froms = [rest for kw, rest in ins if kw == "FROM"]
    assert froms and all(f.split()[0] == "python:3.11-slim" for f in froms)
    users = [rest for kw, rest in ins if kw == "USER"]
    assert users and users[-1] not in ("root", "0")
    entry = [json.loads(rest) for kw, rest in ins if kw == "ENTRYPOINT"]
    assert entry[-1] == ["sidecar"]
    cmd = [json.loads(rest) for kw, rest in ins if kw == "CMD"][-1]
    assert cmd[:2] == ["serve", RULES_TARGET]
    assert "--listen" in cmd and "--admin" in cmd
    exposed = {int(p) for kw, rest in ins if kw == "EXPOSE" for p in rest.split()}
    assert {
        int(cmd[cmd.index(f) + 1].rpartition(":")[2]) for f in ("--listen", "--admin")
    } <= exposed
    for sources, _ in build_stage_copies():
        for src in sources:
            assert (ROOT / src).exists(), f"Dockerfile COPYs {src}, which does not exist"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel the Dockerfile's build stage makes: its COPYs, then its `pip wheel`."""
    context = tmp_path_factory.mktemp("docker-context")
    for sources, dest in build_stage_copies():
        for src in sources:
            # `COPY a b ./` keeps the names; `COPY sidecar ./sidecar` names the target.
            target = context / dest / Path(src).name if dest.endswith("/") else context / dest
            path = ROOT / src
            if path.is_dir():
                shutil.copytree(
                    path, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
                )
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
    run_lines = [rest for kw, rest in dockerfile_instructions() if kw == "RUN"]
    assert any(line.startswith("pip wheel") for line in run_lines)
    out = tmp_path_factory.mktemp("wheels")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(out), "."],
        cwd=context,
        check=True,
        timeout=WHEEL_TIMEOUT_S,
    )
    (whl,) = out.glob("sidecar-*.whl")
    return whl


def test_wheel_holds_the_package_data(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "sidecar/grammar/mirror.lark",
        "sidecar/demo/rules/demo.mirror",
        "sidecar/demo/rules/__init__.py",
        "sidecar/demo/apps.py",
        "sidecar/py.typed",
    ):
        assert needed in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "sidecar = sidecar.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The wheel installed on its own (dependencies from this venv); env to run it with."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        timeout=WHEEL_TIMEOUT_S,
    )  # fmt: skip
    return {**os.environ, "PYTHONPATH": str(target)}


def test_installed_wheel_is_the_one_imported(installed: dict[str, str], tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "import sidecar; print(sidecar.__file__)"],
        cwd=tmp_path, env=installed, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert proc.stdout.strip().startswith(installed["PYTHONPATH"])


def test_installed_wheel_checks_the_compose_rules(
    installed: dict[str, str], tmp_path: Path, compose: dict[str, Any]
) -> None:
    source, _, _ = rules_mount(service(compose, "sidecar"))
    proc = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "check", str(source)],
        cwd=tmp_path, env=installed, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_installed_wheel_runs_the_demo_anywhere(installed: dict[str, str], tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "demo", "--duration", "1", "--format", "json"],
        cwd=tmp_path, env=installed, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    for c in doc["canaries"].values():
        assert c["dispatched"] == c["completed"] + c["failed"] + c["panicked"]


# --- the demo app entrypoint of the primary and canary services ---------------------------------


@contextlib.contextmanager
def demo_app_process(profile: str, port: int) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar.demo.apps", profile, "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_demo_app_entrypoint_serves(compose: dict[str, Any]) -> None:
    from tests.support.serve import free_port

    command = service(compose, "primary")["command"]
    port = free_port()
    with demo_app_process(command[0], port) as proc:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RUN_TIMEOUT_S
        async with httpx.AsyncClient(timeout=1.0) as client:
            while True:
                assert proc.poll() is None, "the demo app exited"
                with contextlib.suppress(httpx.TransportError):
                    r = await client.get(f"http://127.0.0.1:{port}/api/items/3")
                    break
                assert loop.time() < deadline, "the demo app did not start"
                await asyncio.sleep(0.05)
            assert r.status_code == 200
            assert r.json()["id"] == 3
            r = await client.post(f"http://127.0.0.1:{port}/api/orders", json={"item": 1, "qty": 2})
            assert r.status_code == 201


def test_compose_rules_are_not_loopback(compose: dict[str, Any]) -> None:
    """The reason deploy/compose-rules exists: 127.0.0.1 in a container is the container."""
    source, _, _ = rules_mount(service(compose, "sidecar"))
    for path in source.glob("*.mirror"):
        for url in re.findall(r"https?://[^\s{]+", path.read_text(encoding="utf-8")):
            assert urlsplit(url).hostname not in ("127.0.0.1", "localhost", "::1"), url
