"""`scripts/kubeconfig STACK`: the stack's kubeconfig as a named context in ~/.kube/config, and its tunnel.

It reads what `pulumi up` left in the stack (the `kubeconfig` and `apiTunnel` outputs, and the SSH
keys from stack config, decrypted by the Pulumi CLI: the server's, and its bastion's when the
server is behind one) and never needs the program. So it is also
what to run before `pulumi refresh`, or kubectl, when the API is reached through the tunnel.

The merge keeps every other cluster, user and context of the file, replaces only the stack's own
entries (named after `kubeContext`), and sets the current context only when the file has none.
It holds kubectl's own lock (`<file>.lock`, which client-go creates exclusively while it writes)
so that neither it nor another `scripts/kubeconfig` loses a change made at the same time, and it
writes through a symlinked file to the link's target, which stays a link.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from components.access import stack_identity
from components.config import PROJECT
from components.tunnel import SshTarget, TunnelError, ensure_tunnel

SECTIONS = ("clusters", "users", "contexts")
# kubectl holds its lock for the moment of one write; longer means a writer died and left it.
LOCK_WITHIN_SECONDS = 10


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


@contextlib.contextmanager
def kubeconfig_lock(path: Path) -> Iterator[None]:
    """client-go's lock on a kubeconfig file: `<file>.lock`, created exclusively, removed after.

    kubectl honours only this (not an fcntl lock), and fails at once when it finds the lock taken;
    we wait a little instead, since kubectl holds it only for the moment of a write.
    """
    lock = path.with_name(path.name + ".lock")
    deadline = time.monotonic() + LOCK_WITHIN_SECONDS
    while True:
        try:
            os.close(os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
            break
        except FileExistsError:
            if time.monotonic() > deadline:
                raise KubeconfigError(
                    f"{lock} has been held for {LOCK_WITHIN_SECONDS}s: another kubectl or scripts/kubeconfig "
                    f"is writing {path}, or one was killed while it did; remove the lock if nothing is running"
                ) from None
            time.sleep(0.05)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _write_private(path: Path, document: dict[str, Any]) -> None:
    """Atomically, mode 0600 from the first byte: the file holds credentials.

    Run as root for another user's file (`sudo -E`), the new file keeps the old one's owner.
    """
    fd, tmp = tempfile.mkstemp(prefix=".kubeconfig.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            yaml.safe_dump(document, handle, sort_keys=False)
            with contextlib.suppress(FileNotFoundError):
                before = path.stat()
                if os.geteuid() == 0 and (before.st_uid, before.st_gid) != (0, 0):
                    os.fchown(handle.fileno(), before.st_uid, before.st_gid)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def merge_into_file(kubeconfig_path: Path, stack_config: dict[str, Any]) -> Path:
    """Merge under kubectl's lock, into the file a symlink points at (the link stays); the file written."""
    # The link's target is the file: replacing the link by a regular file would cut it from wherever
    # the user keeps the real one (a dotfiles repository, a mounted secret).
    path = Path(os.path.realpath(kubeconfig_path))
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with kubeconfig_lock(path):
        existing = yaml.safe_load(path.read_text()) if path.exists() else None
        _write_private(path, merge_kubeconfig(existing, stack_config))
    return path


def install(stack: str, kubeconfig_path: Path) -> str:
    """Merge the stack's context into `kubeconfig_path`, open its tunnel if it has one; a summary."""
    outputs = json.loads(_pulumi("stack", "output", "--stack", stack, "--json", "--show-secrets"))
    if not outputs.get("kubeconfig"):
        raise KubeconfigError(f"stack {stack} has no kubeconfig output yet: run `pulumi up` first")
    ours = yaml.safe_load(outputs["kubeconfig"])
    summary = f"context {ours['current-context']} written to {kubeconfig_path}"
    tunnel = outputs.get("apiTunnel")
    # The tunnel first: a port that another stack holds leaves the kubeconfig as it was.
    if tunnel:
        target = _ssh_target(stack, tunnel)
        # Outputs of a release before several stacks: the identity the program would give it now.
        served = tunnel.get("stack") or stack_identity(PROJECT, stack.rsplit("/", 1)[-1])
        try:
            outcome = ensure_tunnel(
                target, int(tunnel["localPort"]), stack=served, warn=lambda text: print(text, file=sys.stderr)
            )
        except TunnelError as error:
            raise KubeconfigError(str(error)) from None
        via = f" via {tunnel['bastion']['host']}" if tunnel.get("bastion") else ""
        summary += f"; tunnel 127.0.0.1:{tunnel['localPort']} -> {tunnel['host']}{via}: {outcome}"
    merge_into_file(kubeconfig_path, ours)
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
