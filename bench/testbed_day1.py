"""Day 1 and a k3s upgrade on the testbed, as the engine runs them: the whole graph, not one layer.

Not a test: the benchmark of issue 12. For each N it boots N testbed nodes (n1 the server, the
rest agents), evaluates the program (under mocks, up mode, not timed) and applies the whole first
`pulumi up` with the engine replay (tests/testbed/engine.py: creates in dependency order, as many
at once as the graph allows): preflight, mesh, firewall, k3s install and join, node registration,
the API credential. The clock runs around the engine's `up`; every `-registered` step waits until
its node is Ready, and afterwards the stand-in server must list all N nodes Ready. The k3s
stand-in takes --install-seconds to install and --start-seconds to start (5 s each by default,
BENCH_K3S_*), so the figures measure the order of the steps, not a no-op.

The baseline, "the slowest single node's own steps": an agent cannot join before the server is up,
so a node's time is its critical path including what it must wait for: the first server's steps
up to Ready, the cluster-wide steps, then its own steps. It is taken two ways, and both are printed:
in the same run (`path`: the order of the graph alone, the same contention on both sides of the
ratio) and as a run of its own (`vs 2 nodes`: one server and one agent, nothing else on the
machine's 2 cores). The lone server's run (`vs 1 node`) is printed too but is no baseline for an
agent, whose path holds two k3s installs one after the other (the server's, then its own).

Day-1 figures per N:
  graph      `today`: the program as it is; `chained` (--old-graph, N > 2): the same program with
             each agent's `-node-object` also waiting for the previous agent's `-registered`, the
             edge the graph before issue 12 had on day 1 at upgradeConcurrency 1, really applied
  peak       the most commands running at once (the engine replay runs at most 16; pulumi's
             default parallelism is unbounded)
  k3s        the median `-k3s` step: install plus first start until READY
  wall       the engine's `up`, start to end (every node Ready)
  joined     the same start -> the last node record created on the stand-in server
  path       the slowest node's own critical path, in this run: the longest chain of step
             durations through that node's own steps (preflight, mesh, firewall, node-object, k3s,
             drain/upgrade/uncordon, registered) plus the steps it cannot do without: the first
             server's own steps (an agent joins a running server) and the cluster-wide steps
             (cluster-departures, api-credential). Other nodes' steps are left out, so any wait
             for another node (another agent's install, every node's preflight) counts as overhead.
  ratio      wall / path: 1 is the time of one node; with agents chained one after another it
             grows with N
  chained s  what this run's step times would cost with the chain edge above: an estimate
  serial s   every step's time added up: what a one-command-at-a-time apply would cost
  vs 1 node  wall / the N=1 run's wall (today's graph): a lone server
  vs 2 nodes wall / the N=2 run's wall (today's graph): one server and one agent, on their own

Upgrade (on the --upgrade-nodes cluster, after its day 1): each --concurrency in turn stages a
newer stand-in version on every node, as an operator stages the air-gap binary, sets
`k3s.version` and `k3s.upgradeConcurrency` and runs `up`. Figures:
  wall       the whole `up`;  window  first drain started -> last uncordon finished
  node       one node's upgrade: its drain start -> its uncordon finish (median over the nodes)
  upgrades   window / node: how many node-upgrades the window cost
  expected   servers + ceil(agents / concurrency): servers one at a time, then agents in windows

Run as root from the repo root:
  .venv/bin/python bench/testbed_day1.py [--sizes 1 2 4 8] [--upgrade-nodes 8] [--concurrency 1 2]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import re
import statistics
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness import ProgramRun, run_program  # noqa: E402
from tests.testbed.engine import Engine, Report  # noqa: E402
from tests.testbed.nodes import (  # noqa: E402
    AIRGAP_BINARY,
    BENCH_K3S_INSTALL_SECONDS,
    BENCH_K3S_START_SECONDS,
    STANDIN_K3S,
    Testbed,
    call_in_netns,
    missing_requirements,
)
from tests.testbed.runner import CommandResult, Runner  # noqa: E402
from tests.testbed.stack import K3S_VERSION, stack_config  # noqa: E402

# A node's own steps: `<node>-<step>` (components/k3s.py, mesh.py, firewall.py).
NODE_STEPS = ("preflight", "mesh", "firewall", "node-object", "k3s", "drain", "upgrade", "uncordon", "registered")
STANDIN_NODES = "/var/lib/rancher/k3s/standin/nodes"
SERVER = "n1"


def load() -> str:
    """The load averages (1, 5, 15 min) and runnable/total tasks: the machine is shared."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:4])


def owner(command: str, nodes: Iterable[str]) -> str | None:
    """The node whose own step `command` is, or None for a cluster-wide step."""
    for node in nodes:
        if command.startswith(f"{node}-") and command[len(node) + 1 :] in NODE_STEPS:
            return node
    return None


