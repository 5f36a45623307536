"""Longhorn in the GitOps tree (components/platform/longhorn.py): values from config, policies, pins."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from components.config import ConfigError, HarborConfig, load_config
from components.render.gitops import render_tree
from components.render.platform import chart_refs, node_packages
from tests.conftest import base_config
from tests.unit.test_platform_render import KUBERNETES, applications, component_objects, policies, values

CHART_KEYS = Path(__file__).resolve().parents[1] / "fixtures" / "charts" / "longhorn-values-keys.txt"


def longhorn(agents: int = 2, **settings: Any) -> HarborConfig:
    raw = base_config(agents=agents)
    raw["components"]["longhorn"] = {"enabled": True, **settings}
    return load_config(raw)


def refusal(agents: int = 2, **settings: Any) -> str:
    with pytest.raises(ConfigError) as refused:
        longhorn(agents, **settings)
    (line,) = str(refused.value).splitlines()[1:]
    return line.strip()


# --- the pinned chart ------------------------------------------------------------------------------


def chart_key_paths() -> tuple[str, set[str]]:
    """(chart version, key paths) of the pinned chart's values.yaml, as recorded in the fixture."""
    lines = CHART_KEYS.read_text().splitlines()
    version = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("# chart-version:"))
    return version, {line for line in lines if line and not line.startswith("#")}


def unknown_keys(given: dict[str, Any], known: set[str], prefix: str = "") -> list[str]:
    """Key paths of `given` that the chart does not have: a path is known when it, or a prefix of it
    where the chart's default is not a mapping (a setting that takes a map), is among `known`."""
    found = []
    for key, value in given.items():
        path = f"{prefix}{key}"
        if path in known:
            continue
        if isinstance(value, dict) and any(k.startswith(f"{path}.") for k in known):
            found += unknown_keys(value, known, f"{path}.")
        else:
            found.append(path)
    return found


def test_the_fixture_is_of_the_pinned_chart() -> None:
    version, _ = chart_key_paths()
    ref = chart_refs()["longhorn"]
    assert (ref.repo_url, ref.chart, ref.version) == ("https://charts.longhorn.io", "longhorn", version)


@pytest.mark.parametrize("agents", [0, 2, 4])
def test_every_value_set_is_a_key_of_the_pinned_chart(agents: int) -> None:
    _, known = chart_key_paths()
    assert unknown_keys(values(longhorn(agents, defaultStorageClass=True), "longhorn"), known) == []


def test_the_key_check_finds_a_misspelt_key() -> None:
    _, known = chart_key_paths()
    given = {"persistence": {"defaultClas": True}, "longhornUI": {"replicas": 1}, "defaultSetings": {}}
    assert unknown_keys(given, known) == ["persistence.defaultClas", "defaultSetings"]


def test_longhorn_is_off_by_default_and_installs_into_longhorn_system() -> None:
    assert "longhorn" not in applications(load_config(base_config(agents=2)))
    app = applications(longhorn())["longhorn"]
    assert app["spec"]["destination"]["namespace"] == "longhorn-system"  # the only namespace the chart supports
    chart = app["spec"]["sources"][0]
    assert (chart["chart"], chart["helm"]["releaseName"]) == ("longhorn", "longhorn")


# --- values from config ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("agents", "settings", "expected"), [(0, {}, 1), (1, {}, 2), (2, {}, 3), (4, {}, 3), (4, {"replicaCount": 2}, 2)]
)
def test_replica_count_from_config_or_the_number_of_nodes(agents: int, settings: dict, expected: int) -> None:
    chart = values(longhorn(agents, **settings), "longhorn")
    assert chart["persistence"]["defaultClassReplicaCount"] == expected
    assert chart["defaultSettings"]["defaultReplicaCount"] == {"v1": str(expected), "v2": str(expected)}
    # the CSI sidecars: one per node, at most three
    assert chart["csi"]["provisionerReplicaCount"] == min(3, agents + 1)


def test_default_storage_class_and_data_path_come_from_config() -> None:
    plain = values(longhorn(), "longhorn")
    assert plain["persistence"]["defaultClass"] is False  # k3s's local-path stays the default
    assert plain["defaultSettings"]["defaultDataPath"] == "/var/lib/longhorn/"
    chosen = values(longhorn(defaultStorageClass=True, dataPath="/srv/longhorn"), "longhorn")
    assert chosen["persistence"]["defaultClass"] is True
    assert chosen["defaultSettings"]["defaultDataPath"] == "/srv/longhorn"
    readme = render_tree(longhorn(dataPath="/srv/longhorn"))["cluster/README.md"]
    assert "**longhorn**" in readme and "3 replicas" in readme and "`/srv/longhorn`" in readme


