"""README.md's "Quick start" and "Your first app", followed word by word with the real engine.

The shell and YAML blocks are read from README.md itself, so that an edit of the README is what
runs. Each ```bash block runs in its own `bash` (`set -euo pipefail` first) in the testbed's
controller namespace, in the directory the previous block left the user in, with a HOME of its
own: OpenSSH reads ~/.ssh from the password database, not from $HOME, so each block runs in a
private mount namespace whose /etc/passwd names that HOME as root's. The three nodes are named as
the README names them (harbor-1 the server, harbor-2 and harbor-3 agents); the GitOps repository is
the testbed's git server.

The only departures from the text are the table of `substitutions` (each entry must match its
block exactly once, so a README edit that breaks one fails here instead of running something else)
and these, which are the user's world rather than the README's words:

- the clone is a copy of this work tree, nothing vendored, whose upstream pins are those of
  `copy_project`: upstream's for Argo CD, the test fixtures for the k3s installer (the testbed's k3s
  is a stand-in) and for any file the machine could not fetch. `./scripts/vendor` runs as written
  and takes Argo CD's manifests from the Go module proxy, as it does wherever GitHub is out of
  reach; the controller's namespace reaches no proxy, so the user's GOPROXY is this machine's Go
  module download cache (where `copy_project` fetched them) and GOSUMDB is off (the checksum
  database is out of reach too; the pins' sha256 is checked all the same);
- the user's SSH identity (~/.ssh/id_ed25519) is the key the testbed's nodes and git server
  authorize, as a VPS provider's console key would be, and ~/.ssh/config accepts a host key on first
  contact (`StrictHostKeyChecking accept-new`) where the user would type "yes"; the user has a git
  identity (~/.gitconfig);
- "add harbor-gitops-write.pub to your repository as a deploy key" is done on the git server, as
  GitHub's settings page would (the read-only key restricted to `git-upload-pack`);
- `${EDITOR:-nano}`: EDITOR is a script that edits every line marked `EDIT` to the testbed's values
  (and refuses a marked line it has no value for), and adds `k3s.airgap: true`: the testbed's nodes
  have no internet, so k3s is pre-placed on them, where a VPS downloads it;
- Pulumi's two prompts: the passphrase comes from PULUMI_CONFIG_PASSPHRASE_FILE (which the README
  names), `pulumi up`'s confirmation from PULUMI_SKIP_CONFIRMATIONS=true (the CLI's own variable
  for skipping confirmation prompts; without a terminal `up` would refuse to go on without `--yes`);
  the tools are those of `./scripts/engine env`, without its backend and PULUMI_HOME: `pulumi login
  --local` picks the backend, as the README says;
- Argo CD's application controller cannot run here (no images). The example turns on
  `gitops.syncOnApply`, whose step waits for the controller, so the testbed's controller stand-in
  plays it on harbor-1 during `pulumi up`, with the repository's head as "git". Nothing is
  deployed: the Applications' sync status is the stand-in's word, so the test asserts only that
  the API holds them;
- for the same reason the test plays the root Application's sync, after `pulumi up` and after the
  first app's push: every manifest under cluster/apps of the pushed main, applied server-side to
  the real API as Argo CD's application controller (`--as` its ServiceAccount, which the cluster
  admin may impersonate), as Argo CD would apply them;
- the GitOps repository is cloned with the README's own command (the URL substituted) and the
  user's own access (their SSH identity), as the README says.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.realengine.cli import ROOT, copy_project, engine_environment
from tests.realengine.conftest import booted, stop_tunnels_of
from tests.testbed.nodes import GIT_REPO, Testbed
from tests.testbed.stack import stack_config

pytestmark = [pytest.mark.realengine, pytest.mark.testbed]

README = ROOT / "README.md"
NODES = ["harbor-1", "harbor-2", "harbor-3"]
DOC_ADDRESSES = {"harbor-1": "203.0.113.10", "harbor-2": "198.51.100.20", "harbor-3": "192.0.2.30"}
EXAMPLE_REPO = "git@github.com:example-org/cluster.git"
PASSPHRASE = "quick-start-passphrase"  # a test stack's, not anyone's secret
CONTROLLER = "/usr/local/bin/argocd-controller-standin"
CONTROLLER_GIT = "/var/lib/argocd-standin-git.json"
CONTROLLER_SOURCE = ROOT / "tests" / "testbed" / "standin" / "argocd-controller-standin"
APP_CONTROLLER = "system:serviceaccount:argocd:argocd-application-controller"


@dataclass(frozen=True)
class Substitution:
    """One departure from the README's words: `old` (exactly once in its block) becomes `new`."""

    old: str
    new: str
    why: str