def longest_path(durations: dict[str, float], deps: dict[str, set[str]], within: set[str]) -> list[str]:
    """The longest chain of durations through the steps `within`, following only edges inside it."""
    done: dict[str, tuple[float, list[str]]] = {}

    def finish(name: str) -> tuple[float, list[str]]:
        if name not in done:
            before = max((finish(d) for d in deps[name] & within), default=(0.0, []), key=lambda f: f[0])
            done[name] = (before[0] + durations[name], [*before[1], name])
        return done[name]

    return max((finish(name) for name in within), default=(0.0, []), key=lambda f: f[0])[1]


def chain_agents(run: ProgramRun, agents: list[str]) -> ProgramRun:
    """The graph before issue 12 at upgradeConcurrency 1: each agent's `-node-object` (so its install
    and registration) also waits for the previous agent's `-registered`, the edge `upgrade_waits`
    added on day 1 as well. Everything else is today's program."""
    urns = {r.name: r.urn for r in run.resources}
    resources = []
    for resource in run.resources:
        for previous, agent in itertools.pairwise(agents):
            if resource.name == f"{agent}-node-object":
                resource = replace(resource, dependencies={*resource.dependencies, urns[f"{previous}-registered"]})
        resources.append(resource)
    return replace(run, resources=resources)


@dataclass
class Cluster:
    """The booted nodes, the engine's state of their stack, and the config it was last run with."""

    tb: Testbed
    engine: Engine
    config: dict[str, Any]

    def evaluate(self, config: dict[str, Any]) -> ProgramRun:
        return call_in_netns(self.tb.ctl, run_program, config)

    def up(self, config: dict[str, Any], *, chained: bool = False) -> tuple[ProgramRun, Report, float, float]:
        """Evaluate (not timed), then `up`; returns the run, the report, and the clock around the up.

        `chained`: with the agents chained as before issue 12 (see `chain_agents`).
        """
        run = self.evaluate(config)
        if chained:
            run = chain_agents(run, sorted(n for n in self.tb.nodes if n != SERVER))
        started = time.time()
        report = self.engine.up(run)
        finished = time.time()
        self.config = config
        return run, report, started, finished


def dependencies(cluster: Cluster, run: ProgramRun) -> dict[str, set[str]]:
    """Which commands each command waits for (over keys and components too), as the runner orders them."""
    runner = Runner(run.resources, workdir=cluster.tb.workdir)
    try:
        return runner.deps
    finally:
        runner.close()


def standin_nodes(tb: Testbed) -> dict[str, dict[str, Any]]:
    """The stand-in server's Node records, with `Ready` as its kubectl reports it."""
    records = tb.ssh(
        SERVER,
        "python3 -c 'import glob, json, sys; "
        f'json.dump([json.load(open(p)) for p in sorted(glob.glob("{STANDIN_NODES}/*.json"))], sys.stdout)\'',
    ).stdout
    ready = {}
    for line in tb.ssh(SERVER, "k3s kubectl get nodes").stdout.splitlines():
        name, status, *_ = line.split("\t")
        ready[name] = status.split(",")[0] == "Ready"
    return {r["name"]: {**r, "ready": ready.get(r["name"], False)} for r in json.loads(records)}


def day1(cluster: Cluster, *, chained: bool = False) -> dict[str, Any]:
    tb = cluster.tb
    run, report, started, finished = cluster.up(cluster.config, chained=chained)
    results = [r for r in report.results if r.action == "create"]
    nodes = sorted(tb.nodes)
    records = standin_nodes(tb)
    not_ready = [n for n in nodes if not records.get(n, {}).get("ready")]
    if not_ready:
        raise RuntimeError(f"after the first up the stand-in server does not list {not_ready} as Ready")
    deps = dependencies(cluster, run)
    durations = {r.name: r.finished - r.started for r in results}
    ran = set(durations)
    deps = {name: deps[name] & ran for name in ran}
    owners = {name: owner(name, nodes) for name in ran}
    shared = {name for name, who in owners.items() if who in (None, SERVER)}
    # A node's path leaves out the other nodes' steps, and so any wait for them.
    paths = {
        node: longest_path(durations, deps, shared | {c for c, who in owners.items() if who == node}) for node in nodes
    }
    slowest = max(paths, key=lambda n: sum(durations[c] for c in paths[n]))
    # Today's step times with the chain before issue 12 added (the `chain_agents` edge), as an estimate.
    with_chain = {name: set(d) for name, d in deps.items()}
    agents = [n for n in nodes if n != SERVER]
    for previous, agent in itertools.pairwise(agents):
        with_chain[f"{agent}-node-object"].add(f"{previous}-registered")
    return {
        "graph": "chained" if chained else "today",
        "nodes": len(nodes),
        "commands": sum(1 for r in results if r.command),
        "wall": finished - started,
        "joined": max(records[n]["created"] for n in nodes) - started,
        "slowest": slowest,
        "path": sum(durations[c] for c in paths[slowest]),
        "critical": [(c, durations[c]) for c in paths[slowest] if durations[c] > 0],
        "chained": sum(durations[c] for c in longest_path(durations, with_chain, ran)),
        "serial": sum(durations.values()),
        "k3s": statistics.median(durations[f"{n}-k3s"] for n in nodes),
        "peak": peak_concurrency(results),
    }