def test_longhorn_calls_nobody_home_and_skips_the_helm_hook_argo_cd_cannot_run() -> None:
    chart = values(longhorn(), "longhorn")
    assert chart["defaultSettings"]["upgradeChecker"] is False
    assert chart["defaultSettings"]["allowCollectingLonghornUsageMetrics"] is False
    assert chart["preUpgradeChecker"]["jobEnabled"] is False


@pytest.mark.parametrize(
    ("agents", "settings", "expected"),
    [
        (1, {"replicaCount": 3}, "components.longhorn.replicaCount: 3 replicas need 3 nodes to land on, "
                                 "and nodes lists 2; lower it, or add nodes"),
        (2, {"replicaCount": 0}, "components.longhorn.replicaCount: Input should be greater than or equal to 1"),
        (2, {"dataPath": "var/lib/longhorn"}, "components.longhorn.dataPath: 'var/lib/longhorn' is not an "
                                              "absolute folder on the nodes, like /var/lib/longhorn/"),
        (2, {"dataPath": "/var/../etc"}, "components.longhorn.dataPath: '/var/../etc' is not an absolute folder"),
        (2, {"dataPath": "/"}, "components.longhorn.dataPath: '/' is not an absolute folder"),
        (2, {"replicas": 2}, "components.longhorn.replicas: is not a known key"),
    ],
)  # fmt: skip
def test_bad_longhorn_settings_are_refused_with_their_key(agents: int, settings: dict, expected: str) -> None:
    assert refusal(agents, **settings).startswith(expected)


def test_a_disabled_longhorn_is_not_checked() -> None:
    raw = base_config()
    raw["components"]["longhorn"] = {"enabled": False, "replicaCount": 3}
    assert load_config(raw).components.longhorn.replica_count == 3


# --- network -----------------------------------------------------------------------------------------


def test_policies_validate_and_open_only_what_longhorn_needs() -> None:
    config = longhorn()
    objects = component_objects(config, "longhorn")
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)
    found = {policy["metadata"]["name"]: policy["spec"] for policy in policies(config, "longhorn")}
    assert found["default-deny"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    within = {"podSelector": {}}
    assert found["allow-longhorn"]["ingress"] == [{"from": [within]}]
    assert found["allow-longhorn"]["egress"] == [{"to": [within]}]
    assert found["allow-webhooks"]["ingress"] == [{"ports": [{"protocol": "TCP", "port": p} for p in (9501, 9502)]}]
    assert found["allow-nfs-from-nodes"]["ingress"] == [{"ports": [{"protocol": "TCP", "port": 2049}]}]
    # Egress leaves the namespace only for DNS and the API server.
    assert set(found) == {
        "default-deny",
        "allow-dns",
        "allow-api-server",
        "allow-longhorn",
        "allow-webhooks",
        "allow-nfs-from-nodes",
    }
    api_ports = {port["port"] for rule in found["allow-api-server"]["egress"] for port in rule["ports"]}
    assert api_ports == {443, 6443}


def test_the_namespace_is_ours_and_nothing_else_is_committed_for_it() -> None:
    objects = component_objects(longhorn(), "longhorn")
    assert {obj["kind"] for obj in objects} == {"Namespace", "NetworkPolicy"}
    (namespace,) = [obj for obj in objects if obj["kind"] == "Namespace"]
    assert namespace["metadata"]["name"] == "longhorn-system"


# --- the nodes -----------------------------------------------------------------------------------------


def test_nodes_need_iscsi_and_nfs_only_while_longhorn_is_enabled() -> None:
    assert node_packages(longhorn()) == ["nfs-common", "open-iscsi"]
    assert node_packages(load_config(base_config(agents=2))) == []


def test_the_tree_stays_valid_yaml_with_longhorn() -> None:
    tree = render_tree(longhorn())
    for path, text in tree.items():
        if path.endswith(".yaml"):
            assert len([doc for doc in yaml.safe_load_all(text) if doc is not None]) == 1, path


def test_the_commented_example_in_pulumi_prod_yaml_is_valid_once_uncommented() -> None:
    lines = (Path(__file__).resolve().parents[2] / "examples" / "tour.yaml").read_text().splitlines()
    start = lines.index("    # longhorn:")
    block = []
    for line in lines[start:]:
        if not line.startswith("    #   ") and line != "    # longhorn:":
            break
        block.append(line.replace("    # ", "", 1))
    example = yaml.safe_load("\n".join(block))["longhorn"]
    assert example["enabled"] is True
    config = longhorn(**{key: value for key, value in example.items() if key != "enabled"})
    assert values(config, "longhorn")["persistence"]["defaultClassReplicaCount"] == example["replicaCount"]
