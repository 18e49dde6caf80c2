"""Fixtures of the deploy tests: the pinned helm, kubeconform, promtool and Prometheus server.

``deploy/tools/install-go-tools.sh`` builds them with ``go install`` into ``.cache/go-tools/`` once (minutes the first
time, a no-op after); the tests that need them skip, naming Go, where Go is not installed. kubeconform checks the
rendered manifests offline against the schemas vendored in ``schemas/``; promtool checks and unit-tests the alert
rules; the Prometheus server scrapes a live relay in ``test_alerts_live.py``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.deploy.chart import GO_INSTALL_TIMEOUT, INSTALL_SCRIPT, GoTools, Helm, go_command


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The tools are built during the setup of the first test that needs them, which the suite's 300 s per-test
    # timeout also covers: give that test (only) the time a cold build takes.
    for item in items:
        if "go_tools" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.timeout(GO_INSTALL_TIMEOUT + 60))
            break


@pytest.fixture(scope="session")
def go_tools() -> GoTools:
    """helm, kubeconform, promtool and prometheus at their pinned versions, installed by install-go-tools.sh."""
    go = go_command()
    if go is None:
        pytest.skip(
            "Go is not installed (no `go` on PATH nor /usr/local/go/bin/go): it builds helm, kubeconform, promtool and"
            " the Prometheus server"
        )
    result = subprocess.run(
        ["bash", str(INSTALL_SCRIPT)],
        capture_output=True,
        text=True,
        check=False,
        timeout=GO_INSTALL_TIMEOUT,
        env={**os.environ, "GO": go},
    )
    if result.returncode != 0:
        pytest.fail(f"{INSTALL_SCRIPT.name} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    tools_dir = Path(result.stdout.strip().splitlines()[-1])
    tools = GoTools(
        helm=tools_dir / "helm",
        kubeconform=tools_dir / "kubeconform",
        promtool=tools_dir / "promtool",
        prometheus=tools_dir / "prometheus",
    )
    for tool in (tools.helm, tools.kubeconform, tools.promtool, tools.prometheus):
        assert os.access(tool, os.X_OK), f"{tool} was not installed"
    return tools


@pytest.fixture(scope="session")
def helm(go_tools: GoTools) -> Helm:
    return Helm(go_tools.helm)


@pytest.fixture(scope="session")
def kubeconform(go_tools: GoTools) -> Path:
    return go_tools.kubeconform


@pytest.fixture(scope="session")
def promtool(go_tools: GoTools) -> Path:
    return go_tools.promtool


@pytest.fixture(scope="session")
def prometheus_server(go_tools: GoTools) -> Path:
    return go_tools.prometheus
