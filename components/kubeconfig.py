"""`scripts/kubeconfig STACK`: the stack's kubeconfig as a named context in ~/.kube/config, and its tunnel.

It reads what `pulumi up` left in the stack (the `kubeconfig` and `apiTunnel` outputs, and the SSH
keys from stack config, decrypted by the Pulumi CLI: the server's, and its bastion's when the
server is behind one) and never needs the program. So it is also
what to run before `pulumi refresh`, or kubectl, when the API is reached through the tunnel.

The merge keeps every other cluster, user and context of the file, replaces only the stack's own
entries (named after `kubeContext`), and sets the current context only when the file has none.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from components.tunnel import SshTarget, ensure_tunnel

SECTIONS = ("clusters", "users", "contexts")


class KubeconfigError(RuntimeError):
    """A step of the merge failed; the message says which and what to do."""


def merge_kubeconfig(existing: dict[str, Any] | None, stack: dict[str, Any]) -> dict[str, Any]:
    """`existing` with the stack's cluster, user and context added or replaced by name. Pure."""
    merged: dict[str, Any] = dict(existing or {})
    merged.setdefault("apiVersion", "v1")
    merged.setdefault("kind", "Config")
    for section in SECTIONS:
        ours = {entry["name"]: entry for entry in stack.get(section) or []}
        kept = [entry for entry in merged.get(section) or [] if entry.get("name") not in ours]
        merged[section] = kept + list(ours.values())
    if not merged.get("current-context"):
        merged["current-context"] = stack.get("current-context")
    return merged


def _pulumi(*args: str) -> str:
    try:
        result = subprocess.run(["pulumi", *args], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise KubeconfigError("the Pulumi CLI is not on PATH") from None
    if result.returncode != 0:
        # The CLI's own message; it holds no secret (a failed lookup prints none).
        raise KubeconfigError(f"pulumi {' '.join(args[:2])} failed: {result.stderr.strip()}")
    return result.stdout


def _write_private(path: Path, document: dict[str, Any]) -> None:
    """Atomically, mode 0600 from the first byte: the file holds credentials."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=".kubeconfig.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            yaml.safe_dump(document, handle, sort_keys=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def install(stack: str, kubeconfig_path: Path) -> str:
    """Merge the stack's context into `kubeconfig_path`, open its tunnel if it has one; a summary."""
    outputs = json.loads(_pulumi("stack", "output", "--stack", stack, "--json", "--show-secrets"))
    if not outputs.get("kubeconfig"):
        raise KubeconfigError(f"stack {stack} has no kubeconfig output yet: run `pulumi up` first")
    ours = yaml.safe_load(outputs["kubeconfig"])
    existing = yaml.safe_load(kubeconfig_path.read_text()) if kubeconfig_path.exists() else None
    _write_private(kubeconfig_path, merge_kubeconfig(existing, ours))
    summary = f"context {ours['current-context']} written to {kubeconfig_path}"
    tunnel = outputs.get("apiTunnel")
    if tunnel:
        target = _ssh_target(stack, tunnel)
        outcome = ensure_tunnel(target, int(tunnel["localPort"]), warn=lambda text: print(text, file=sys.stderr))
        via = f" via {tunnel['bastion']['host']}" if tunnel.get("bastion") else ""
        summary += f"; tunnel 127.0.0.1:{tunnel['localPort']} -> {tunnel['host']}{via}: {outcome}"
    return summary


def _ssh_target(stack: str, hop: dict[str, Any]) -> SshTarget:
    """One hop of the `apiTunnel` output (the server, and its `bastion` if any), its key from stack config."""
    key = _pulumi("config", "get", hop["sshKeyConfig"], "--path", "--stack", stack)
    bastion = hop.get("bastion")
    return SshTarget(
        host=hop["host"],
        port=int(hop["port"]),
        user=hop["user"],
        private_key=key,
        host_key=hop["hostKey"],
        bastion=_ssh_target(stack, bastion) if bastion else None,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/kubeconfig", description=__doc__.split("\n\n")[0])
    parser.add_argument("stack", help="the Pulumi stack, e.g. prod")
    parser.add_argument(
        "--kubeconfig",
        type=Path,
        default=Path(os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or Path.home() / ".kube" / "config"),
        help="the file to merge into (default: the first file of $KUBECONFIG, else ~/.kube/config)",
    )
    args = parser.parse_args(argv)
    try:
        print(install(args.stack, args.kubeconfig))
    except KubeconfigError as error:
        print(f"scripts/kubeconfig: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