def substitutions(tb: Testbed, project_copy: Path) -> dict[str, list[Substitution]]:
    """Per block (its section and number, from 1), what differs between a user's world and this one."""
    assert tb.git is not None
    addresses = [
        Substitution(DOC_ADDRESSES[name], tb.nodes[name].address, "documentation addresses: the testbed's nodes")
        for name in NODES
    ]
    return {
        "quick start 1": [
            Substitution(
                "git clone <URL of this repository> space-harbor",
                f"cp -a {project_copy} space-harbor",
                "the clone: this work tree, copied (no network)",
            ),
            Substitution(
                "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt",
                ".venv/bin/pip install --no-index --dry-run --quiet -r requirements.txt",
                "the shared .venv already holds requirements.txt (no index here): checked, not installed",
            ),
        ],
        "quick start 2": addresses,
        "first app clone": [
            Substitution(EXAMPLE_REPO, tb.git_url(), "the example repository is the testbed's git server"),
        ],
        "first app yaml 1": [
            Substitution(EXAMPLE_REPO, tb.git_url(), "the example repository is the testbed's git server"),
        ],
        "first app bash 1": [
            Substitution(
                "curl https://hello.example.org",
                ": no image can run here, so nothing is served at https://hello.example.org",
                "no container image can run on the testbed",
            ),
        ],
    }


