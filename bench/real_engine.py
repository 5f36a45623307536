"""Day 1, a no-op `up` and adding a node, with the real `pulumi` CLI on the testbed.

Not a test: the real-engine benchmark. For each N it boots N testbed nodes (n1 the server, the
rest agents) with the real control plane behind the k3s stand-in, initialises a stack as a user
does (tests/realengine/) and times, with the real CLI:
  day 1 s    the first `pulumi up`, start to end (every node Ready in the real API afterwards)
  vs 2       day 1 s / the N=2 run's day 1 s: one server and one agent alone is the slowest
             node's own path (an agent waits for the server), so 1.0 means no node waited for
             another beyond that
  no-op s    a second `pulumi up` with nothing changed
  ssh        SSH logins that no-op `up` opened on all nodes together (the goal is 0)
  add s      `pulumi up` adding one more node (booted beside the others, left out of day 1);
             only with --add
The k3s stand-in takes --install-seconds to install and --start-seconds to start (5 s each by
default, as bench/testbed_day1.py), so the figures measure the order of the steps, not a no-op.

Run as root from the repo root, once ./scripts/engine build has built the tools:
  .venv/bin/python bench/real_engine.py [--sizes 2 4 8] [--add]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.realengine.cli import Pulumi, control_plane_binaries, copy_project  # noqa: E402
from tests.realengine.conftest import RealStack, stop_tunnels  # noqa: E402
from tests.realengine.test_real_engine import api_nodes, logins, ready  # noqa: E402
from tests.testbed.nodes import BENCH_K3S_INSTALL_SECONDS, BENCH_K3S_START_SECONDS, Testbed  # noqa: E402
from tests.testbed.stack import K3S_VERSION, stack_config  # noqa: E402


def timed(pulumi: Pulumi, *args: str) -> float:
    started = time.monotonic()
    pulumi.run(*args)
    return time.monotonic() - started


def measure(size: int, add: bool, install_s: float, start_s: float) -> dict[str, float | int | None]:
    names = [f"n{i}" for i in range(1, size + 1)]
    extra = f"n{size + 1}"
    tb = Testbed(
        k3s_version=K3S_VERSION,
        k3s_install_seconds=install_s,
        k3s_start_seconds=start_s,
        control_plane=control_plane_binaries(),
    )
    try:
        tb.start()
        tb.add_nodes([*names, *([extra] if add else [])])
        tb.add_git_server()
        with tempfile.TemporaryDirectory(prefix="harbor-bench-real-") as tmp:
            project = copy_project(Path(tmp) / "project")
            stack = RealStack(tb, Pulumi(project, Path(tmp) / "state", tb.ctl), {}, name="bench")
            try:
                stack.pulumi.stack_init(stack.name)
                stack.apply_config(stack_config(tb, node_names=names))
                day1 = timed(stack.pulumi, "up", "--yes", "--skip-preview")
                nodes = api_nodes(tb)
                assert set(nodes) == set(names) and all(ready(n) for n in nodes.values()), "not every node is Ready"
                before = logins(tb)
                noop = timed(stack.pulumi, "up", "--yes", "--skip-preview")
                after = logins(tb)
                # reading the logins is itself one login per node
                ssh = sum(after[name] - before[name] - 1 for name in names)
                added = None
                if add:
                    stack.apply_config(stack_config(tb))
                    added = timed(stack.pulumi, "up", "--yes", "--skip-preview")
                    assert ready(api_nodes(tb)[extra]), f"{extra} did not join"
                stack.pulumi.run("destroy", "--yes", "--skip-preview")
            finally:
                stop_tunnels(stack)
    finally:
        tb.close()
    return {"day1": day1, "noop": noop, "ssh": ssh, "add": added}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--add", action="store_true", help="also time adding one node to the largest size")
    parser.add_argument("--install-seconds", type=float, default=BENCH_K3S_INSTALL_SECONDS)
    parser.add_argument("--start-seconds", type=float, default=BENCH_K3S_START_SECONDS)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/real_engine.py boots testbed nodes: run it as root")
    print(f"Load before: {os.getloadavg()[0]:.2f}")
    print(f"  N  day 1 s    vs 2  no-op s  ssh  add s   (stand-in: {args.install_seconds:g} s install, "
          f"{args.start_seconds:g} s start)")  # fmt: skip
    base = None
    largest = max(args.sizes)
    for size in sorted(args.sizes):
        row = measure(size, args.add and size == largest, args.install_seconds, args.start_seconds)
        if size == 2:
            base = row["day1"]
        ratio = f"{row['day1'] / base:6.2f}" if base else "     -"
        add = f"{row['add']:6.1f}" if row["add"] is not None else "     -"
        print(f"{size:3d}  {row['day1']:7.1f}  {ratio}  {row['noop']:7.1f}  {row['ssh']:3d}  {add}", flush=True)
    print(f"Load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
