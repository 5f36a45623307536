"""k3s config.yaml and kubeconfig rendering."""

from __future__ import annotations

import yaml

from components.config import load_config
from components.render.k3s import kubeconfig_for, render_config_yaml, server_url
from tests.conftest import base_config, etcd_config, mesh_off_config
from tests.harness import FAKE_API_CREDENTIAL


def _settings(raw: dict, node_name: str) -> dict:
    config = load_config(raw)
    node = next(n for n in config.nodes if n.name == node_name)
    return yaml.safe_load(render_config_yaml(config, node, server_token="SERVER-TOKEN", agent_token="AGENT-TOKEN"))


def test_first_server_binds_everything_to_the_mesh() -> None:
    settings = _settings(base_config(agents=1), "server-1")
    assert settings["node-ip"] == "10.160.0.1"
    assert settings["advertise-address"] == "10.160.0.1"
    assert settings["flannel-iface"] == "wg-harbor"
    assert "10.160.0.1" in settings["tls-san"]
    assert settings["disable"] == ["traefik", "servicelb"]
    # A server holds the server token and the token agents may join with.
    assert settings["token"] == "SERVER-TOKEN"
    assert settings["agent-token"] == "AGENT-TOKEN"
    assert settings["secrets-encryption"] is True
    assert settings["cluster-cidr"] == "10.42.0.0/16"
    assert settings["flannel-backend"] == "vxlan"
    # The first server bootstraps; it joins nobody, and sqlite needs no cluster-init.
    assert "server" not in settings
    assert "cluster-init" not in settings


def test_agent_joins_the_server_over_the_mesh_and_carries_no_server_settings() -> None:
    raw = base_config(agents=1)
    raw["nodes"][1]["labels"] = {"tier": "web"}
    raw["nodes"][1]["taints"] = ["dedicated=web:NoSchedule"]
    settings = _settings(raw, "agent-1")
    assert settings["server"] == "https://10.160.0.1:6443"
    assert settings["node-ip"] == "10.160.1.1"
    assert settings["node-label"] == ["tier=web"]
    assert settings["node-taint"] == ["dedicated=web:NoSchedule"]
    # An agent holds the agent token only: one compromised agent cannot join as a server.
    assert settings["token"] == "AGENT-TOKEN"
    assert "SERVER-TOKEN" not in yaml.safe_dump(settings)
    server_only = ("cluster-cidr", "disable", "advertise-address", "tls-san", "flannel-backend", "agent-token")
    for key in (*server_only, "secrets-encryption"):
        assert key not in settings


def test_etcd_first_server_inits_and_others_join_it() -> None:
    first = _settings(etcd_config(), "server-1")
    second = _settings(etcd_config(), "server-2")
    assert first["cluster-init"] is True
    assert "server" not in first
    assert second["server"] == "https://10.160.0.1:6443"
    assert "cluster-init" not in second
    # A joining server proves it is one with the server token.
    assert second["token"] == "SERVER-TOKEN"
    # Cluster-wide settings must match on every server, or k3s refuses the join.
    for key in ("cluster-cidr", "service-cidr", "flannel-backend", "disable", "agent-token", "secrets-encryption"):
        assert first[key] == second[key]


def test_mesh_off_uses_private_addresses_and_no_mesh_interface() -> None:
    settings = _settings(mesh_off_config(), "agent-1")
    assert settings["server"] == "https://172.16.0.10:6443"
    assert settings["node-ip"] == "172.16.0.11"
    assert "flannel-iface" not in settings
    assert _settings(mesh_off_config(), "server-1")["flannel-backend"] == "wireguard-native"


def test_extra_args_become_config_keys_on_servers_only() -> None:
    raw = base_config(agents=1)
    raw["k3s"] = {"extraArgs": ["--kube-apiserver-arg=audit-log-maxage=30", "--etcd-expose-metrics"]}
    assert _settings(raw, "server-1")["kube-apiserver-arg"] == "audit-log-maxage=30"
    assert _settings(raw, "server-1")["etcd-expose-metrics"] is True
    assert "etcd-expose-metrics" not in _settings(raw, "agent-1")


def test_secrets_encryption_can_be_kept_off_for_a_cluster_created_without_it() -> None:
    raw = base_config(agents=1)
    raw["k3s"] = {"secretsEncryption": False}
    assert "secrets-encryption" not in _settings(raw, "server-1")


def test_the_first_server_is_chosen_by_name_not_by_position() -> None:
    raw = etcd_config()
    raw["nodes"] = [raw["nodes"][2], raw["nodes"][0], raw["nodes"][3], raw["nodes"][1]]
    raw["k3s"]["firstServer"] = "server-2"
    second = _settings(raw, "server-2")
    assert second["cluster-init"] is True
    assert "server" not in second
    for name in ("server-1", "server-3", "agent-1"):
        assert _settings(raw, name)["server"] == "https://10.160.0.2:6443"


def test_server_url_follows_the_first_server() -> None:
    assert server_url(load_config(base_config())) == "https://10.160.0.1:6443"


def test_kubeconfig_is_repointed_and_renamed() -> None:
    raw = FAKE_API_CREDENTIAL.format(ca="Q0E=", token="deployer-token")
    out = yaml.safe_load(kubeconfig_for(raw, "https://127.0.0.1:16443", "harbor-prod"))
    assert out["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:16443"
    assert out["clusters"][0]["cluster"]["certificate-authority-data"] == "Q0E="
    assert out["current-context"] == "harbor-prod"
    assert out["contexts"][0]["context"] == {"cluster": "harbor-prod", "user": "harbor-prod"}
    assert out["users"][0]["user"] == {"token": "deployer-token"}
