from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.serve import HOSTS, use_host

ROOT = Path(__file__).resolve().parent.parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--regen-goldens",
        action="store_true",
        default=False,
        help="rewrite golden files (tests/**/cases/*.expected) from the current output",
    )


@pytest.fixture
def regen_goldens(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--regen-goldens"))


@pytest.fixture(scope="module", params=HOSTS)
def host(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each HTTP server `serve --server` offers, in turn: every `sidecar serve` that
    tests.support.serve starts meanwhile gets `--server` with it. A module opts in with
    `pytestmark = pytest.mark.usefixtures("host")`; its module-scoped fixtures that start
    a proxy request `host` as well."""
    name: str = request.param
    previous = use_host(name)
    yield name
    use_host(previous)


@pytest.fixture(autouse=True)
def _host_only_where_asked(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that does not ask for `host` gets serve's default server, even while the
    module-scoped `host` of its neighbours is active."""
    if "host" in request.fixturenames:
        yield
        return
    previous = use_host(None)
    yield
    use_host(previous)
