"""``relay simulate``: its flags and defaults, and a real process serving until SIGINT / SIGTERM."""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import urllib.request

import orjson
import pytest

from relay.simulator import cli


def test_defaults_are_documented_in_help() -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args([])
    assert (args.host, args.port, args.api_key) == ("127.0.0.1", 8765, "sim-api-key")
    assert args.integrations == "personio:acme,greenhouse:globex"
    assert (args.users, args.churn, args.seed, args.rate_limit, args.rate_window) == (1000, 2.0, 1, 10_000, 60.0)
    text = parser.format_help()
    for flag in ("--host", "--port", "--api-key", "--integrations", "--users", "--churn", "--seed", "--rate-limit",
                 "--rate-window", "--no-retry-after", "--candidates", "--jobs", "--employees"):  # fmt: skip
        assert flag in text
    assert "default: 8765" in text
    with pytest.raises(SystemExit):
        parser.parse_args(["--users", "-1"])


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_it_serves_until_a_signal_and_exits_zero(stop_signal: signal.Signals) -> None:
    command = [sys.executable, "-m", "relay.simulator", "--port", "0", "--users", "5", "--churn", "50",
               "--integrations", "personio:acme", "--api-key", "cli-key"]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as process:
        try:
            assert process.stdout is not None
            banner = process.stdout.readline()
            match = re.search(r"serving (http://\S+/v1) api-key=cli-key integrations=personio:acme", banner)
            assert match, banner
            request = urllib.request.Request(  # noqa: S310 (an http:// URL the simulator printed)
                f"{match.group(1)}/ats/users?page_size=2",
                headers={"Authorization": "Bearer cli-key", "X-Integration-Id": "personio:acme"},
            )
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (same URL)
                assert len(orjson.loads(response.read())["data"]["results"]) == 2
            process.send_signal(stop_signal)
            assert process.wait(timeout=15) == 0
        finally:
            if process.poll() is None:
                process.kill()
        assert process.stderr is not None
        assert process.stderr.read() == ""
