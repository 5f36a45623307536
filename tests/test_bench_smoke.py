"""Every benchmark script in bench/ runs once at its smallest size, so a bench that rots fails CI.

The figures stay out of the tests: each script must exit 0 and print its table, nothing more.
A new script in bench/ needs an entry in SMOKE_RUNS, or `test_every_bench_script_has_a_smoke_run`
fails.
"""

from __future__ import annotations

import importlib.util
import itertools
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.testbed.nodes import missing_requirements

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"


@dataclass(frozen=True)
class SmokeRun:
    args: tuple[str, ...]
    # Lines of the script's tables that must show up in its output, header and first row.
    expected: tuple[str, ...]
    testbed: bool = False  # boots testbed nodes: needs root and the testbed's tools
    realengine: bool = False  # drives the real pulumi CLI: needs ./scripts/engine's tools (scripts/test)
    timeout: float = 120


SMOKE_RUNS = {
    "program_eval.py": SmokeRun(
        args=("--smoke",),
        expected=(
            " nodes     mode  seconds        range   cpu s  peak MiB  resources",
            "     1  preview ",
            "     1       up ",
            "Scaling (same run; target: 200 nodes within 25x of 10 nodes):",
            "change              added  removed  updated  which updated",
            "change one label ",
            "Load after: ",
        ),
    ),
    "testbed_convergence.py": SmokeRun(
        args=("--sizes", "1"),
        expected=(
            "Load before: ",
            "  N  boot s  cmds  apply s  converge s  slowest s   sum s  ratio",
            "  1 ",
            "Load after: ",
        ),
        testbed=True,
        timeout=300,
    ),
    # The whole first up of one node and its upgrade, the stand-in instant: the code paths, not the order.
    "testbed_day1.py": SmokeRun(
        args=(
            *("--sizes", "1", "--upgrade-nodes", "1", "--concurrency", "1"),
            *("--install-seconds", "0", "--start-seconds", "0"),
        ),
        expected=(
            "Load before: ",
            "  N    graph  boot s  cmds  peak  k3s s  wall s  joined s  path s  slowest  ratio",
            "  1    today ",
            "  N  conc  wall s  window s  node s   node range  upgrades  expected",
            "  1     1 ",
            "Load after: ",
        ),
        testbed=True,
        timeout=300,
    ),
    # One node, the stand-in instant, with the real CLI: day 1, the no-op up, destroy.
    "real_engine.py": SmokeRun(
        args=("--sizes", "1", "--install-seconds", "0", "--start-seconds", "0"),
        expected=("Load before: ", "  N  day 1 s    vs 2  no-op s  ssh  add s", "  1 ", "Load after: "),
        testbed=True,
        realengine=True,
        timeout=900,
    ),
}


def run_bench(script: str, smoke: SmokeRun) -> subprocess.CompletedProcess[str]:
    """Run one bench script; on a timeout interrupt it first, so a testbed bench tears its nodes down."""
    argv = [sys.executable, str(BENCH / script), *smoke.args]
    with subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=smoke.timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            try:
                stdout, stderr = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                stdout, stderr = proc.communicate()
            pytest.fail(f"{script} {' '.join(smoke.args)} took over {smoke.timeout:.0f}s:\n{stdout}\n{stderr}")
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


def test_every_bench_script_has_a_smoke_run() -> None:
    scripts = {path.name for path in BENCH.glob("*.py") if path.name != "__init__.py"}
    assert scripts == set(SMOKE_RUNS), "each bench/*.py needs its smallest-size arguments in SMOKE_RUNS"


@pytest.mark.bench
@pytest.mark.parametrize(
    "script",
    [
        pytest.param(
            name,
            marks=[
                *([pytest.mark.testbed] if smoke.testbed else []),
                *([pytest.mark.realengine] if smoke.realengine else []),
            ],
            id=name.removesuffix(".py"),
        )
        for name, smoke in SMOKE_RUNS.items()
    ],
)
def test_bench_runs_at_smallest_size(script: str) -> None:
    smoke = SMOKE_RUNS[script]
    if smoke.testbed:
        reason = missing_requirements()
        if reason:
            pytest.skip(reason)
    result = run_bench(script, smoke)
    output = f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr[-4000:]}"
    assert result.returncode == 0, f"{script} exited {result.returncode}\n{output}"
    missing = [line for line in smoke.expected if line not in result.stdout]
    assert not missing, f"{script} did not print {missing}\n{output}"


def test_the_old_graph_of_the_day1_bench_chains_each_agent_behind_the_previous_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`testbed_day1.py --old-graph` replays the graph before issue 12; its smoke run has too few
    nodes to take that path, so the chain it adds is checked here, on the program's own graph."""
    spec = importlib.util.spec_from_file_location("testbed_day1", BENCH / "testbed_day1.py")
    assert spec is not None and spec.loader is not None
    day1 = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, day1)  # its dataclasses look their module up there
    spec.loader.exec_module(day1)
    from tests.conftest import base_config
    from tests.harness import run_program
    from tests.testbed.runner import Runner

    config = base_config(agents=3)
    run = run_program(config)
    agents = sorted(n["name"] for n in config["nodes"] if n["role"] == "agent")
    with Runner(run.resources) as today, Runner(day1.chain_agents(run, agents).resources) as chained:
        for previous, agent in itertools.pairwise(agents):
            for step in ("node-object", "k3s", "registered"):
                assert f"{previous}-registered" not in today.deps[f"{agent}-{step}"]
                assert f"{previous}-registered" in chained.deps[f"{agent}-{step}"], f"{agent}-{step}"
        assert {n: d for n, d in chained.deps.items() if not n.startswith(tuple(agents[1:]))} == {
            n: d for n, d in today.deps.items() if not n.startswith(tuple(agents[1:]))
        }
