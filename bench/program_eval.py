"""What evaluating the program costs, and how much of the graph a change touches. Prints tables.

Not a test. Two parts:
  1. evaluation: `__main__.py` under mocks (preview and up) for 1, 10, 50 and 200 nodes: wall time
     of the evaluation, peak RSS of a fresh process, registered resources (and per node), and the
     total bytes of the rendered wg-quick node configs, which a full mesh makes grow with N^2.
     In preview the configs hold keys that are not known yet, so they are not rendered ("-").
     Each row is `--repeat` fresh processes (default 3): the median wall time, its range, the
     median CPU time of the process during the evaluation (less sensitive to other load on a
     shared machine), and the largest peak. The targets (200 nodes in under 10 s and under 1 GiB,
     each mode, judged on the median and the largest peak; 200 nodes within 25x the time of 10
     nodes in the same run) are printed as met/missed.
  2. change cost on a 20-node stack: how many resources a change adds, removes or updates. Under
     mocks every key is derived from its name, so two runs differ exactly where inputs differ,
     which is what `pulumi preview` would report as an update.

The machine's load (/proc/loadavg) is printed before and after: the figures mean little without it.
In up mode the mocks make a real RSA key for pulumi-tls (0.3-1 s, holding the GIL); a real run
makes it in the provider's own process, so the bench makes it before the clock starts.

Run from the repo root:  .venv/bin/python bench/program_eval.py [--sizes 1 10 50 200] [--repeat 3]
CI runs `--smoke` (1 node, 1 process, a 6-node change-cost stack) so that a broken bench fails.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from components.sealed_secrets import RSA_BITS  # noqa: E402
from tests.conftest import base_config, pinned  # noqa: E402
from tests.harness import ProgramRun, _mock_rsa_key, run_program  # noqa: E402


def stack(nodes: int) -> dict[str, Any]:
    """One server and `nodes - 1` agents with distinct hosts and mesh addresses."""
    config = base_config(agents=0)
    config["nodes"] += [
        pinned(
            {
                "name": f"agent-{i}",
                "role": "agent",
                "host": f"192.0.{2 + i // 240}.{10 + i % 240}",
                "meshAddress": f"10.161.{i // 250}.{1 + i % 250}",
            }
        )
        for i in range(1, nodes)
    ]
    return config


TARGET_NODES = 200
TARGET_SECONDS = 10.0
TARGET_MIB = 1024.0
# Evaluation must stay near linear: TARGET_NODES nodes within this factor of BASE_NODES nodes.
BASE_NODES = 10
TARGET_RATIO = 25.0
SMOKE_CHANGE_NODES = 6  # the change-cost stack relabels nodes[5]


def wg_config(stdin: str) -> str:
    """The wg-quick file a mesh command carries: its HARBOR_WG_CONFIG assignment, ahead of the script.

    The payload opens with one `NAME=<shell-quoted value>` line per parameter (components/render/
    remote.py); shlex reads each back as one `NAME=value` word.
    """
    assignments = shlex.split(stdin.split("__harbor_main() {", 1)[0])
    values = dict(item.split("=", 1) for item in assignments)
    return values["HARBOR_WG_CONFIG"]


def mesh_config_bytes(run: ProgramRun) -> int | None:
    """Total bytes of every node's rendered wg-quick config; None while they are unknown (preview)."""
    total = 0
    for command in run.commands():
        if command.name.endswith("-mesh"):
            stdin = command.inputs.get("stdin")
            if not isinstance(stdin, str) or "__harbor_main() {" not in stdin:
                return None
            total += len(wg_config(stdin).encode())
    return total


