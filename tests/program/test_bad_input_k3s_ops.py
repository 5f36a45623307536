"""Malformed k3s.registries, k3s.registrationAddress, k3s.serviceLoadBalancer and nodes[i].reinstall
are refused by the program itself: one error naming the key path, no resource registered, no
secret echoed (issue 13)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import base_config
from tests.harness import run_program
from tests.helpers import assert_refused_before_any_resource

Mutation = Callable[[dict[str, Any]], None]
PASSWORD = "MARKER-REGISTRY-PASSWORD-90d1"
KEY_TEXT = "MARKER-REGISTRY-KEY-4be2"


def _k3s(**settings: Any) -> Mutation:
    def mutate(config: dict[str, Any]) -> None:
        config.setdefault("k3s", {}).update(copy.deepcopy(settings))

    return mutate


def _registry(name: str, **settings: Any) -> Mutation:
    return _k3s(registries={"configs": {name: settings}})


def _mirror(name: str, **settings: Any) -> Mutation:
    return _k3s(registries={"mirrors": {name: settings}})


def _node(index: int, **settings: Any) -> Mutation:
    def mutate(config: dict[str, Any]) -> None:
        config["nodes"][index].update(settings)

    return mutate


REGISTRY = 'k3s.registries.configs["registry.example.org"]'
MIRROR = 'k3s.registries.mirrors["docker.io"]'

CASES: list[tuple[str, Mutation, str]] = [
    # k3s.registries
    ("registries not an object", _k3s(registries=["docker.io"]), "k3s.registries: Input should be a valid dictionary or instance of Registries"),
    ("typo in registries", _k3s(registries={"mirror": {}}), "k3s.registries.mirror: is not a known key"),
    ("mirror named by URL", _mirror("https://docker.io", endpoint=["https://mirror.example.org"]), "k3s.registries.mirrors: 'https://docker.io' is not a registry host; write host or host:port, without a scheme or path"),
    ("mirror endpoint without scheme", _mirror("docker.io", endpoint=["mirror.example.org:5000"]), f"{MIRROR}.endpoint[0]: 'mirror.example.org:5000' is not an http:// or https:// URL"),
    ("mirror endpoint not a list", _mirror("docker.io", endpoint="https://mirror.example.org"), f"{MIRROR}.endpoint: Input should be a valid list"),
    ("mirror endpoint with a bad port", _mirror("docker.io", endpoint=["https://mirror.example.org:0"]), f"{MIRROR}.endpoint[0]: 'https://mirror.example.org:0': 'mirror.example.org:0' is not host or host:port"),
    ("mirror typo endpoints", _mirror("docker.io", endpoints=["https://mirror.example.org"]), f"{MIRROR}.endpoints: is not a known key"),
    ("rewrite that is no regular expression", _mirror("docker.io", rewrite={"^rancher/(.*": "mirrored/$1"}), f"{MIRROR}.rewrite: '^rancher/(.*' is not a regular expression"),
    ("config for a bad host", _k3s(registries={"configs": {"bad host!": {}}}), "k3s.registries.configs: 'bad host!' is not a registry host"),
    ("username without password", _registry("registry.example.org", auth={"username": "puller"}), f"{REGISTRY}.auth.password: is required with username"),
    ("password without username", _registry("registry.example.org", auth={"password": PASSWORD}), f"{REGISTRY}.auth.username: is required with password"),
    ("two ways to log in", _registry("registry.example.org", auth={"username": "puller", "password": PASSWORD, "auth": PASSWORD}), f"{REGISTRY}.auth: give exactly one of username and password, auth, or identityToken (found username/password and auth)"),
    ("no way to log in", _registry("registry.example.org", auth={}), f"{REGISTRY}.auth: give exactly one of username and password, auth, or identityToken (found none)"),
    ("password of the wrong type", _registry("registry.example.org", auth={"username": "puller", "password": 90125}), f"{REGISTRY}.auth.password: Input should be a valid string"),
    ("auth typo", _registry("registry.example.org", auth={"user": "puller", "password": PASSWORD}), f"{REGISTRY}.auth.user: is not a known key"),
    ("client certificate without its key", _registry("registry.example.org", tls={"certFile": "/etc/ssl/registry/client.crt"}), f"{REGISTRY}.tls.keyFile: is required with certFile"),
    ("client key without its certificate", _registry("registry.example.org", tls={"keyFile": "/etc/ssl/registry/client.key"}), f"{REGISTRY}.tls.certFile: is required with keyFile"),
    ("relative CA path", _registry("registry.example.org", tls={"caFile": "ca.pem"}), f"{REGISTRY}.tls.caFile: is neither PEM text (-----BEGIN ...) nor an absolute path of a file on the nodes"),
    ("key neither text nor path", _registry("registry.example.org", tls={"certFile": "/etc/c.crt", "keyFile": KEY_TEXT}), f"{REGISTRY}.tls.keyFile: is neither PEM text"),
    ("PEM text cut short", _registry("registry.example.org", tls={"caFile": "-----BEGIN CERTIFICATE-----\nMIIB"}), f"{REGISTRY}.tls.caFile: is cut short"),
    ("insecureSkipVerify not a bool", _registry("registry.example.org", tls={"insecureSkipVerify": "maybe"}), f"{REGISTRY}.tls.insecureSkipVerify: Input should be a valid boolean"),
    ("another registries file", _k3s(registries={"mirrors": {}}, extraArgs=["--private-registry=/etc/k3s-registries.yaml"]), "k3s.extraArgs: '--private-registry=/etc/k3s-registries.yaml' would make the servers read another file"),
    # k3s.registrationAddress
    ("registration address as URL", _k3s(registrationAddress="https://api.example.org:6443"), "k3s.registrationAddress: 'https://api.example.org:6443' is not host[:port]; write it without a scheme or path"),
    ("registration port out of range", _k3s(registrationAddress="api.example.org:65536"), "k3s.registrationAddress: 65536 is not a port (1-65535)"),
    ("registration port not a number", _k3s(registrationAddress="api.example.org:https"), "k3s.registrationAddress: 'api.example.org:https': 'https' is not a port number"),
    ("registration host malformed", _k3s(registrationAddress="api_example"), "k3s.registrationAddress: 'api_example' is neither an IP address nor a DNS name"),
    ("registration address in the mesh but nobody's", _k3s(registrationAddress="10.160.9.9"), "k3s.registrationAddress: 10.160.9.9 is inside mesh.cidr but is no server's or operator's meshAddress"),
    ("registration address an agent's", _k3s(registrationAddress="10.160.1.1"), "k3s.registrationAddress: 10.160.1.1 is inside mesh.cidr but is no server's or operator's meshAddress"),
    ("registration address outside the mesh", _k3s(registrationAddress="203.0.113.5:6443"), "k3s.registrationAddress: 203.0.113.5 is outside the mesh, and the servers' firewalls admit the API port only over the mesh"),
    ("registration address not a string", _k3s(registrationAddress=6443), "k3s.registrationAddress: Input should be a valid string"),
    # k3s.serviceLoadBalancer
    ("unknown service load balancer", _k3s(serviceLoadBalancer="metallb"), "k3s.serviceLoadBalancer: Input should be 'klipper' or 'none'"),
    ("service load balancer as bool", _k3s(serviceLoadBalancer=True), "k3s.serviceLoadBalancer: Input should be 'klipper' or 'none'"),
    # nodes[i].reinstall
    ("negative reinstall", _node(1, reinstall=-1), "nodes[1].reinstall: Input should be greater than or equal to 0"),
    ("reinstall not a number", _node(1, reinstall="yes"), "nodes[1].reinstall: Input should be a valid integer"),
    ("fractional reinstall", _node(1, reinstall=1.5), "nodes[1].reinstall: Input should be a valid integer, got a number with a fractional part"),
    ("cluster-wide reinstall key", _k3s(reinstallGeneration=1), "k3s.reinstallGeneration: is not a known key"),
]  # fmt: skip


@pytest.mark.parametrize(("mutate", "expected"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_refused_with_key_path_before_any_resource(mutate: Mutation, expected: str) -> None:
    config = copy.deepcopy(base_config(agents=1))
    mutate(config)
    assert_refused_before_any_resource(config, expected, secrets=(PASSWORD, KEY_TEXT, "90125"))


ACCEPTED: list[tuple[str, Mutation]] = [
    ("a mirror with rewrites and a login", _k3s(registries={
        "mirrors": {"docker.io": {"endpoint": ["https://mirror.example.org:5000"], "rewrite": {"^rancher/(.*)": "mirrored/rancher/$1"}}},
        "configs": {"mirror.example.org:5000": {"auth": {"username": "puller", "password": PASSWORD}}},
    })),
    ("every registry, embedded-mirror style", _k3s(registries={"mirrors": {"*": {}}})),
    ("TLS as text and as paths", _registry("registry.example.org", tls={
        "caFile": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        "certFile": "/etc/ssl/registry/client.crt",
        "keyFile": "/etc/ssl/registry/client.key",
        "insecureSkipVerify": False,
    })),
    ("a registration name with a port", _k3s(registrationAddress="api.example.org:7443")),
    ("a server's mesh address", _k3s(registrationAddress="10.160.0.1")),
    ("klipper", _k3s(serviceLoadBalancer="klipper")),
    ("a reinstall", _node(1, reinstall=3)),
]  # fmt: skip


@pytest.mark.parametrize("mutate", [case[1] for case in ACCEPTED], ids=[case[0] for case in ACCEPTED])
def test_well_formed_settings_are_accepted(mutate: Mutation) -> None:
    # The control for the cases above: the same base config, with these settings, registers resources.
    config = copy.deepcopy(base_config(agents=1))
    mutate(config)
    assert run_program(config, preview=True).resources


def test_outside_addresses_are_fine_without_mesh_or_firewall() -> None:
    """A VIP on the private network (mesh off) or any address (firewall off) is the user's to route."""
    config = copy.deepcopy(base_config(agents=1))
    config["firewall"] = {"enabled": False}
    config["k3s"] = {"registrationAddress": "203.0.113.5"}
    assert run_program(config, preview=True).resources
