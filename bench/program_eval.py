"""What evaluating the program costs, and how much of the graph a change touches. Prints tables.

Not a test. Two parts:
  1. evaluation: `__main__.py` under mocks (preview and up) for 1, 10, 50 and 200 nodes: wall time,
     peak RSS of a fresh process, registered resources, and the bytes of rendered mesh files.
  2. change cost on a 20-node stack: how many resources a change adds, removes or updates. Under
     mocks every key is derived from its name, so two runs differ exactly where inputs differ,
     which is what `pulumi preview` would report as an update.

Run from the repo root:  .venv/bin/python bench/program_eval.py [--sizes 1 10 50 200]
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import base_config  # noqa: E402
from tests.harness import ProgramRun, run_program  # noqa: E402


def stack(nodes: int) -> dict[str, Any]:
    """One server and `nodes - 1` agents with distinct hosts and mesh addresses."""
    config = base_config(agents=0)
    config["nodes"] += [
        {
            "name": f"agent-{i}",
            "role": "agent",
            "host": f"192.0.{2 + i // 250}.{10 + i % 250}",
            "meshAddress": f"10.161.{i // 250}.{1 + i % 250}",
        }
        for i in range(1, nodes)
    ]
    return config


def mesh_bytes(run: ProgramRun) -> int:
    return sum(len(c.inputs.get("stdin", "")) for c in run.commands() if c.name.endswith("-mesh"))


def measure_one(nodes: int, preview: bool) -> dict[str, float]:
    """One evaluation in this process; called in a fresh child so peak RSS is its own."""
    config = stack(nodes)
    started = time.perf_counter()
    run = run_program(config, preview=preview)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "resources": len(run.resources),
        "mesh_bytes": mesh_bytes(run) if not preview else 0,
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def measure(nodes: int, preview: bool) -> dict[str, float]:
    code = f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); from bench.program_eval import measure_one; "
    code += f"print(json.dumps(measure_one({nodes}, {preview})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def fingerprint(run: ProgramRun) -> dict[str, str]:
    """Inputs of every resource by (type, name): what the engine diffs."""
    return {f"{r.type}::{r.name}": json.dumps(r.inputs, sort_keys=True) for r in run.resources}


def diff(before: ProgramRun, after: ProgramRun) -> tuple[int, int, list[str]]:
    old, new = fingerprint(before), fingerprint(after)
    added = len(new.keys() - old.keys())
    removed = len(old.keys() - new.keys())
    updated = sorted(key.split("::")[-1] for key in old.keys() & new.keys() if old[key] != new[key])
    return added, removed, updated


def change_cost(nodes: int = 20) -> list[tuple[str, int, int, list[str]]]:
    base = stack(nodes)
    reference = run_program(base, preview=False)
    rows = []

    def row(label: str, config: dict[str, Any]) -> None:
        added, removed, updated = diff(reference, run_program(config, preview=False))
        rows.append((label, added, removed, updated))

    row("nothing", copy.deepcopy(base))
    grown = copy.deepcopy(base)
    grown["nodes"].append({"name": "agent-new", "role": "agent", "host": "192.0.9.9", "meshAddress": "10.170.0.1"})
    row("add one node", grown)
    labelled = copy.deepcopy(base)
    labelled["nodes"][5]["labels"] = {"tier": "web"}
    row("change one label", labelled)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 50, 200])
    args = parser.parse_args()

    print("Program evaluation under mocks (fresh process per row)")
    header = ("nodes", 6), ("mode", 8), ("seconds", 8), ("peak MiB", 9), ("resources", 10), ("per node", 9)
    print(" ".join(f"{name:>{width}}" for name, width in header), f"{'mesh stdin KiB':>15}")
    for nodes in args.sizes:
        for mode, preview in (("preview", True), ("up", False)):
            m = measure(nodes, preview)
            per_node = m["resources"] / nodes
            mesh = f"{m['mesh_bytes'] / 1024:15.1f}" if not preview else f"{'-':>15}"
            print(
                f"{nodes:>6} {mode:>8} {m['seconds']:8.2f} {m['peak_mib']:9.0f} {m['resources']:>10.0f}"
                f" {per_node:9.2f} {mesh}"
            )

    print("\nChange cost on a 20-node stack (resources the engine would add, remove, update)")
    print(f"{'change':<18} {'added':>6} {'removed':>8} {'updated':>8}  which updated")
    for label, added, removed, updated in change_cost():
        kinds: dict[str, int] = {}
        for name in updated:
            kind = name.rsplit("-", 1)[-1]
            kinds[kind] = kinds.get(kind, 0) + 1
        summary = ", ".join(f"{count} x -{kind}" for kind, count in sorted(kinds.items())) or "-"
        print(f"{label:<18} {added:>6} {removed:>8} {len(updated):>8}  {summary}")


if __name__ == "__main__":
    main()
