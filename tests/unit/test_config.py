"""The config model beyond refusals: defaults, the example stack, secrets."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from components.config import ConfigError, load_config
from tests.conftest import GIT_KEY_MARKER, SSH_KEY_MARKER, base_config, etcd_config, fake_private_key

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_follow_the_design_table() -> None:
    config = load_config(base_config())
    assert (config.ssh.user, config.ssh.port) == ("root", 22)
    assert str(config.mesh.cidr) == "10.160.0.0/12"
    assert config.mesh.listen_port == 51871
    assert config.mesh.interface == "wg-harbor"
    assert config.mesh.persistent_keepalive == 25
    assert config.k3s.flannel_backend == "vxlan"
    assert (str(config.k3s.cluster_cidr), str(config.k3s.service_cidr)) == ("10.42.0.0/16", "10.43.0.0/16")
    assert config.k3s.datastore == "sqlite"
    assert config.k3s.api_access == "ssh-tunnel"
    assert config.k3s.tunnel_port is None  # unset: each stack's own port (components/access.py)
    assert config.firewall.enabled and config.firewall.public_tcp_ports == [80, 443]
    assert (config.gitops.branch, config.gitops.path, config.gitops.auto_sync) == ("main", "cluster", False)
    enabled = {name for name, comp in config.components if comp.enabled}
    assert enabled == {"traefik", "sealed_secrets", "infracheck"}


def test_example_stack_is_valid_once_its_secrets_are_set() -> None:
    document = yaml.safe_load((ROOT / "examples" / "tour.yaml").read_text())
    raw = {key.split(":", 1)[1]: value for key, value in document["config"].items()}
    raw["sshPrivateKey"] = fake_private_key("x")
    raw["gitops"]["sshPrivateKey"] = fake_private_key("y")
    config = load_config(raw)
    assert [n.role for n in config.nodes] == ["server", "agent", "agent"]
    assert config.ssh_port(config.nodes[2]) == 2222
    assert config.mesh.operators[0].name == "alice-laptop"


def test_example_stack_without_secrets_names_them() -> None:
    document = yaml.safe_load((ROOT / "examples" / "tour.yaml").read_text())
    raw = {key.split(":", 1)[1]: value for key, value in document["config"].items()}
    with pytest.raises(ConfigError) as refused:
        load_config(raw)
    assert "sshPrivateKey: is required" in str(refused.value)
    assert "gitops.sshPrivateKey: is required" in str(refused.value)


def test_node_overrides_win_over_defaults() -> None:
    raw = base_config(agents=1)
    raw["ssh"] = {"user": "admin", "port": 2200}
    raw["nodes"][1] |= {"sshUser": "debian", "sshPort": 22, "sshPrivateKey": fake_private_key("node")}
    config = load_config(raw)
    server, agent = config.nodes
    assert (config.ssh_user(server), config.ssh_port(server)) == ("admin", 2200)
    assert (config.ssh_user(agent), config.ssh_port(agent)) == ("debian", 22)
    assert "node" in config.ssh_key(agent).get_secret_value()
    assert SSH_KEY_MARKER in config.ssh_key(server).get_secret_value()


def test_secrets_are_hidden_in_reprs_and_listed_for_leak_checks() -> None:
    config = load_config(base_config())
    assert SSH_KEY_MARKER not in repr(config)
    values = config.secret_values()
    assert any(SSH_KEY_MARKER in v for v in values)
    assert any(GIT_KEY_MARKER in v for v in values)


def test_json_text_values_are_accepted_as_pulumi_hands_them_over() -> None:
    import json

    raw = {key: json.dumps(value) if not isinstance(value, str) else value for key, value in etcd_config().items()}
    config = load_config(raw)
    assert [n.name for n in config.servers] == ["server-1", "server-2", "server-3"]
    assert config.first_server.name == "server-1"


def test_several_problems_are_reported_together() -> None:
    raw = base_config(agents=1)
    raw["mesh"] = {"listenPort": 51821, "interface": "x" * 16}
    with pytest.raises(ConfigError) as refused:
        load_config(raw)
    lines = str(refused.value).splitlines()[1:]
    assert len(lines) == 2
    assert lines[0].strip().startswith("mesh.listenPort:")
    assert lines[1].strip().startswith("mesh.interface:")


# --- component checks added with the platform renderers ------------------------------------------


def _refused(raw: dict) -> list[str]:
    with pytest.raises(ConfigError) as refused:
        load_config(raw)
    return [line.strip() for line in str(refused.value).splitlines()[1:]]


def _backup(**backup: object) -> dict:
    raw = base_config()
    raw["components"]["backup"] = {
        "enabled": True,
        "repositoryUrl": "https://backups.example.org",
        "collectionId": "harbor",
        "token": "MARKER-BACKUP-TOKEN",
    } | backup
    return raw


def test_a_complete_backup_target_is_accepted() -> None:
    backup = load_config(_backup(schedule=" 15 4 * * 0 ")).components.backup
    assert backup.schedule == "15 4 * * 0"
    assert backup.token is not None and "MARKER" not in repr(backup)


@pytest.mark.parametrize("key", ["repositoryUrl", "collectionId", "token"])
def test_backup_without_its_target_names_the_key(key: str) -> None:
    raw = _backup()
    del raw["components"]["backup"][key]
    assert _refused(raw) == [f"components.backup.{key}: is required while backup is enabled"]


def test_a_disabled_backup_needs_no_target() -> None:
    raw = base_config()
    raw["components"]["backup"] = {"enabled": False}
    assert load_config(raw).components.backup.repository_url is None


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"repositoryUrl": "backups.example.org"}, "components.backup.repositoryUrl: 'backups.example.org' is not an"),
        ({"schedule": "daily"}, "components.backup.schedule: 'daily' is not a cron schedule"),
        ({"schedule": "0 3 * *"}, "components.backup.schedule: '0 3 * *' is not a cron schedule"),
    ],
)
def test_malformed_backup_settings_are_refused(settings: dict, expected: str) -> None:
    (line,) = _refused(_backup(**settings))
    assert line.startswith(expected)


@pytest.mark.parametrize("address", ["metrics.example.org", "metrics.example.org:0", "http://metrics:8094", "a b:1"])
def test_telegraf_central_address_must_be_host_and_port(address: str) -> None:
    raw = base_config()
    raw["components"]["telegraf"] = {"centralAddress": address}
    (line,) = _refused(raw)
    assert line.startswith("components.telegraf.centralAddress:")
    assert "host:port" in line


@pytest.mark.parametrize("address", ["metrics.example.org:8094", "tcp://10.0.0.1:8094", "[2001:db8::1]:8094"])
def test_telegraf_central_address_forms_that_are_accepted(address: str) -> None:
    raw = base_config()
    raw["components"]["telegraf"] = {"centralAddress": address}
    assert load_config(raw).components.telegraf.central_address == address


def test_traefik_node_must_be_one_of_the_nodes() -> None:
    raw = base_config(agents=1)
    raw["components"]["traefik"]["node"] = "agent-9"
    (line,) = _refused(raw)
    assert line == "components.traefik.node: 'agent-9' is not one of the nodes ['server-1', 'agent-1']"
    raw["components"]["traefik"]["node"] = "agent-1"
    assert load_config(raw).components.traefik.node == "agent-1"


def test_infracheck_needs_traefik() -> None:
    raw = base_config()
    raw["components"]["traefik"] = {"enabled": False}
    (line,) = _refused(raw)
    assert line.startswith("components.infracheck.enabled: the health endpoint is served through Traefik")


def test_smtp_needs_sender_domains_or_a_domain() -> None:
    raw = base_config()
    del raw["domain"]
    raw["components"] = {
        "traefik": {"enabled": False},
        "infracheck": {"enabled": False},
        "smtp": {"enabled": True, "relayHost": "smtp.example.org"},
    }
    assert _refused(raw) == [
        "components.smtp.allowedSenderDomains: is required while smtp is enabled and domain is unset"
    ]
    raw["components"]["smtp"]["allowedSenderDomains"] = ["example.org"]
    assert load_config(raw).components.smtp.allowed_sender_domains == ["example.org"]


def test_components_with_secrets_need_sealed_secrets() -> None:
    raw = _backup()
    raw["components"]["sealedSecrets"] = {"enabled": False}
    (line,) = _refused(raw)
    assert line.startswith("components.sealedSecrets.enabled: must be true for backup, whose secrets")
    # an SMTP relay without a password has no secret to seal
    raw = base_config()
    raw["components"]["sealedSecrets"] = {"enabled": False}
    raw["components"]["smtp"] = {"enabled": True, "relayHost": "smtp.example.org"}
    assert not load_config(raw).components.sealed_secrets.enabled


def test_every_component_that_needs_sealing_is_named_in_one_refusal() -> None:
    raw = _backup()
    raw["components"]["sealedSecrets"] = {"enabled": False}
    raw["components"]["smtp"] = {
        "enabled": True,
        "relayHost": "smtp.example.org",
        "relayUsername": "relay",
        "relayPassword": "MARKER-SMTP",
    }
    raw["components"]["telegraf"] = {
        "enabled": True,
        "centralAddress": "metrics.example.org:8094",
        "caCert": "CA",
        "tlsCert": "CERT",
        "tlsKey": "MARKER-TELEGRAF",
    }
    assert _refused(raw) == [
        "components.sealedSecrets.enabled: must be true for smtp, telegraf, backup, "
        "whose secrets reach the cluster as SealedSecrets"
    ]


def test_a_component_section_of_the_wrong_shape_names_its_section() -> None:
    raw = base_config()
    raw["components"]["traefik"] = 3
    assert _refused(raw) == ["components.traefik: Input should be a valid dictionary or instance of Traefik (got 3)"]
    raw = base_config()
    raw["components"]["longhorm"] = {"enabled": True}
    assert _refused(raw) == ["components.longhorm: is not a known key"]


@pytest.mark.parametrize("version", ["v1.29.9+k3s1", "v1.28.15+k3s1", "v0.31.0+k3s1"])
def test_a_k3s_release_without_validating_admission_policy_is_refused(version: str) -> None:
    raw = base_config()
    raw["k3s"] = {"version": version}
    with pytest.raises(ConfigError, match=rf"k3s\.version: '{version.replace('+', '[+]')}' is older than v1\.30"):
        load_config(raw)


@pytest.mark.parametrize("version", ["v1.30.0+k3s1", "v1.31.4+k3s1", "v2.0.0+k3s1"])
def test_k3s_releases_from_1_30_are_accepted(version: str) -> None:
    raw = base_config()
    raw["k3s"] = {"version": version}
    assert load_config(raw).k3s.version == version
