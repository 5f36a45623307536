"""WireGuard keys and wg-quick files for the mesh: pure functions, no I/O."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from components.config import HarborConfig


def public_key(private_key_b64: str) -> str:
    """X25519 public key of a base64 private key; equals `wg pubkey` (X25519 clamps the scalar)."""
    private = X25519PrivateKey.from_private_bytes(base64.b64decode(private_key_b64))
    return base64.b64encode(private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


@dataclass(frozen=True)
class Peer:
    """One [Peer] block: who it is, its key, what it may send from, and where to dial it."""

    name: str
    public_key: str
    allowed_ip: str
    endpoint: str | None


def mesh_peers(config: HarborConfig, public_keys: Mapping[str, str]) -> list[Peer]:
    """Every member of the mesh, nodes then operators, as a peer; `public_keys` maps name -> key."""
    port = config.mesh.listen_port
    peers = [
        Peer(node.name, public_keys[node.name], f"{node.mesh_address}/32", _endpoint(node.public_endpoint, port))
        for node in config.nodes
    ]
    # Operators sit behind NAT on laptops: they dial in, nodes never dial them.
    peers += [Peer(op.name, public_keys[op.name], f"{op.mesh_address}/32", None) for op in config.mesh.operators]
    return peers


def _endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _peer_block(peer: Peer, keepalive: int) -> list[str]:
    lines = ["", f"# {peer.name}", "[Peer]", f"PublicKey = {peer.public_key}", f"AllowedIPs = {peer.allowed_ip}"]
    if peer.endpoint:
        lines.append(f"Endpoint = {peer.endpoint}")
    if keepalive:
        lines.append(f"PersistentKeepalive = {keepalive}")
    return lines


def render_node_config(config: HarborConfig, node_name: str, private_key: str, peers: list[Peer]) -> str:
    """The wg-quick file of one node: itself as [Interface], every other member as a [Peer].

    The address carries the mesh prefix, so one subnet route reaches every peer and adding a
    peer never needs a new route (`wg syncconf` alone applies it).
    """
    node = next(n for n in config.nodes if n.name == node_name)
    mesh = config.mesh
    lines = [
        "# Managed by Space Harbor (Pulumi). Local edits are overwritten.",
        "[Interface]",
        f"Address = {node.mesh_address}/{mesh.cidr.prefixlen}",
        f"ListenPort = {mesh.listen_port}",
        f"MTU = {mesh.mtu}",
        f"PrivateKey = {private_key}",
    ]
    for peer in sorted((p for p in peers if p.name != node_name), key=lambda p: p.name):
        lines += _peer_block(peer, mesh.persistent_keepalive)
    return "\n".join(lines) + "\n"


def render_operator_config(config: HarborConfig, operator_name: str, private_key: str | None, peers: list[Peer]) -> str:
    """The wg-quick file an operator imports on a laptop: every node as a peer, no listen port."""
    operator = next(op for op in config.mesh.operators if op.name == operator_name)
    node_names = {node.name for node in config.nodes}
    lines = [
        f"# Space Harbor mesh access for {operator.name}.",
        "[Interface]",
        f"Address = {operator.mesh_address}/32",
        f"PrivateKey = {private_key or '<your private key: this operator brought their own public key>'}",
        f"MTU = {config.mesh.mtu}",
    ]
    for peer in sorted((p for p in peers if p.name in node_names), key=lambda p: p.name):
        lines += _peer_block(peer, config.mesh.persistent_keepalive or 25)
    return "\n".join(lines) + "\n"
