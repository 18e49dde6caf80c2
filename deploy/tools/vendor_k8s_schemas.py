#!/usr/bin/env python3
"""Vendor the Kubernetes JSON schemas that kubeconform needs to check the Helm chart offline.

kubeconform fetches schemas from the internet by default; the tests cannot (and should not), so they point it at
tests/deploy/schemas/ instead. This script makes those files from the schemas that the PyPI package
``kubernetes-validate`` ships (derived from the upstream OpenAPI documents, strict flavour: unknown fields are errors):

    python -m pip install --target /tmp/kv 'kubernetes-validate==1.37.0'
    python deploy/tools/vendor_k8s_schemas.py --from /tmp/kv/kubernetes_validate/kubernetes-json-schema

For each Kubernetes version and each kind the chart renders, it writes one self-contained file (its references into
``_definitions.json`` are copied into the file's ``$defs``, descriptions dropped to keep it small), named the way
kubeconform's schema-location template expects: ``v1.27.0-standalone-strict/deployment-apps-v1.json``.

The ServiceMonitor and PrometheusRule schemas (tests/deploy/schemas/crds/) are not made here: no registry package ships
them, so they are written by hand from the monitoring.coreos.com/v1 API reference (see the README there).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

# What the chart renders (Pod: the `helm test` hook; HorizontalPodAutoscaler: with autoscaling.enabled).
KINDS = (
    "configmap-v1",
    "deployment-apps-v1",
    "horizontalpodautoscaler-autoscaling-v2",
    "ingress-networking-v1",
    "pod-v1",
    "poddisruptionbudget-policy-v1",
    "secret-v1",
    "service-v1",
    "serviceaccount-v1",
)
# The oldest version the chart supports (Chart.yaml kubeVersion) and the newest the package knows.
VERSIONS = ("v1.27.0", "v1.37.0")
# A kind's file refers to "/api/_definitions.json#/$defs/NAME"; the definitions refer to each other as "#/$defs/NAME".
REF_PREFIXES = ("/api/_definitions.json#/$defs/", "#/$defs/")
# Annotations only: dropped. (A property may be *named* description: its value is a schema, a dict, and is kept.)
DROPPED_ANNOTATIONS = {"description", "$id", "x-kubernetes-group-version-kind"}

DEFAULT_OUT = Path(__file__).resolve().parents[2] / "tests" / "deploy" / "schemas" / "kubernetes"


def bundle(schema: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with every definition it needs, transitively, in its own ``$defs``."""
    needed: dict[str, Any] = {}

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                if key in DROPPED_ANNOTATIONS and not isinstance(value, dict):
                    continue
                if key == "$ref" and isinstance(value, str):
                    prefix = next((p for p in REF_PREFIXES if value.startswith(p)), None)
                    if prefix is None:
                        raise ValueError(f"unexpected $ref {value!r}")
                    name = value.removeprefix(prefix)
                    if name not in needed:
                        needed[name] = None  # placeholder first: definitions can be recursive
                        needed[name] = rewrite(definitions[name])
                    out[key] = "#/$defs/" + name
                else:
                    out[key] = rewrite(value)
            return out
        if isinstance(node, list):
            return [rewrite(item) for item in node]
        return node

    top: dict[str, Any] = rewrite(schema)
    top["$defs"] = dict(sorted(needed.items()))
    return top


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", type=Path, required=True, help="kubernetes-json-schema folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    for version in VERSIONS:
        source = args.source / f"{version}-local-strict"
        definitions = json.loads((source / "_definitions.json").read_text())["$defs"]
        target = args.out / f"{version}-standalone-strict"
        target.mkdir(parents=True, exist_ok=True)
        for kind in KINDS:
            schema = bundle(json.loads((source / f"{kind}.json").read_text()), definitions)
            text = json.dumps(schema, indent=1, sort_keys=True) + "\n"
            (target / f"{kind}.json").write_text(text)
            print(f"{target / kind}.json: {len(text) // 1024} KiB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