def section(name: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {name}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def fenced(text: str, language: str) -> list[str]:
    """The ```language blocks of a Markdown text, a list item's indentation removed."""
    blocks = []
    for match in re.finditer(rf"^( *)```{language}\n(.*?)^ *```", text, re.S | re.M):
        indent = len(match.group(1))
        blocks.append("\n".join(line[indent:] for line in match.group(2).splitlines()) + "\n")
    return blocks


def substituted(block: str, entries: list[Substitution]) -> str:
    for entry in entries:
        found = block.count(entry.old)
        assert found == 1, f"{entry.old!r} ({entry.why}) is {found} times, not once, in the README's block:\n{block}"
        block = block.replace(entry.old, entry.new)
    return block


EDITOR = """#!{python}
# EDITOR for the quick start's step 4: every line marked EDIT gets the testbed's value for the value
# it holds; a marked line whose value has none is refused.
import json, re, sys
values = json.loads({values!r})
path = sys.argv[1]
lines = open(path).read().split("\\n")
for i, line in enumerate(lines):
    marked = re.match(r"^(\\s*(?:- )?[\\w:.-]+: )(.*?)(\\s+# EDIT.*)$", line)
    if not marked:
        continue
    old = marked.group(2).strip()
    key = old[1:-1] if old.startswith('"') else old
    if key not in values:
        sys.exit(f"editor: no value for the line marked EDIT: {{line}}")
    lines[i] = marked.group(1) + json.dumps(values[key]) + marked.group(3)
text = "\\n".join(lines).rstrip("\\n") + "\\n" + {appended!r}
open(path, "w").write(text)
"""

# The testbed's nodes have no internet: k3s comes pre-placed, as in every testbed stack, where a
# VPS would download it.
AIRGAP = "  space-harbor:k3s:\n    airgap: true\n"


@dataclass
class User:
    """The user's shell: a HOME, an environment, the directory the last block left them in."""

    tb: Testbed
    home: Path
    env: dict[str, str]
    cwd_file: Path
    passwd: Path
    log: list[str] = field(default_factory=list)

    def run(self, script: str, *, what: str, timeout: float = 1800) -> str:
        body = self.home.parent / "block.sh"
        body.write_text(f'set -euo pipefail\ncd "$(cat "$HARBOR_CWD")"\ntrap \'pwd >"$HARBOR_CWD"\' EXIT\n{script}')
        started = time.monotonic()
        done = run_as_user(body, self.passwd, {**self.env, "HARBOR_CWD": str(self.cwd_file)}, self.tb.ctl, timeout)
        output = done.stdout + done.stderr
        self.log.append(f"--- {what} ({time.monotonic() - started:.0f}s, exit {done.returncode})\n{script}\n{output}")
        assert done.returncode == 0, f"{what} exited {done.returncode}:\n{script}\n{output[-6000:]}"
        return done.stdout

    @property
    def cwd(self) -> Path:
        return Path(self.cwd_file.read_text().strip())


def user_passwd(home: Path, target: Path) -> Path:
    """/etc/passwd with `home` as root's home: OpenSSH and Pulumi find "~" there, not in $HOME."""
    target.write_text(
        "".join(
            re.sub(r"^(root:[^:]*:0:0:[^:]*:)[^:]*:", rf"\g<1>{home}:", line)
            for line in Path("/etc/passwd").read_text().splitlines(keepends=True)
        )
    )
    return target


def run_as_user(
    script: Path, passwd: Path, env: dict[str, str], netns: str | None, timeout: float
) -> subprocess.CompletedProcess[str]:
    """`bash script` with `passwd` bound over /etc/passwd in a mount namespace of its own (and in
    `netns`), so that nothing lands in the real root's home."""
    netns_prefix = ["ip", "netns", "exec", netns] if netns else []
    return subprocess.run(
        [*netns_prefix, "unshare", "--mount", "--propagation", "private",
         "bash", "-c", 'mount --bind "$1" /etc/passwd && exec bash "$0"', str(script), str(passwd)],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )  # fmt: skip


def shell_environment(home: Path, passphrase: Path) -> dict[str, str]:
    """A user's shell after `eval "$(./scripts/engine env)"`, less the backend and PULUMI_HOME it
    sets: `pulumi login --local` chooses the backend, under this HOME."""
    return {
        "PATH": engine_environment()["PATH"],
        "HOME": str(home),
        "USER": "root",
        "LOGNAME": "root",
        "LANG": "C.UTF-8",
        "NO_COLOR": "1",
        "PULUMI_CONFIG_PASSPHRASE_FILE": str(passphrase),
        "PULUMI_SKIP_CONFIRMATIONS": "true",
        # no network here: no update check, no plugin download (the plugins are on PATH)
        "PULUMI_SKIP_UPDATE_CHECK": "true",
        "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
    } | go_module_proxy_of_this_machine()


def go_module_proxy_of_this_machine() -> dict[str, str]:
    """The user's Go module proxy: this machine's download cache, served as files (no network in the
    controller's namespace). None without Go: `copy_project` then pinned only fixtures."""
    go = shutil.which("go")
    if go is None:
        return {}
    cache = subprocess.run([go, "env", "GOMODCACHE"], capture_output=True, text=True, check=True).stdout.strip()
    return {"GOPROXY": f"file://{cache}/cache/download", "GOSUMDB": "off"}


def make_user(tb: Testbed, tmp: Path, editor_values: dict[str, str]) -> User:
    home = tmp / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    identity = home / ".ssh" / "id_ed25519"
    identity.write_text(tb.client_key)
    identity.chmod(0o600)
    (home / ".ssh" / "id_ed25519.pub").write_text(tb.client_public_key + "\n")
    (home / ".ssh" / "config").write_text("Host *\n    StrictHostKeyChecking accept-new\n")
    (home / ".gitconfig").write_text("[user]\n\tname = Quick Start\n\temail = quickstart@harbor.test\n")
    passwd = user_passwd(home, tmp / "passwd")
    passphrase = tmp / "passphrase"
    passphrase.write_text(PASSPHRASE)
    passphrase.chmod(0o600)
    editor = tmp / "editor"
    editor.write_text(
        EDITOR.format(python=ROOT / ".venv" / "bin" / "python", values=json.dumps(editor_values), appended=AIRGAP)
    )
    editor.chmod(0o755)
    env = shell_environment(home, passphrase) | {"EDITOR": str(editor)}
    work = tmp / "work"
    work.mkdir()
    cwd_file = tmp / "cwd"
    cwd_file.write_text(f"{work}\n")
    return User(tb, home, env, cwd_file, passwd)


def editor_values(tb: Testbed) -> dict[str, str]:
    """The testbed's value for each example value a line marked EDIT holds."""
    config = stack_config(tb)
    example = yaml.safe_load((ROOT / "examples" / "three-vps.yaml").read_text())["config"]
    values = {example["space-harbor:domain"]: config["domain"]}
    for name in NODES:
        values[DOC_ADDRESSES[name]] = tb.nodes[name].address
    gitops = example["space-harbor:gitops"]
    values[gitops["repoUrl"]] = config["gitops"]["repoUrl"]
    values[gitops["knownHosts"]] = config["gitops"]["knownHosts"]
    components = example["space-harbor:components"]
    values[components["traefik"]["acmeEmail"]] = config["components"]["traefik"]["acmeEmail"]
    values[components["infracheck"]["host"]] = config["components"]["infracheck"]["host"]
    return values


def like_a_fresh_vps(tb: Testbed) -> None:
    """What step 2 is for: a provider's image names the machine after itself. (Not its swap: a
    container may not call swapoff, so the nodes' fstab lists none and swapoff -a has nothing to do.)"""
    for node in tb.nodes.values():
        tb.ssh(node.name, f"hostnamectl set-hostname vps-{node.index}")


def authorize_deploy_keys(tb: Testbed, home: Path) -> None:
    """What GitHub's "Deploy keys" page does: the write key may push, the read key only fetch."""
    write = (home / ".ssh" / "harbor-gitops-write.pub").read_text().strip()
    read = (home / ".ssh" / "harbor-gitops-read.pub").read_text().strip()
    lines = f"{write}\nrestrict,command=\"git-upload-pack '{GIT_REPO}'\" {read}\n"
    tb.ssh("git", "cat >> /root/.ssh/authorized_keys", input=lines)


def root_application_files(tb: Testbed) -> dict[str, str]:
    """What the root Application syncs: every manifest under cluster/apps of the pushed main."""
    listing = tb.ssh("git", f"git -C {GIT_REPO} ls-tree -r --name-only main cluster/apps").stdout.split()
    manifests = [path for path in listing if path.endswith((".yaml", ".yml", ".json"))]
    return {path: tb.ssh("git", f"git -C {GIT_REPO} show main:{path}").stdout for path in manifests}


def sync_root_application(tb: Testbed) -> str:
    """The root Application's sync, which Argo CD would run: its manifests, applied server-side to
    the real API (kubectl on harbor-1) as Argo CD's application controller."""
    documents = "".join(f"---\n{text}\n" for text in root_application_files(tb).values())
    apply = "apply --server-side --field-manager=argocd-controller"
    return tb.ssh("harbor-1", f"k3s kubectl -n argocd {apply} --as={APP_CONTROLLER} -f -", input=documents).stdout


class ControllerStandIn:
    """Argo CD's application controller, played on harbor-1 by the testbed's stand-in while `up`
    runs; "git" for it is the git server's main, copied to it every second."""

    def __init__(self, tb: Testbed) -> None:
        self.tb = tb
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.follow_head, daemon=True)

    def __enter__(self) -> ControllerStandIn:
        tb = self.tb
        tb.ssh("harbor-1", f"cat > {CONTROLLER} && chmod 755 {CONTROLLER}", input=CONTROLLER_SOURCE.read_text())
        tb.ssh(
            "harbor-1",
            f"systemd-run --unit=argocd-controller-standin {CONTROLLER} --repo {tb.git_url()}"
            f" --git {CONTROLLER_GIT} --log /var/log/argocd-standin.log --sync-seconds 1",
        )
        self.thread.start()
        return self

    def follow_head(self) -> None:
        written = ""
        while not self.stopping.wait(1):
            head = self.tb.ssh("git", f"git -C {GIT_REPO} rev-parse main", check=False).stdout.strip()
            if head and head != written:
                state = json.dumps({"head": head})
                self.tb.ssh("harbor-1", f"cat > {CONTROLLER_GIT}.new && mv {CONTROLLER_GIT}.new {CONTROLLER_GIT}",
                            input=state, check=False)  # fmt: skip
                written = head

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=30)


