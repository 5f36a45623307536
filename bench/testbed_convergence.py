"""How long the program's mesh (+ firewall) commands take to converge a real mesh of N nodes.

Not a test: a benchmark for issue 3's closing note. For each N it boots N testbed nodes, runs
the program (under mocks, up mode) for them, applies every `-mesh` and `-firewall` command (and
what they wait for: the cluster-wide `cluster-departures` step on the first server) with the
testbed runner (independent commands in parallel, as the Pulumi engine does), and stops the
clock when every node pings every other node's mesh address through WireGuard.

Figures printed per N:
  converge   apply start -> all N*(N-1) pings answered
  apply      apply start -> last command done
  slowest    the slowest node's own apply inside that run (first start -> last finish of its commands)
  sum        the sum of every node's own apply: what a one-node-at-a-time apply would cost at least
  ratio      converge / slowest: near 1 means parallel apply, near N means a sum
  vs single  converge / the apply of a lone node on an idle machine (the N=1 run)

Run as root from the repo root:  .venv/bin/python bench/testbed_convergence.py [--sizes 1 2 4 8]
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.testbed.nodes import Testbed, missing_requirements  # noqa: E402
from tests.testbed.stack import K3S_VERSION, MESH_BASE, MESH_INTERFACE, names, program, stack_config  # noqa: E402


def load() -> str:
    """The load averages (1, 5, 15 min) and runnable/total tasks: the machine is shared."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:4])


def wait_pings(tb: Testbed, started: float, timeout: float = 120) -> float:
    """Seconds from `started` until every node reaches every other mesh address."""
    addresses = {n.name: f"{MESH_BASE}{n.index}" for n in tb.nodes.values()}

    def one(name: str) -> float:
        others = " ".join(a for other, a in addresses.items() if other != name)
        script = (
            f"ok=0; for a in {others}; do ping -c1 -W1 -I {MESH_INTERFACE} $a >/dev/null & done; "
            "for job in $(jobs -p); do wait $job || ok=1; done; exit $ok"
        )
        deadline = time.monotonic() + timeout
        while True:
            if not others or tb.ssh(name, script, check=False).returncode == 0:
                return time.monotonic() - started
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}: mesh did not converge within {timeout}s")
            time.sleep(0.1)

    with ThreadPoolExecutor(max_workers=len(addresses)) as pool:
        return max(pool.map(one, addresses))


def measure(size: int) -> dict[str, float]:
    with Testbed(k3s_version=K3S_VERSION) as tb:
        t0 = time.monotonic()
        tb.add_nodes([f"n{i}" for i in range(1, size + 1)])
        boot = time.monotonic() - t0
        _, runner = program(tb, stack_config(tb))
        with runner:
            commands = names(runner, "-mesh", "-firewall")
            started = time.monotonic()
            results = runner.apply(commands)
            applied = time.monotonic() - started
            converge = wait_pings(tb, started)
        per_node: dict[str, list[float]] = {}
        for result in results:
            node = result.name.rsplit("-", 1)[0]
            if node not in tb.nodes:
                continue  # a cluster-wide step the mesh waits for (cluster-departures): in `apply` only
            first, last = per_node.get(node, [result.started, result.finished])
            per_node[node] = [min(first, result.started), max(last, result.finished)]
        spans = {node: last - first for node, (first, last) in per_node.items()}
        return {
            "nodes": size,
            "boot": boot,
            "apply": applied,
            "converge": converge,
            "slowest": max(spans.values()),
            "sum": sum(spans.values()),
            "commands": len(results),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    args = parser.parse_args()
    reason = missing_requirements()
    if reason:
        print(f"cannot run the testbed here: {reason}", file=sys.stderr)
        return 2
    print(f"Load before: {load()}")
    rows = [measure(size) for size in args.sizes]
    single = next((r["converge"] for r in rows if r["nodes"] == 1), None)
    header = (
        f"{'N':>3} {'boot s':>7} {'cmds':>5} {'apply s':>8} {'converge s':>11} {'slowest s':>10} "
        f"{'sum s':>7} {'ratio':>6}"
    )
    if single:
        header += f" {'vs single':>10}"
    print(header)
    for r in rows:
        line = (
            f"{r['nodes']:>3} {r['boot']:>7.2f} {r['commands']:>5} {r['apply']:>8.2f} {r['converge']:>11.2f} "
            f"{r['slowest']:>10.2f} {r['sum']:>7.2f} {r['converge'] / r['slowest']:>6.2f}"
        )
        if single:
            line += f" {r['converge'] / single:>10.2f}"
        print(line)
    print("ratio = converge / slowest node's own apply in the same run; near 1 = parallel, near N = serial.")
    print(f"Load after: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
