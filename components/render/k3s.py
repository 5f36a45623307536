"""k3s configuration files and kubeconfigs: pure functions, no I/O.

Every setting lives in /etc/rancher/k3s/config.yaml rather than installer flags, because a re-run
of the installer with other flags silently drops the old ones.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from components.config import HarborConfig, Node, Registries
from components.schema import split_host_port

API_PORT = 6443
REGISTRIES_PATH = "/etc/rancher/k3s/registries.yaml"
# TLS files given as PEM text in k3s.registries: k3s.sh writes them here, one folder per registry.
REGISTRY_FILES_DIR = "/etc/rancher/k3s/space-harbor-registries"
# k3s.sh removes a registries.yaml only when its first line is this one: a file someone wrote by
# hand before k3s.registries existed stays.
REGISTRIES_HEADER = "# Managed by Space Harbor (Pulumi) from k3s.registries. Local edits are overwritten."
_FILE_NAMES = {"ca_file": "ca.crt", "cert_file": "client.crt", "key_file": "client.key"}


def _url(host: str, port: int) -> str:
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def server_url(config: HarborConfig) -> str:
    """Where joining nodes reach the API to join: `k3s.registrationAddress`, else the first server.

    k3s takes one `server:`; once joined, an agent reaches every server through its client load
    balancer (whose list it keeps across restarts) and a server through etcd, so this address
    matters when a node joins (or restarts before it ever joined), not after.
    """
    if config.k3s.registration_address is not None:
        host, port = split_host_port(config.k3s.registration_address, API_PORT)
        assert port is not None
        return _url(host, port)
    return _url(config.node_address(config.first_server), API_PORT)


def registration_host(config: HarborConfig) -> str | None:
    """The host of `k3s.registrationAddress`, which every server's certificate must name."""
    if config.k3s.registration_address is None:
        return None
    return split_host_port(config.k3s.registration_address)[0]


def disabled_addons(config: HarborConfig) -> list[str]:
    """k3s's packaged add-ons that the servers run without. Traefik always comes from git.

    servicelb (klipper) runs a pod per LoadBalancer Service on every node, holding its ports as host
    ports; it is off unless `k3s.serviceLoadBalancer` is klipper. Either way the firewall admits
    from outside only `firewall.publicTcpPorts` (components/render/nftables.py).
    """
    return ["traefik"] if config.k3s.service_load_balancer == "klipper" else ["traefik", "servicelb"]


def render_config_yaml(config: HarborConfig, node: Node, *, server_token: str, agent_token: str) -> str:
    """The config.yaml of one node. It holds a join token, so it is a secret and mode 0600.

    Servers hold the server token (k3s treats it as cluster admin) and the agent token they accept;
    agents hold only the agent token, so one compromised agent cannot join as a server.
    """
    address = config.node_address(node)
    token = server_token if node.role == "server" else agent_token
    settings: dict[str, Any] = {"token": token, "node-name": node.name, "node-ip": address}
    if config.mesh.enabled:
        settings["flannel-iface"] = config.mesh.interface
    if node.labels:
        settings["node-label"] = [f"{key}={value}" for key, value in sorted(node.labels.items())]
    if node.taints:
        settings["node-taint"] = list(node.taints)
    is_first_server = node.name == config.first_server.name
    if not is_first_server:
        settings["server"] = server_url(config)
    if node.role == "server":
        settings |= {
            "advertise-address": address,
            "tls-san": sorted({address, "127.0.0.1", *filter(None, [registration_host(config)])}),
            "cluster-cidr": str(config.k3s.cluster_cidr),
            "service-cidr": str(config.k3s.service_cidr),
            "flannel-backend": config.k3s.flannel_backend,
            "disable": disabled_addons(config),
            "write-kubeconfig-mode": "0600",
            "agent-token": agent_token,
        }
        if config.k3s.secrets_encryption:
            settings["secrets-encryption"] = True
        if config.k3s.datastore == "etcd" and is_first_server:
            settings["cluster-init"] = True
        snapshots = config.k3s.etcd_snapshots
        if snapshots is not None:
            settings["etcd-snapshot-schedule-cron"] = snapshots.schedule
            settings["etcd-snapshot-retention"] = snapshots.retention
            if snapshots.s3_bucket:
                # config validation requires both keys with a bucket; config.yaml is 0600 and secret
                assert snapshots.s3_access_key is not None and snapshots.s3_secret_key is not None
                settings |= {
                    "etcd-s3": True,
                    "etcd-s3-bucket": snapshots.s3_bucket,
                    "etcd-s3-access-key": snapshots.s3_access_key.get_secret_value(),
                    "etcd-s3-secret-key": snapshots.s3_secret_key.get_secret_value(),
                }
                if snapshots.s3_endpoint:
                    settings["etcd-s3-endpoint"] = snapshots.s3_endpoint
    if node.role == "server":
        # config validation refuses extra args that would override the keys set above
        settings |= _extra_args(config.k3s.extra_args)
    header = "# Managed by Space Harbor (Pulumi). Local edits are overwritten.\n"
    return header + yaml.safe_dump(settings, sort_keys=True, default_flow_style=False)


