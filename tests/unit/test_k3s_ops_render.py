"""The pure side of issue 13's k3s settings: registries.yaml, the join URL, the disabled add-ons."""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.config import load_config
from components.render.k3s import (
    REGISTRIES_HEADER,
    REGISTRY_FILES_DIR,
    optional_install_parameters,
    render_config_yaml,
    render_registries,
    server_url,
)
from tests.conftest import base_config, etcd_config

CA = "-----BEGIN CERTIFICATE-----\nMIIB-REGISTRY-CA\n-----END CERTIFICATE-----"
KEY = "-----BEGIN EC PRIVATE KEY-----\nMARKER-KEY\n-----END EC PRIVATE KEY-----\n"


def _config(raw: dict[str, Any], **k3s: Any) -> Any:
    raw = copy.deepcopy(raw)
    raw["k3s"] = {**raw.get("k3s", {}), **k3s}
    return load_config(raw)


def _settings(config: Any, node_name: str) -> dict[str, Any]:
    node = next(n for n in config.nodes if n.name == node_name)
    return yaml.safe_load(render_config_yaml(config, node, server_token="S", agent_token="A"))


REGISTRIES = {
    "mirrors": {
        "docker.io": {
            "endpoint": ["https://mirror.example.org:5000", "http://10.0.0.5:5000/v2/proxy"],
            "rewrite": {"^rancher/(.*)": "mirrored/rancher/$1"},
        },
        "*": {},
    },
    "configs": {
        "mirror.example.org:5000": {
            "auth": {"username": "puller", "password": "MARKER-PASSWORD"},
            "tls": {"caFile": CA, "certFile": "/etc/ssl/registry/client.crt", "keyFile": KEY},
        },
        "ghcr.example.org": {"auth": {"identityToken": "MARKER-IDENTITY"}, "tls": {"insecureSkipVerify": True}},
        "quay.example.org": {"auth": {"auth": "cHVsbGVyOnB3"}},
    },
}


def test_registries_yaml_has_k3s_field_names_and_tls_text_becomes_files_on_the_node() -> None:
    config = _config(base_config(agents=1), registries=REGISTRIES)
    assert config.k3s.registries is not None
    rendered = render_registries(config.k3s.registries)
    first_line, _, body = rendered.registries_yaml.partition("\n")
    assert first_line == REGISTRIES_HEADER
    document = yaml.safe_load(body)
    assert document["mirrors"] == {
        "*": {},
        "docker.io": {
            "endpoint": ["https://mirror.example.org:5000", "http://10.0.0.5:5000/v2/proxy"],
            "rewrite": {"^rancher/(.*)": "mirrored/rancher/$1"},
        },
    }
    mirror = document["configs"]["mirror.example.org:5000"]
    assert mirror["auth"] == {"username": "puller", "password": "MARKER-PASSWORD"}
    # Text is written to the node under a folder per registry; a path is passed through.
    assert mirror["tls"] == {
        "ca_file": f"{REGISTRY_FILES_DIR}/mirror.example.org_5000/ca.crt",
        "cert_file": "/etc/ssl/registry/client.crt",
        "key_file": f"{REGISTRY_FILES_DIR}/mirror.example.org_5000/client.key",
    }
    # k3s reads registries.yaml with YAML field names: identity_token, insecure_skip_verify.
    assert document["configs"]["ghcr.example.org"] == {
        "auth": {"identity_token": "MARKER-IDENTITY"},
        "tls": {"insecure_skip_verify": True},
    }
    assert document["configs"]["quay.example.org"] == {"auth": {"auth": "cHVsbGVyOnB3"}}
    assert rendered.files == {"mirror.example.org_5000/ca.crt": CA + "\n", "mirror.example.org_5000/client.key": KEY}
    lines = rendered.files_parameter().split("\n")
    decoded = {line.split()[0]: base64.b64decode(line.split()[1]).decode() for line in lines}
    assert decoded == rendered.files
    # The key's text is only in the files, never in the YAML.
    assert "MARKER-KEY" not in rendered.registries_yaml


def test_the_same_registries_render_the_same_bytes_whatever_their_order() -> None:
    reordered = copy.deepcopy(REGISTRIES)
    reordered["configs"] = dict(reversed(list(reordered["configs"].items())))
    reordered["mirrors"] = dict(reversed(list(reordered["mirrors"].items())))
    one = _config(base_config(), registries=REGISTRIES).k3s.registries
    two = _config(base_config(), registries=reordered).k3s.registries
    assert one is not None and two is not None
    assert render_registries(one) == render_registries(two)


