"""Helpers of the deploy tests: where things are, the pinned tools, and the chart rendered with them."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "change-relay"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
SCHEMAS = Path(__file__).resolve().parent / "schemas"
INSTALL_SCRIPT = REPO / "deploy" / "tools" / "install-go-tools.sh"
# The oldest Kubernetes the chart supports (Chart.yaml's kubeVersion) and the newest whose schemas are vendored.
KUBE_VERSIONS = ("1.27.0", "1.37.0")
RELEASE = "change-relay"
NAMESPACE = "relay"
# A cold `go install` of helm takes about 4 minutes on 2 cores, promtool about 6 and the Prometheus server 2 more (and
# three times that on a machine busy with other builds); this bounds a hung download, not a slow build.
GO_INSTALL_TIMEOUT = 2700


def go_command() -> str | None:
    found = shutil.which("go")
    if found:
        return found
    fallback = Path("/usr/local/go/bin/go")
    return str(fallback) if fallback.is_file() and os.access(fallback, os.X_OK) else None


@dataclass(frozen=True)
class GoTools:
    helm: Path
    kubeconform: Path
    promtool: Path
    prometheus: Path


@dataclass(frozen=True)
class Rendered:
    """The manifests ``helm template`` made, parsed."""

    documents: tuple[dict[str, Any], ...]
    text: str

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [doc for doc in self.documents if doc["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        [found] = self.all(kind)
        return found

    def kinds(self) -> set[str]:
        return {doc["kind"] for doc in self.documents}


class Helm:
    """Runs the pinned helm on the chart, caching renders: the same values are rendered once per session."""

    def __init__(self, binary: Path) -> None:
        self.binary = binary
        self._cache: dict[tuple[str, ...], Rendered] = {}

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        # HELM_* folders in a temporary place: helm must not read or write the user's configuration or cache.
        return subprocess.run(
            [str(self.binary), *args], capture_output=True, text=True, check=False, timeout=120, env=self._env()
        )

    def _env(self) -> dict[str, str]:
        base = REPO / ".cache" / "helm-home"
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(base),
            "HELM_CACHE_HOME": str(base / "cache"),
            "HELM_CONFIG_HOME": str(base / "config"),
            "HELM_DATA_HOME": str(base / "data"),
        }

    def template_args(
        self, values_files: Sequence[Path] = (), sets: Sequence[str] = (), kube_version: str = KUBE_VERSIONS[0]
    ) -> list[str]:
        args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", kube_version]
        for path in values_files:
            args += ["--values", str(path)]
        for assignment in sets:
            args += ["--set", assignment]
        return args

    def template_result(
        self, values_files: Sequence[Path] = (), sets: Sequence[str] = (), kube_version: str = KUBE_VERSIONS[0]
    ) -> subprocess.CompletedProcess[str]:
        return self.run(*self.template_args(values_files, sets, kube_version))

    def template(
        self, values_files: Sequence[Path] = (), sets: Sequence[str] = (), kube_version: str = KUBE_VERSIONS[0]
    ) -> Rendered:
        key = (kube_version, *map(str, values_files), "--set", *sets)
        if key not in self._cache:
            result = self.template_result(values_files, sets, kube_version)
            assert result.returncode == 0, f"helm template failed:\n{result.stderr}"
            documents = tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)
            self._cache[key] = Rendered(documents, result.stdout)
        return self._cache[key]


def kubeconform_args(binary: Path, kube_version: str) -> list[str]:
    """kubeconform, strict, offline: the vendored schemas only (a kind without one is an error, not a skip)."""
    core = SCHEMAS / "kubernetes" / "{{ .NormalizedKubernetesVersion }}-standalone{{ .StrictSuffix }}"
    crds = SCHEMAS / "crds" / "{{ .Group }}"
    return [
        str(binary),
        "-strict",
        "-summary",
        "-kubernetes-version",
        kube_version,
        "-schema-location",
        f"{core}/{{{{ .ResourceKind }}}}{{{{ .KindSuffix }}}}.json",
        "-schema-location",
        f"{crds}/{{{{ .ResourceKind }}}}_{{{{ .ResourceAPIVersion }}}}.json",
        "-",
    ]


def run_kubeconform(binary: Path, manifests: str, kube_version: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        kubeconform_args(binary, kube_version), input=manifests, capture_output=True, text=True, check=False, timeout=60
    )