@dataclass(frozen=True)
class RegistryFiles:
    """What k3s.registries puts on every node: registries.yaml and the TLS files given as PEM text."""

    registries_yaml: str
    # path below REGISTRY_FILES_DIR -> PEM text
    files: dict[str, str] = field(default_factory=dict)

    def files_parameter(self) -> str:
        """HARBOR_K3S_REGISTRY_FILES: one `<path> <base64 of the text>` a line, for k3s.sh."""
        return "\n".join(
            f"{name} {base64.b64encode(text.encode()).decode()}" for name, text in sorted(self.files.items())
        )


def _folder(registry: str) -> str:
    """A file-system name per registry: `:` and `*` (never in a host name) become `_`."""
    return re.sub(r"[^A-Za-z0-9.-]", "_", registry)


def render_registries(registries: Registries) -> RegistryFiles:
    """k3s's registries.yaml, with secrets in it: it is written 0600 and travels as a secret.

    A TLS file given as PEM text goes to REGISTRY_FILES_DIR/<registry>/ and the YAML names that
    path; a path is passed through as it is.
    """
    files: dict[str, str] = {}
    mirrors: dict[str, Any] = {}
    for registry, mirror in sorted(registries.mirrors.items()):
        entry: dict[str, Any] = {}
        if mirror.endpoint:
            entry["endpoint"] = list(mirror.endpoint)
        if mirror.rewrite:
            entry["rewrite"] = dict(mirror.rewrite)
        mirrors[registry] = entry
    configs: dict[str, Any] = {}
    for registry, settings in sorted(registries.configs.items()):
        entry = {}
        if settings.auth is not None:
            auth = settings.auth
            values = {
                "username": auth.username,
                "password": auth.password.get_secret_value() if auth.password else None,
                "auth": auth.auth.get_secret_value() if auth.auth else None,
                # registries.yaml's spelling (k3s reads it with its YAML field names)
                "identity_token": auth.identity_token.get_secret_value() if auth.identity_token else None,
            }
            entry["auth"] = {key: value for key, value in values.items() if value is not None}
        if settings.tls is not None:
            tls = settings.tls
            given = {
                "ca_file": tls.ca_file,
                "cert_file": tls.cert_file,
                "key_file": tls.key_file.get_secret_value() if tls.key_file else None,
            }
            tls_entry: dict[str, Any] = {}
            for key, value in given.items():
                if value is None:
                    continue
                if value.startswith("/"):
                    tls_entry[key] = value
                else:
                    name = f"{_folder(registry)}/{_FILE_NAMES[key]}"
                    files[name] = value if value.endswith("\n") else value + "\n"
                    tls_entry[key] = f"{REGISTRY_FILES_DIR}/{name}"
            if tls.insecure_skip_verify:
                tls_entry["insecure_skip_verify"] = True
            entry["tls"] = tls_entry
        configs[registry] = entry
    document: dict[str, Any] = {}
    if mirrors:
        document["mirrors"] = mirrors
    if configs:
        document["configs"] = configs
    body = yaml.safe_dump(document, sort_keys=True, default_flow_style=False) if document else "{}\n"
    return RegistryFiles(registries_yaml=f"{REGISTRIES_HEADER}\n{body}", files=files)


def optional_install_parameters(config: HarborConfig, node: Node) -> dict[str, str]:
    """The k3s step's parameters that exist only while their setting is used.

    An unused setting adds nothing, so a stack that does not use it keeps the step's stdin as it
    was: a changed stdin is an update, which reruns `reconfigure` on every node.
    """
    parameters: dict[str, str] = {}
    if config.k3s.registries is not None:
        registries = render_registries(config.k3s.registries)
        parameters["HARBOR_K3S_REGISTRIES"] = registries.registries_yaml
        if registries.files:
            parameters["HARBOR_K3S_REGISTRY_FILES"] = registries.files_parameter()
    parameters |= reinstall_parameter(node)
    return parameters


def reinstall_parameter(node: Node) -> dict[str, str]:
    """HARBOR_K3S_REINSTALL for the install and upgrade steps, from `nodes[i].reinstall` when set."""
    return {"HARBOR_K3S_REINSTALL": str(node.reinstall)} if node.reinstall else {}


def _extra_args(args: list[str]) -> dict[str, Any]:
    """`--name=value` flags as config.yaml keys; repeated flags become lists."""
    parsed: dict[str, Any] = {}
    for arg in args:
        name, _, value = arg[2:].partition("=")
        item: Any = value if value else True
        if name in parsed:
            existing = parsed[name]
            parsed[name] = [*existing, item] if isinstance(existing, list) else [existing, item]
        else:
            parsed[name] = item
    return parsed


def kubeconfig_for(raw_kubeconfig: str, server: str, context: str) -> str:
    """Point the server's admin kubeconfig at `server` and give its names the stack's name."""
    document = yaml.safe_load(raw_kubeconfig)
    if not isinstance(document, dict) or not document.get("clusters"):
        raise ValueError("the server returned no kubeconfig; is k3s running?")
    document["clusters"][0]["cluster"]["server"] = server
    document["clusters"][0]["name"] = context
    document["users"][0]["name"] = context
    document["contexts"][0] = {"name": context, "context": {"cluster": context, "user": context}}
    document["current-context"] = context
    return yaml.safe_dump(document, sort_keys=False)
