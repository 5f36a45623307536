"""How the operator's machine reaches the first server's API: model -> the tunnel's route. Pure, no I/O.

`api_tunnel_target` is what `pulumi up` hands the tunnel process (components/tunnel.py), keys
included; `api_tunnel_output` is the `apiTunnel` stack output that `scripts/kubeconfig` reads back
to open the same tunnel without the program. The output holds no secret: where a key is needed
it names the stack config key that holds it, for `pulumi config get --path`. Behind a bastion it
also gives the `ssh -J` command that opens the same tunnel by hand, and the known_hosts lines of
every pinned hop. `api_tunnel_port` is the stack's own loopback port, so that stacks side by side
never share a tunnel.
"""

from __future__ import annotations

import hashlib
import shlex
from typing import Any

from components.config import Bastion, HarborConfig, Node
from components.render.k3s import API_PORT
from components.tunnel import SshTarget

# Where a stack's own tunnel port falls when `k3s.tunnelPort` is unset: wide enough that two stacks
# rarely meet, and below Linux's ephemeral range (32768-60999), so an outgoing connection of the
# machine never holds it.
DERIVED_TUNNEL_PORTS = range(17000, 32000)


def stack_identity(project: str, stack: str) -> str:
    """What a tunnel records as the stack it serves."""
    return f"{project}/{stack}"


def api_tunnel_port(config: HarborConfig, stack: str) -> int:
    """`k3s.tunnelPort`, else a port derived from the stack's identity: the same on every run and machine."""
    if config.k3s.tunnel_port is not None:
        return config.k3s.tunnel_port
    digest = hashlib.sha256(stack.encode()).digest()
    return DERIVED_TUNNEL_PORTS[int.from_bytes(digest[:8], "big") % len(DERIVED_TUNNEL_PORTS)]


def api_tunnel_target(config: HarborConfig) -> SshTarget:
    """The first server's SSH, and its bastion's when it has one, with their keys."""
    first = config.first_server
    bastion = config.bastion(first)
    return SshTarget(
        host=first.host,
        port=config.ssh_port(first),
        user=config.ssh_user(first),
        private_key=config.ssh_key(first).get_secret_value(),
        host_key=first.ssh_host_key,
        bastion=_bastion_target(bastion) if bastion is not None else None,
    )


def _bastion_target(bastion: Bastion) -> SshTarget:
    assert bastion.user is not None and bastion.private_key is not None  # filled in by HarborConfig.bastion
    return SshTarget(
        host=bastion.host,
        port=bastion.port,
        user=bastion.user,
        private_key=bastion.private_key.get_secret_value(),
        host_key=bastion.host_key,
    )


def _known_host(host: str, port: int, host_key: str) -> str:
    """A known_hosts line as ssh looks it up: a port other than 22 goes in `[host]:port`."""
    return f"{host if port == 22 else f'[{host}]:{port}'} {host_key}"


def _jump(user: str, host: str, port: int) -> str:
    """`user@host:port` for `ssh -J`; an IPv6 address needs brackets there."""
    return f"{user}@{f'[{host}]' if ':' in host else host}:{port}"


def manual_tunnel_command(config: HarborConfig, node: Node, bastion: Bastion, local: int) -> str:
    """The `ssh -J` command that opens the tunnel by hand, on the same loopback port as the program's."""
    assert bastion.user is not None
    return shlex.join(
        [
            "ssh",
            "-N",
            "-L",
            f"127.0.0.1:{local}:127.0.0.1:{API_PORT}",
            "-J",
            _jump(bastion.user, bastion.host, bastion.port),
            "-p",
            str(config.ssh_port(node)),
            f"{config.ssh_user(node)}@{node.host}",
        ]
    )


def api_tunnel_output(config: HarborConfig, stack: str) -> dict[str, Any] | None:
    """The `apiTunnel` stack output: where the tunnel goes, for which stack, and which config keys hold its keys."""
    if config.k3s.api_access != "ssh-tunnel":
        return None
    first = config.first_server
    output: dict[str, Any] = {
        "host": first.host,
        "port": config.ssh_port(first),
        "user": config.ssh_user(first),
        "hostKey": first.ssh_host_key,
        "localPort": api_tunnel_port(config, stack),
        "stack": stack,
        # The stack config key that holds the SSH key (the node's own, else the default).
        "sshKeyConfig": (
            f"nodes[{config.nodes.index(first)}].sshPrivateKey" if first.ssh_private_key else "sshPrivateKey"
        ),
    }
    bastion = config.bastion(first)
    if bastion is None:
        # Without a bastion the output is what it was before bastions existed.
        return output
    output["bastion"] = {
        "host": bastion.host,
        "port": bastion.port,
        "user": bastion.user,
        "hostKey": bastion.host_key,
        "sshKeyConfig": config.bastion_key_config(first),
    }
    output["sshCommand"] = manual_tunnel_command(config, first, bastion, output["localPort"])
    pinned = [(bastion.host, bastion.port, bastion.host_key), (first.host, config.ssh_port(first), first.ssh_host_key)]
    output["knownHosts"] = [_known_host(host, port, key) for host, port, key in pinned if key]
    return output


def unpinned_node_warnings(config: HarborConfig) -> list[str]:
    """One warning per node dialled without a pinned host key (only with ssh.allowUnpinnedHostKeys)."""
    first = config.first_server.name if config.k3s.api_access == "ssh-tunnel" else None
    return [
        f"nodes[{i}].sshHostKey is not set: {node.name} is dialled with no host-key check at all"
        + (", and so is the API tunnel" if node.name == first else "")
        + " (ssh.allowUnpinnedHostKeys is true); whoever answers at "
        f"{node.host} receives its WireGuard key and k3s token. Pin it: "
        f"`ssh-keyscan -t ed25519 {node.host} 2>/dev/null | cut -d' ' -f2-`"
        for i, node in enumerate(config.nodes)
        if node.ssh_host_key is None
    ]


def unpinned_bastions(config: HarborConfig) -> list[str]:
    """The config keys of bastions in use without a `hostKey`, each once."""
    found: list[str] = []
    for i, node in enumerate(config.nodes):
        bastion = config.bastion(node)
        if bastion is None or bastion.host_key is not None:
            continue
        path = f"nodes[{i}].bastion" if node.bastion is not None else "ssh.bastion"
        if path not in found:
            found.append(path)
    return found
