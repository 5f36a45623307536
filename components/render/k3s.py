"""k3s configuration files and kubeconfigs: pure functions, no I/O.

Every setting lives in /etc/rancher/k3s/config.yaml rather than installer flags, because a re-run
of the installer with other flags silently drops the old ones.
"""

from __future__ import annotations

from typing import Any

import yaml

from components.config import HarborConfig, Node

API_PORT = 6443


def server_url(config: HarborConfig) -> str:
    """Where joining nodes reach the API: the first server over the mesh (or private network)."""
    return f"https://{config.node_address(config.first_server)}:{API_PORT}"


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
            "tls-san": sorted({address, "127.0.0.1"}),
            "cluster-cidr": str(config.k3s.cluster_cidr),
            "service-cidr": str(config.k3s.service_cidr),
            "flannel-backend": config.k3s.flannel_backend,
            # Traefik comes from git; servicelb would open host ports outside the firewall's plan.
            "disable": ["traefik", "servicelb"],
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