def peak_concurrency(results: list[CommandResult]) -> int:
    """The most commands that were running at one time (the engine replay runs at most 16)."""
    events = sorted([(r.started, 1) for r in results if r.command] + [(r.finished, -1) for r in results if r.command])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def next_version(version: str, step: int) -> str:
    """`version` with its patch release raised by `step`: v1.31.4+k3s1 -> v1.31.5+k3s1."""
    match = re.fullmatch(r"v(\d+)\.(\d+)\.(\d+)(\+k3s\d+)", version)
    if not match:
        raise ValueError(f"not a k3s release: {version}")
    major, minor, patch, suffix = match.groups()
    return f"v{major}.{minor}.{int(patch) + step}{suffix}"


def stage_standin(tb: Testbed, version: str) -> None:
    """Put a stand-in binary of `version` where the air-gap install takes it from, on every node."""
    default = 'STANDIN_VERSION="${K3S_STANDIN_VERSION:-'
    text = STANDIN_K3S.read_text()
    start = text.index(default) + len(default)
    end = text.index('}"', start)
    standin = text[:start] + version + text[end:]
    for name in tb.nodes:
        # A new file moved into place: the running k3s keeps the old one open.
        tb.ssh(
            name,
            f"cat > {AIRGAP_BINARY}.new && chmod 755 {AIRGAP_BINARY}.new && mv {AIRGAP_BINARY}.new {AIRGAP_BINARY}",
            input=standin,
        )


def upgrade(cluster: Cluster, version: str, concurrency: int) -> dict[str, Any]:
    tb = cluster.tb
    stage_standin(tb, version)
    config = json.loads(json.dumps(cluster.config))
    config["k3s"] = {**config["k3s"], "version": version, "upgradeConcurrency": concurrency}
    _, report, started, finished = cluster.up(config)
    by_name = {r.name: r for r in report.results}
    nodes = sorted(tb.nodes)
    spans = {n: by_name[f"{n}-uncordon"].finished - by_name[f"{n}-drain"].started for n in nodes}
    window = max(by_name[f"{n}-uncordon"].finished for n in nodes) - min(by_name[f"{n}-drain"].started for n in nodes)
    records = standin_nodes(tb)
    behind = [n for n in nodes if records[n].get("version") != version or records[n].get("unschedulable")]
    if behind:
        raise RuntimeError(f"after the upgrade to {version}, {behind} are not Ready and uncordoned at it")
    servers = sum(1 for n in config["nodes"] if n["role"] == "server")
    node = statistics.median(spans.values())
    return {
        "concurrency": concurrency,
        "nodes": len(nodes),
        "wall": finished - started,
        "window": window,
        "node": node,
        "node_min": min(spans.values()),
        "node_max": max(spans.values()),
        "upgrades": window / node,
        "expected": servers + math.ceil((len(nodes) - servers) / concurrency),
    }


def boot(size: int, args: argparse.Namespace) -> tuple[Testbed, float]:
    tb = Testbed(
        k3s_version=K3S_VERSION, k3s_install_seconds=args.install_seconds, k3s_start_seconds=args.start_seconds
    )
    try:
        tb.start()
        t0 = time.monotonic()
        tb.add_nodes([f"n{i}" for i in range(1, size + 1)])
        return tb, time.monotonic() - t0
    except BaseException:
        tb.close()
        raise