@dataclass
class QuickStart:
    tb: Testbed
    user: User
    project: Path
    applications: list[str]
    seconds: float
    first_app_output: str


def follow_the_readme(tb: Testbed, user: User, tmp: Path) -> QuickStart:
    started = time.monotonic()
    project_copy = copy_project(tmp / "clone-source")
    # A fresh clone has nothing vendored: step 1's ./scripts/vendor fetches every pinned file.
    shutil.rmtree(project_copy / ".cache")
    for extra in ("README.md", "examples"):
        source = ROOT / extra
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, project_copy / extra)
    table = substitutions(tb, project_copy)
    after: dict[int, Callable[[], None]] = {
        3: lambda: authorize_deploy_keys(tb, user.home),
        8: lambda: user.log.append(sync_root_application(tb)),
    }
    steps = fenced(section("Quick start"), "bash")
    assert len(steps) == 9, f"the quick start has {len(steps)} shell blocks; this test follows 9"
    like_a_fresh_vps(tb)
    for number, block in enumerate(steps, start=1):
        script = substituted(block, table.get(f"quick start {number}", []))
        if number == 8:
            with ControllerStandIn(tb):
                user.run(script, what=f"quick start, step {number}")
        else:
            user.run(script, what=f"quick start, step {number}")
        if number in after:
            after[number]()
    project = user.cwd
    applications = user.run(
        "kubectl --context harbor-prod -n argocd get applications -o name", what="the Applications"
    ).split()

    first_app = section("Your first app")
    clone = re.findall(r"`(git clone [^`]+)`", first_app)
    assert len(clone) == 1, clone
    user.run(substituted(clone[0], table["first app clone"]) + " && cd cluster", what="the GitOps clone")
    gitops = user.cwd  # the clone of the GitOps repository
    for number, block in enumerate(fenced(first_app, "yaml"), start=1):
        text = substituted(block, table.get(f"first app yaml {number}", []))
        path = re.match(r"# ([\w./-]+): ", text)
        assert path, f"the first app's YAML block {number} does not name its file in its first line"
        (gitops / path.group(1)).parent.mkdir(parents=True, exist_ok=True)
        (gitops / path.group(1)).write_text(text)
    shell = fenced(first_app, "bash")
    assert len(shell) == 1, shell
    lines = substituted(shell[0], table["first app bash 1"]).splitlines(keepends=True)
    assert lines[0].startswith("git add "), lines[0]
    user.run(lines[0], what="the first app's commit")
    user.log.append(sync_root_application(tb))  # its automated sync of the new commit
    output = user.run("".join(lines[1:]), what="the first app's check")
    return QuickStart(tb, user, project, applications, time.monotonic() - started, output)