def test_empty_registries_still_make_a_file_of_ours() -> None:
    registries = _config(base_config(), registries={}).k3s.registries
    assert registries is not None
    assert render_registries(registries).registries_yaml == f"{REGISTRIES_HEADER}\n{{}}\n"


def test_parameters_exist_only_while_their_setting_is_used() -> None:
    plain = load_config(base_config(agents=1))
    for node in plain.nodes:
        assert optional_install_parameters(plain, node) == {}
    raw = base_config(agents=1)
    raw["nodes"][1]["reinstall"] = 2
    config = _config(raw, registries={"mirrors": {"docker.io": {"endpoint": ["https://mirror.example.org"]}}})
    server, agent = config.nodes
    # No TLS text: no files parameter.
    assert set(optional_install_parameters(config, server)) == {"HARBOR_K3S_REGISTRIES"}
    assert optional_install_parameters(config, agent)["HARBOR_K3S_REINSTALL"] == "2"
    # Every node gets the same registries.yaml, servers and agents alike.
    assert (
        optional_install_parameters(config, server)["HARBOR_K3S_REGISTRIES"]
        == optional_install_parameters(config, agent)["HARBOR_K3S_REGISTRIES"]
    )


@pytest.mark.parametrize(
    ("address", "url", "san"),
    [
        ("api.example.org", "https://api.example.org:6443", "api.example.org"),
        ("api.example.org:7443", "https://api.example.org:7443", "api.example.org"),
        ("10.160.0.2", "https://10.160.0.2:6443", "10.160.0.2"),
    ],
)
def test_joining_nodes_register_through_the_registration_address(address: str, url: str, san: str) -> None:
    config = _config(etcd_config(), registrationAddress=address)
    assert server_url(config) == url
    first, second, agent = (_settings(config, name) for name in ("server-1", "server-2", "agent-1"))
    assert "server" not in first and first["cluster-init"] is True
    assert second["server"] == url and agent["server"] == url
    # Every server's certificate names it, or the join's TLS check fails on the server it reaches.
    for server in (first, second):
        assert san in server["tls-san"]
    assert "tls-san" not in agent


def test_an_ipv6_registration_address_is_bracketed_in_the_url() -> None:
    raw = base_config(agents=1)
    raw["firewall"] = {"enabled": False}
    config = _config(raw, registrationAddress="[fd00::10]:6443")
    assert server_url(config) == "https://[fd00::10]:6443"
    assert "fd00::10" in _settings(config, "server-1")["tls-san"]


def test_without_a_registration_address_nodes_join_the_first_server_as_before() -> None:
    config = load_config(etcd_config())
    assert server_url(config) == "https://10.160.0.1:6443"
    assert _settings(config, "server-1")["tls-san"] == ["10.160.0.1", "127.0.0.1"]


def test_klipper_is_disabled_unless_asked_for() -> None:
    assert _settings(load_config(base_config()), "server-1")["disable"] == ["traefik", "servicelb"]
    assert _settings(_config(base_config(), serviceLoadBalancer="none"), "server-1")["disable"] == [
        "traefik",
        "servicelb",
    ]
    klipper = _config(base_config(agents=1), serviceLoadBalancer="klipper")
    assert _settings(klipper, "server-1")["disable"] == ["traefik"]
    assert "disable" not in _settings(klipper, "agent-1")


def test_the_commented_examples_in_pulumi_prod_yaml_are_valid_once_uncommented() -> None:
    lines = (Path(__file__).resolve().parents[2] / "examples" / "tour.yaml").read_text().splitlines()
    start = lines.index("    # registries:")
    block = [lines[start].replace("    # ", "", 1)]
    for line in lines[start + 1 :]:
        if not line.startswith("    #   "):
            break
        block.append(line.replace("    # ", "", 1))
    example = yaml.safe_load("\n".join(block))["registries"]
    # The password comes with `pulumi config set --secret --path`, as the file's header says.
    example["configs"]["registry.example.org"]["auth"]["password"] = "from --secret"
    (address_line,) = [line for line in lines if line.startswith("    # registrationAddress:")]
    address = address_line.split(":", 1)[1].strip()
    config = _config(base_config(agents=1), registries=example, registrationAddress=address)
    assert config.k3s.registries is not None
    document = yaml.safe_load(render_registries(config.k3s.registries).registries_yaml)
    assert document["mirrors"]["docker.io"]["rewrite"] == {"^library/(.*)": "dockerhub/library/$1"}
    assert server_url(config) == "https://api.example.org:6443"