def measure(size: int, args: argparse.Namespace, *, chained: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Day 1 of `size` fresh nodes (today's graph, or `chained`), then the upgrades if it is that size."""
    tb, booted = boot(size, args)
    try:
        config = stack_config(tb)
        config["k3s"] = {**config["k3s"], "upgradeConcurrency": 1}
        cluster = Cluster(tb, Engine(ssh_prefix=["ip", "netns", "exec", tb.ctl], workdir=tb.workdir), config)
        first = {"boot": booted, **day1(cluster, chained=chained)}
        upgrades = []
        if size == args.upgrade_nodes and not chained:
            for step, concurrency in enumerate(args.concurrency, start=1):
                upgrades.append(upgrade(cluster, next_version(K3S_VERSION, step), concurrency))
        return first, upgrades
    finally:
        tb.close()


def print_day1(rows: list[dict[str, Any]]) -> None:
    today = {r["nodes"]: r["wall"] for r in rows if r["graph"] == "today"}
    print("\nDay 1: the whole first up, 1 server + N-1 agents, until every node is Ready")
    print(
        f"{'N':>3} {'graph':>8} {'boot s':>7} {'cmds':>5} {'peak':>5} {'k3s s':>6} {'wall s':>7} {'joined s':>9} "
        f"{'path s':>7} {'slowest':>8} {'ratio':>6} {'chained s':>10} {'serial s':>9} {'vs 1 node':>10} "
        f"{'vs 2 nodes':>11}"
    )
    for r in rows:
        versus = [f"{r['wall'] / today[n]:.2f}" if n in today else "-" for n in (1, 2)]
        print(
            f"{r['nodes']:>3} {r['graph']:>8} {r['boot']:>7.2f} {r['commands']:>5} {r['peak']:>5} {r['k3s']:>6.2f} "
            f"{r['wall']:>7.2f} {r['joined']:>9.2f} {r['path']:>7.2f} {r['slowest']:>8} {r['wall'] / r['path']:>6.2f} "
            f"{r['chained']:>10.2f} {r['serial']:>9.2f} {versus[0]:>10} {versus[1]:>11}"
        )
    print(
        "ratio = wall / path, where path is the slowest node's own critical path in the same run: its own\n"
        "steps, the first server's and the cluster-wide ones (see the module doc). 1 = the time of one node.\n"
        "chained = today's step times with each agent after the previous one (the graph before issue 12),\n"
        "an estimate; graph `chained` is that graph really applied. serial = every step one after another.\n"
        "vs 1 node / vs 2 nodes = wall / today's graph's wall of a lone server / of one server + one agent.\n"
        "k3s s = median `-k3s` step (install + first start); peak = most commands running at once."
    )
    print("Critical path of the slowest node (steps that took time, seconds):")
    for r in rows:
        steps = ", ".join(f"{name} {seconds:.1f}" for name, seconds in r["critical"])
        print(f"  N={r['nodes']} {r['graph']} {r['slowest']}: {steps}")


def print_upgrades(upgrades: list[dict[str, Any]]) -> None:
    print("\nUpgrade: a new k3s.version on every node (the server first, then the agents)")
    print(
        f"{'N':>3} {'conc':>5} {'wall s':>7} {'window s':>9} {'node s':>7} {'node range':>12} "
        f"{'upgrades':>9} {'expected':>9}"
    )
    for u in upgrades:
        print(
            f"{u['nodes']:>3} {u['concurrency']:>5} {u['wall']:>7.2f} {u['window']:>9.2f} {u['node']:>7.2f} "
            f"{u['node_min']:>5.2f}-{u['node_max']:<6.2f} {u['upgrades']:>9.2f} {u['expected']:>9}"
        )
    print(
        "upgrades = window / node: the window (first drain -> last uncordon) in node-upgrades;\n"
        "node = one node's drain start -> uncordon finish, median over the nodes."
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--upgrade-nodes", type=int, default=8, help="the cluster size to upgrade (0: none)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2], help="k3s.upgradeConcurrency values")
    parser.add_argument("--install-seconds", type=float, default=BENCH_K3S_INSTALL_SECONDS)
    parser.add_argument("--start-seconds", type=float, default=BENCH_K3S_START_SECONDS)
    parser.add_argument(
        "--old-graph",
        action="store_true",
        help="also apply day 1 of each size above 2 with the agents chained, as before issue 12",
    )
    args = parser.parse_args()
    if min(args.sizes) < 1 or args.upgrade_nodes < 0 or min(args.concurrency) < 1:
        parser.error("sizes are >= 1 node, --upgrade-nodes >= 0, --concurrency >= 1")
    reason = missing_requirements()
    if reason:
        print(f"cannot run the testbed here: {reason}", file=sys.stderr)
        return 2
    sizes = sorted(set(args.sizes) | ({args.upgrade_nodes} if args.upgrade_nodes else set()))
    print(f"Load before: {load()}")
    print(f"k3s stand-in: install {args.install_seconds:g} s, start {args.start_seconds:g} s")
    rows, upgrades = [], []
    for size in sizes:
        first, done = measure(size, args, chained=False)
        rows.append(first)
        upgrades += done
        if args.old_graph and size > 2:  # with one agent or none there is nothing to chain
            rows.append(measure(size, args, chained=True)[0])
    print_day1(rows)
    if upgrades:
        print_upgrades(upgrades)
    print(f"\nLoad after: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
