#!/usr/bin/env python3
"""Write deploy/prometheus/alerts.yml, the relay's alert rules for a plain Prometheus, from the Helm chart.

The chart's PrometheusRule is the one source of the alerts (helm/change-relay/templates/_alerts.tpl): this renders it
with the chart's defaults for a release named change-relay (so the series are picked by job="change-relay", the job
name deploy/prometheus/prometheus.yml scrapes the relay under) and writes its rule groups as a Prometheus rule file.
tests/deploy/test_alerts.py fails when the file is not what this would write.

    deploy/tools/install-go-tools.sh          # once: the pinned helm
    .venv/bin/python deploy/tools/generate_alerts.py
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "change-relay"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
DEFAULT_HELM = REPO / ".cache" / "go-tools" / "helm"
HEADER = """\
# change-relay alert rules for Prometheus (rule_files). GENERATED from the Helm chart's PrometheusRule
# (helm/change-relay/templates/_alerts.tpl) by deploy/tools/generate_alerts.py: edit the chart, then run it again.
# The expressions pick the relay's series by job="change-relay": scrape the relay under that job name
# (deploy/prometheus/prometheus.yml does).
"""


class _Dumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks, so that the expressions read as they do in the chart."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_representer)


def render_alerts_file(helm: Path) -> str:
    """The text alerts.yml must have."""
    result = subprocess.run(
        [
            str(helm), "template", "change-relay", str(CHART),
            "--kube-version", "1.27.0",
            "--set", "prometheusRule.enabled=true",
            "--show-only", "templates/prometheusrule.yaml",
        ],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"helm template failed:\n{result.stderr}")
    rule = yaml.safe_load(result.stdout)
    body = yaml.dump({"groups": rule["spec"]["groups"]}, Dumper=_Dumper, sort_keys=False, width=4096)
    return HEADER + body


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--helm", type=Path, default=DEFAULT_HELM, help=f"the helm binary (default: {DEFAULT_HELM})")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is not current, write nothing")
    args = parser.parse_args()
    if not args.helm.exists():
        print(f"{args.helm} not found: run deploy/tools/install-go-tools.sh first", file=sys.stderr)
        return 2
    text = render_alerts_file(args.helm)
    if args.check:
        current = ALERTS.read_text() if ALERTS.exists() else ""
        if current != text:
            print(f"{ALERTS.relative_to(REPO)} is out of date: run {Path(__file__).relative_to(REPO)}", file=sys.stderr)
            return 1
        return 0
    ALERTS.parent.mkdir(parents=True, exist_ok=True)
    ALERTS.write_text(text)
    print(f"wrote {ALERTS.relative_to(REPO)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
