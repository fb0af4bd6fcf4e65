"""The one way a benchmark script closes its run: print the machine's load, write the JSON report.

Every report records the command, the library versions and the machine (cores, torch threads, the
1-minute load average at the start and end), so a figure can be read against how busy the machine
was. Imported by the scripts in this folder (``python benchmarks/<script>.py`` puts it on the path).
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import ot
import torch


def write_report(out: Path, load_start: tuple[float, float, float], **fields: Any) -> dict[str, Any]:
    """Print the load line, then write ``fields`` plus command / versions / machine facts to ``out`` as JSON."""
    load_end = os.getloadavg()
    print(f"load average (1 min) at start {load_start[0]:.1f}, at end {load_end[0]:.1f}; torch threads {torch.get_num_threads()}")
    report = {
        **fields,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "versions": {"torch": torch.__version__, "pot": ot.__version__, "python": platform.python_version()},
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "load_start": load_start, "load_end": load_end},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return report