def measure_one(nodes: int, preview: bool) -> dict[str, float | None]:
    """One evaluation in this process; called in a fresh child so peak RSS is its own."""
    config = stack(nodes)
    if not preview:
        _mock_rsa_key(RSA_BITS)  # the provider's work, not the program's (see the module doc)
    started, cpu_started = time.perf_counter(), time.process_time()
    run = run_program(config, preview=preview)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "resources": len(run.resources),
        "mesh_bytes": mesh_config_bytes(run),
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def measure(nodes: int, preview: bool, repeat: int = 1) -> dict[str, Any]:
    """`repeat` evaluations, each in a fresh process: median seconds (and range), largest peak."""
    code = f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); from bench.program_eval import measure_one; "
    code += f"print(json.dumps(measure_one({nodes}, {preview})))"
    runs = []
    for _ in range(repeat):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT)
        if out.returncode != 0:
            raise RuntimeError(f"evaluating {nodes} nodes (preview={preview}) failed:\n{out.stderr}")
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    seconds = [r["seconds"] for r in runs]
    return {
        **runs[0],
        "seconds": statistics.median(seconds),
        "cpu_seconds": statistics.median(r["cpu_seconds"] for r in runs),
        "min_seconds": min(seconds),
        "max_seconds": max(seconds),
        "peak_mib": max(r["peak_mib"] for r in runs),
    }


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
    if nodes < SMOKE_CHANGE_NODES:
        raise ValueError(f"the change-cost stack needs at least {SMOKE_CHANGE_NODES} nodes, not {nodes}")
    base = stack(nodes)
    reference = run_program(base, preview=False)
    rows = []

    def row(label: str, config: dict[str, Any]) -> None:
        added, removed, updated = diff(reference, run_program(config, preview=False))
        rows.append((label, added, removed, updated))

    row("nothing", copy.deepcopy(base))
    grown = copy.deepcopy(base)
    grown["nodes"].append(
        pinned({"name": "agent-new", "role": "agent", "host": "192.0.9.9", "meshAddress": "10.170.0.1"})
    )
    row("add one node", grown)
    labelled = copy.deepcopy(base)
    labelled["nodes"][5]["labels"] = {"tier": "web"}
    row("change one label", labelled)
    return rows


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "unknown CPU")
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem_kib = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:"))
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem_kib / 2**20:.0f} GiB, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def load() -> str:
    """The load averages (1, 5, 15 min) and runnable/total tasks, as /proc/loadavg gives them."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:4])


def targets(rows: dict[tuple[int, str], dict[str, Any]]) -> list[str]:
    lines = []
    for mode in ("preview", "up"):
        m = rows.get((TARGET_NODES, mode))
        if m is None:
            lines.append(f"  {mode}: {TARGET_NODES} nodes not measured (add {TARGET_NODES} to --sizes)")
            continue
        time_ok = "met" if m["seconds"] < TARGET_SECONDS else "MISSED"
        mem_ok = "met" if m["peak_mib"] < TARGET_MIB else "MISSED"
        lines.append(
            f"  {mode:<7} {TARGET_NODES} nodes: median {m['seconds']:.2f} s < {TARGET_SECONDS:.0f} s {time_ok}"
            f" (range {m['min_seconds']:.2f}-{m['max_seconds']:.2f} s); "
            f"peak {m['peak_mib']:.0f} MiB < {TARGET_MIB:.0f} MiB {mem_ok}"
        )
    return lines


def scaling(rows: dict[tuple[int, str], dict[str, Any]]) -> list[str]:
    """TARGET_NODES nodes' median time over BASE_NODES nodes', both from this run, per mode."""
    lines = []
    for mode in ("preview", "up"):
        big, small = rows.get((TARGET_NODES, mode)), rows.get((BASE_NODES, mode))
        if big is None or small is None:
            lines.append(f"  {mode}: not measured (--sizes needs {BASE_NODES} and {TARGET_NODES})")
            continue
        ratio = big["seconds"] / small["seconds"]
        cpu_ratio = big["cpu_seconds"] / small["cpu_seconds"]
        verdict = "met" if ratio <= TARGET_RATIO else "MISSED"
        lines.append(
            f"  {mode:<7} {TARGET_NODES}/{BASE_NODES} nodes: {ratio:.1f}x <= {TARGET_RATIO:.0f}x {verdict}"
            f" ({big['seconds']:.2f} s / {small['seconds']:.2f} s; CPU time {cpu_ratio:.1f}x)"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 50, TARGET_NODES])
    parser.add_argument("--repeat", type=int, default=3, help="fresh processes per row (median time)")
    parser.add_argument("--change-nodes", type=int, default=20, help="size of the change-cost stack")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"smallest run, for CI: --sizes 1 --repeat 1 --change-nodes {SMOKE_CHANGE_NODES}",
    )
    args = parser.parse_args()
    if args.smoke:
        args.sizes, args.repeat, args.change_nodes = [1], 1, SMOKE_CHANGE_NODES

    print(f"Machine: {machine()}")
    print(f"Load before: {load()}")
    print(
        f"\nProgram evaluation under mocks ({args.repeat} fresh processes per row; seconds = the evaluation"
        " itself, median and range; cpu s = its CPU time, median; peak = the largest)"
    )
    header = (
        ("nodes", 6),
        ("mode", 8),
        ("seconds", 8),
        ("range", 12),
        ("cpu s", 7),
        ("peak MiB", 9),
        ("resources", 10),
        ("per node", 9),
        ("mesh conf KiB", 14),
        ("bytes/N^2", 10),
    )
    print(" ".join(f"{name:>{width}}" for name, width in header))
    rows: dict[tuple[int, str], dict[str, Any]] = {}
    for nodes in args.sizes:
        for mode, preview in (("preview", True), ("up", False)):
            m = measure(nodes, preview, args.repeat)
            rows[(nodes, mode)] = m
            per_node = m["resources"] / nodes
            if m["mesh_bytes"] is None:
                mesh, growth = f"{'-':>14}", f"{'-':>10}"
            else:
                mesh, growth = f"{m['mesh_bytes'] / 1024:14.1f}", f"{m['mesh_bytes'] / nodes**2:10.0f}"
            spread = f"{m['min_seconds']:.2f}-{m['max_seconds']:.2f}"
            print(
                f"{nodes:>6} {mode:>8} {m['seconds']:8.2f} {spread:>12} {m['cpu_seconds']:7.2f} {m['peak_mib']:9.0f}"
                f" {m['resources']:>10.0f}"
                f" {per_node:9.2f} {mesh} {growth}"
            )
    print(f"\nTargets ({TARGET_NODES} nodes: under {TARGET_SECONDS:.0f} s and under {TARGET_MIB:.0f} MiB):")
    print("\n".join(targets(rows)))
    print(f"\nScaling (same run; target: {TARGET_NODES} nodes within {TARGET_RATIO:.0f}x of {BASE_NODES} nodes):")
    print("\n".join(scaling(rows)))

    print(f"\nChange cost on a {args.change_nodes}-node stack (resources the engine would add, remove, update)")
    print(f"{'change':<18} {'added':>6} {'removed':>8} {'updated':>8}  which updated")
    for label, added, removed, updated in change_cost(args.change_nodes):
        kinds: dict[str, int] = {}
        for name in updated:
            kind = name.rsplit("-", 1)[-1]
            kinds[kind] = kinds.get(kind, 0) + 1
        summary = ", ".join(f"{count} x -{kind}" for kind, count in sorted(kinds.items())) or "-"
        print(f"{label:<18} {added:>6} {removed:>8} {len(updated):>8}  {summary}")
    print(f"\nLoad after: {load()}")


if __name__ == "__main__":
    main()