@pytest.fixture(scope="module")
def quick_start(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QuickStart]:
    tmp = tmp_path_factory.mktemp("quickstart")
    for tb in booted(NODES):
        user = make_user(tb, tmp, editor_values(tb))
        try:
            done = follow_the_readme(tb, user, tmp)
            print(f"quick start, clone to first app: {done.seconds:.0f}s")
            yield done
        finally:
            (tmp / "session.log").write_text("\n".join(user.log))
            project = tmp / "work" / "space-harbor"
            if project.is_dir():
                stop_tunnels_of(user.home, project, user.env["PATH"])


def kubectl_json(quick_start: QuickStart, args: str) -> dict:
    return json.loads(quick_start.user.run(f"kubectl --context harbor-prod {args} -o json", what=f"kubectl {args}"))


def ready(node: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions", []))


def test_the_quick_start_gives_three_ready_nodes(quick_start: QuickStart) -> None:
    nodes = {item["metadata"]["name"]: item for item in kubectl_json(quick_start, "get nodes")["items"]}
    assert set(nodes) == set(NODES)
    conditions = {name: node["status"].get("conditions") for name, node in nodes.items()}
    assert all(ready(node) for node in nodes.values()), conditions
    stack_file = yaml.safe_load((quick_start.project / "Pulumi.prod.yaml").read_text())["config"]
    pins = {node["name"]: node["sshHostKey"] for node in stack_file["space-harbor:nodes"]}
    assert pins == {name: quick_start.tb.nodes[name].host_key for name in NODES}


def test_step_1_vendored_every_pin_and_argo_cd_from_the_go_module(quick_start: QuickStart) -> None:
    step_1 = next(entry for entry in quick_start.user.log if entry.startswith("--- quick start, step 1 "))
    pins = yaml.safe_load((quick_start.project / "manifests" / "upstream.yaml").read_text())
    for kind, versions in pins.items():
        for version, fields in versions.items():
            assert f"{kind} {version}: fetched " in step_1, step_1
            if fields["url"].startswith("https://raw.githubusercontent.com/argoproj/argo-cd/"):
                assert f"of Go module github.com/argoproj/argo-cd/v2@{version}, sha256 {fields['sha256']}" in step_1


def test_step_2_named_each_node_as_the_stack_does(quick_start: QuickStart) -> None:
    for name in NODES:
        assert quick_start.tb.ssh(name, "hostname").stdout.strip() == name


def test_the_root_and_the_platform_applications_are_in_the_api(quick_start: QuickStart) -> None:
    """Listed, not Synced: nothing is deployed here (the sync status is a stand-in's word)."""
    platform = {
        document["metadata"]["name"]
        for path, text in root_application_files(quick_start.tb).items()
        if path.startswith("cluster/apps/platform/")
        for document in yaml.safe_load_all(text)
        if document and document["kind"] == "Application"
    }
    assert {"traefik", "infracheck"} <= platform, platform
    names = {name.split("/", 1)[1] for name in quick_start.applications}
    assert names >= {"space-harbor", *platform}, names


def test_the_first_app_is_committed_and_accepted_by_the_api(quick_start: QuickStart) -> None:
    tb = quick_start.tb
    log = tb.ssh("git", f"git -C {GIT_REPO} log -1 --format=%s main").stdout.strip()
    assert log == "hello"
    files = tb.ssh("git", f"git -C {GIT_REPO} ls-tree -r --name-only main").stdout.split()
    assert {"cluster/apps/user/hello.yaml", "apps-src/hello/hello.yaml"} <= set(files), files
    app = kubectl_json(quick_start, "-n argocd get application hello")
    assert app["spec"]["source"]["repoURL"] == tb.git_url()
    assert app["spec"]["source"]["path"] == "apps-src/hello"
    namespace = kubectl_json(quick_start, "get namespace hello")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert re.search(r"^hello\s", quick_start.first_app_output, re.M), quick_start.first_app_output


def test_step_6_pins_the_single_node_example_and_adds_no_node(tmp_path: Path) -> None:
    """ "One VPS only: start from examples/single-node.yaml": steps 5 and 6 as written (the real CLI,
    ssh-keyscan answering for the one host) pin nodes[0] and make no nodes[1]."""
    home, project, tools = tmp_path / "home", tmp_path / "space-harbor", tmp_path / "bin"
    for folder in (home, project, tools):
        folder.mkdir()
    shutil.copy2(ROOT / "Pulumi.yaml", project / "Pulumi.yaml")
    shutil.copy2(ROOT / "examples" / "single-node.yaml", project / "Pulumi.prod.yaml")
    example_host = yaml.safe_load((project / "Pulumi.prod.yaml").read_text())["config"]["space-harbor:nodes"][0]["host"]
    pin = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHNpbmdsZS1ub2RlLXRlc3QtaG9zdC1rZXktMDAwMDA"
    keyscan = tools / "ssh-keyscan"
    keyscan.write_text(f'#!/bin/sh\nfor host; do :; done\n[ "$host" = {example_host} ] && echo "$host {pin}"\n')
    keyscan.chmod(0o755)
    passphrase = tmp_path / "passphrase"
    passphrase.write_text(PASSPHRASE)
    env = shell_environment(home, passphrase)
    env["PATH"] = f"{tools}:{env['PATH']}"
    steps = fenced(section("Quick start"), "bash")
    script = tmp_path / "steps.sh"
    script.write_text(f"set -euo pipefail\ncd {project}\n{steps[4]}{steps[5]}")
    done = run_as_user(script, user_passwd(home, tmp_path / "passwd"), env, None, 300)
    assert done.returncode == 0, done.stdout + done.stderr
    nodes = yaml.safe_load((project / "Pulumi.prod.yaml").read_text())["config"]["space-harbor:nodes"]
    assert [(node.get("name"), node.get("sshHostKey")) for node in nodes] == [("harbor-1", pin)]
