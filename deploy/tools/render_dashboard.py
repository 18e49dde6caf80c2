#!/usr/bin/env python3
"""Draw each panel of the Grafana dashboard as a PNG, from the series a live run wrote.

tests/deploy/test_alerts_live.py asks a real Prometheus every panel's queries over its run (a relay polling the
simulator, one integration turned inactive and healed again) and, with ``RELAY_DASHBOARD_DUMP=path.json``, writes
what came back there. This draws one PNG per panel (time series as lines, stats as their last value) into a folder.
Needs matplotlib (the ``bench`` extra).

    make dashboard-png           # runs the live test with the dump, then this
    .venv/bin/python deploy/tools/render_dashboard.py DUMP.json OUT_DIR
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any


def file_name(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") + ".png"


def draw(panel: dict[str, Any], start: float, out: Path) -> None:
    import matplotlib  # the bench extra: imported only when drawing

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 3.2), dpi=100)
    axes.set_title(panel["title"], fontsize=11, loc="left")
    axes.set_xlabel("seconds into the run")
    drawn = 0
    for series in panel["series"]:
        points = [(float(t) - start, float(v)) for t, v in series["values"]]
        points = [(t, v) for t, v in points if not math.isnan(v)]
        if not points:
            continue
        if panel["type"] == "stat":
            axes.step([t for t, _ in points], [v for _, v in points], where="post", label=series["legend"])
        else:
            axes.plot([t for t, _ in points], [v for _, v in points], label=series["legend"], linewidth=1.5)
        drawn += 1
    if drawn == 0:
        axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes, color="grey")
    elif drawn <= 8:
        axes.legend(fontsize=7, loc="upper left")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dump", type=Path, help="the JSON the live test wrote (RELAY_DASHBOARD_DUMP)")
    parser.add_argument("out", type=Path, help="folder for the PNGs")
    args = parser.parse_args()
    dump = json.loads(args.dump.read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    for panel in dump["panels"]:
        draw(panel, dump["start"], args.out / file_name(panel["title"]))
    print(f"{len(dump['panels'])} panels drawn in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
