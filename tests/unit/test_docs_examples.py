"""The README's and docs' examples are right: the ones that can run here run, the rest are checked
against the rules they must obey (the root project's, the `applications` project's, the shell's).
"""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from components.config import load_config
from components.platform.traefik import CERT_RESOLVER
from components.render.gitops import render_projects, render_root_project
from tests.conftest import base_config, fake_private_key
from tests.harness import run_program

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = [README, ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
KUBERNETES = "1.31"


def fenced(path: Path, language: str) -> list[str]:
    """The fenced blocks of `language` in a Markdown file, indentation of list items removed."""
    blocks = []
    for match in re.finditer(rf"^( *)```{language}\n(.*?)^ *```", path.read_text(), re.S | re.M):
        indent = len(match.group(1))
        blocks.append("\n".join(line[indent:] for line in match.group(2).splitlines()))
    return blocks


@pytest.fixture
def first_app(tmp_path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    text = README.read_text()
    start = text.index("\n## Your first app\n")
    part = tmp_path / "first-app.md"
    part.write_text(text[start : text.index("\n## ", start + 1)])
    root_file, app_file = fenced(part, "yaml")
    assert root_file.startswith("# cluster/apps/user/hello.yaml") and app_file.startswith("# apps-src/hello/")
    return list(yaml.safe_load_all(root_file)), list(yaml.safe_load_all(app_file))


# --- shell ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_shell_example_parses(path: Path) -> None:
    for block in fenced(path, "bash"):
        checked = subprocess.run(["bash", "-n"], input=block, text=True, capture_output=True)
        assert checked.returncode == 0, f"{checked.stderr}\n{block}"


def test_the_dashboard_command_runs_as_the_docs_write_it(tmp_path: Path) -> None:
    """`eval "$(pulumi stack output argocdDashboard)"`: both commands of the output run, in order."""
    output = run_program(base_config(agents=1)).outputs["argocdDashboard"]
    forms = {
        line.split("#")[0].strip()
        for doc in DOCS
        for line in doc.read_text().splitlines()
        if "argocdDashboard)" in line
    }
    assert forms == {'eval "$(pulumi stack output argocdDashboard)"'}, forms
    bin_dir, log = tmp_path / "bin", tmp_path / "calls"
    (tmp_path / "scripts").mkdir()
    bin_dir.mkdir()
    stubs = {
        bin_dir / "pulumi": f"#!/bin/sh\n[ \"$*\" = 'stack output argocdDashboard' ] && printf '%s\\n' '{output}'\n",
        tmp_path / "scripts" / "kubeconfig": f'#!/bin/sh\necho "kubeconfig $*" >> {log}\n',
        bin_dir / "argocd": f'#!/bin/sh\necho "argocd $*" >> {log}\n',
    }
    for stub, body in stubs.items():
        stub.write_text(body)
        stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    subprocess.run(["bash", "-euc", 'eval "$(pulumi stack output argocdDashboard)"'], cwd=tmp_path, env=env, check=True)
    assert log.read_text().splitlines() == [
        "kubeconfig test",
        "argocd admin dashboard --core --kube-context harbor-test --namespace argocd",
    ]


def test_the_quick_start_pins_with_keyscan_and_prepares_its_example_nodes() -> None:
    text = README.read_text()
    example = yaml.safe_load((ROOT / "examples" / "three-vps.yaml").read_text())["config"]
    assert "cp examples/three-vps.yaml Pulumi.prod.yaml" in text
    nodes = example["space-harbor:nodes"]
    assert "ssh-keyscan -t ed25519 \"$host\" 2>/dev/null | cut -d' ' -f2-" in text
    # The names and addresses step 2 prepares are the example's.
    for node in nodes:
        assert f"{node['name']}={node['host']}" in text


def test_files_and_links_the_docs_name_exist() -> None:
    for doc in DOCS:
        text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
        for link in re.findall(r"\]\(([^)\s]+)\)", text):
            if link.startswith("http"):
                continue
            target, _, anchor = link.partition("#")
            resolved = (doc.parent / target).resolve() if target else doc
            assert resolved.exists(), f"{doc.name}: {link}"
            if anchor and resolved.is_file():
                headings = re.findall(r"^#+ (.+)$", resolved.read_text(), re.M)
                slugs = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}
                assert anchor in slugs, f"{doc.name}: {link}"
    for script in ("scripts/vendor", "scripts/kubeconfig", "scripts/up", "examples/single-node.yaml", "LICENSE"):
        assert (ROOT / script).exists(), script


# --- the first app against the projects' rules ------------------------------------------------------


def _allowed(rules: list[dict[str, str]], group: str, kind: str) -> bool:
    return any(fnmatch.fnmatch(group, r["group"]) and fnmatch.fnmatch(kind, r["kind"]) for r in rules)


def _destination_allowed(project: dict[str, Any], namespace: str) -> bool:
    allowed = False
    for destination in project["spec"]["destinations"]:
        pattern = destination["namespace"]
        if pattern.startswith("!") and fnmatch.fnmatch(namespace, pattern[1:]):
            return False
        allowed = allowed or fnmatch.fnmatch(namespace, pattern)
    return allowed


def _group(manifest: dict[str, Any]) -> str:
    api = manifest["apiVersion"]
    return api.split("/")[0] if "/" in api else ""


def test_the_root_project_accepts_what_the_first_app_commits_under_apps(first_app: Any) -> None:
    root_objects, _ = first_app
    root = render_root_project(load_config(base_config(agents=1)))
    spec = root["spec"]
    for manifest in root_objects:
        group, kind = _group(manifest), manifest["kind"]
        if kind == "Namespace":
            assert _allowed(spec["clusterResourceWhitelist"], group, kind)
        else:
            assert _allowed(spec["namespaceResourceWhitelist"], group, kind), kind
            assert manifest["metadata"]["namespace"] == "argocd"
    assert [m["kind"] for m in root_objects] == ["Namespace", "Application"]


def test_the_applications_project_accepts_what_the_first_app_deploys(first_app: Any) -> None:
    root_objects, app_objects = first_app
    application = root_objects[1]
    assert application["spec"]["project"] == "applications"
    namespace = application["spec"]["destination"]["namespace"]
    assert root_objects[0]["metadata"]["name"] == namespace
    config = load_config(base_config(agents=1))
    project = yaml.safe_load(render_projects(config)["applications"])
    assert _destination_allowed(project, namespace)
    spec = project["spec"]
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
    for manifest in app_objects:
        group, kind = _group(manifest), manifest["kind"]
        assert kind not in cluster_scoped
        assert manifest["metadata"]["namespace"] == namespace
        assert not _allowed(spec.get("namespaceResourceBlacklist") or [], group, kind), kind
        if "namespaceResourceWhitelist" in spec:
            assert _allowed(spec["namespaceResourceWhitelist"], group, kind), kind
        if group in ("", "apps"):
            kubernetes_validate.validate(manifest, KUBERNETES, strict=True)


def test_the_first_app_is_wired_to_its_repository_traefik_and_itself(first_app: Any) -> None:
    root_objects, app_objects = first_app
    source = root_objects[1]["spec"]["source"]
    example = yaml.safe_load((ROOT / "examples" / "three-vps.yaml").read_text())["config"]["space-harbor:gitops"]
    assert source["repoURL"] == example["repoUrl"]
    assert source["path"] == "apps-src/hello" and "apps-src/hello" in README.read_text()
    deployment, service, route = app_objects
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert deployment["spec"]["template"]["metadata"]["labels"] == deployment["spec"]["selector"]["matchLabels"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["containerPort"]
    assert container["args"] == ["--port", str(container["ports"][0]["containerPort"])]
    assert route["spec"]["tls"] == {"certResolver": CERT_RESOLVER}
    assert route["spec"]["entryPoints"] == ["websecure"]
    [backend] = route["spec"]["routes"][0]["services"]
    assert (backend["name"], backend["port"]) == (service["metadata"]["name"], service["spec"]["ports"][0]["port"])


def test_the_first_app_runs_under_pod_security_restricted(first_app: Any) -> None:
    _, (deployment, *_) = first_app
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False and context["capabilities"]["drop"] == ["ALL"]
        assert all(port["containerPort"] >= 1024 for port in container["ports"])


def test_no_example_seals_a_secret_into_apps() -> None:
    """The root project refuses anything under apps/ but Applications, AppProjects and Namespaces."""
    for doc in DOCS:
        for block in fenced(doc, "bash"):
            for target in re.findall(r"kubeseal[^\n]*>\s*(\S+)", block):
                assert "/apps/" not in target and not target.startswith("apps/"), f"{doc.name}: {target}"


def test_the_secrets_the_quick_start_sets_are_what_the_example_needs() -> None:
    raw = {
        key.split(":", 1)[1]: value
        for key, value in yaml.safe_load((ROOT / "examples" / "three-vps.yaml").read_text())["config"].items()
    }
    text = README.read_text()
    for path in ("sshPrivateKey", "gitops.sshPrivateKey", "gitops.argocdSshPrivateKey"):
        assert re.search(rf"pulumi config set --secret (--path )?{re.escape(path)} < ", text), path
    raw["sshPrivateKey"] = fake_private_key("ssh")
    raw["gitops"] |= {"sshPrivateKey": fake_private_key("w"), "argocdSshPrivateKey": fake_private_key("r")}
    load_config(raw)
