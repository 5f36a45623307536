"""Node drift: one dynamic resource per node whose Read (`pulumi refresh`) looks at the node over SSH.

pulumi-command's Commands read nothing, so a refresh alone would never notice a hand edit on a
node. `NodeDriftProvider` records, per node, fingerprints of what the node's steps apply
(`expected`, components/render/drift.py) and how to reach the node (`connection`, a secret):

- create / update dial nobody: they record `expected` and `observed` = "as applied" everywhere.
- read (refresh) opens one SSH session (host key pinned, through the bastion when there is one,
  bounded in time), runs components/scripts/drift-read.sh, which changes nothing, and stores per
  artefact "as applied" or one line on what differs. A node that cannot be read keeps its last
  observations and says why in `reachable`. The read returns `observed` among the inputs too, so
  that the next `check` sees it.
- check carries the `repair` counters forward and adds one for each step (k3s, mesh, firewall)
  whose artefact the last read found drifted. The step takes `HARBOR_REPAIR=<n>` in its stdin
  once n > 0, so the bump is an update of that step: its own idempotent script puts the artefact
  back. The counters live in the checked inputs, which the engine hands back as the outputs of a
  preview, so a preview sees them known and shows no step change that the `up` would not make.
- diff: a change when `expected` or `connection` changed, or a read found drift.
- delete dials nobody, so `pulumi destroy` needs neither the program nor the node.

Pulumi pickles the provider by reference into every stack's state, as
`components.drift.NodeDriftProvider`: it must stay importable here, and this module creates
nothing at import.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Mapping
from typing import Any

import paramiko
import pulumi
import pulumi.dynamic
from pulumi.runtime.rpc import is_rpc_secret, unwrap_rpc_secret

from components.render.drift import AS_APPLIED, compare, drifted, next_repair, parse_facts, read_parameters, zero_repair
from components.render.remote import action_command, node_script, script_payload

READ_SCRIPT = "drift-read.sh"
# Bounds of one read: each dial and handshake, then the whole script.
DIAL_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
INPUT_KEYS = ("node", "connection", "expected", "repair")
NOT_READ = "not read yet"


class DriftReadError(Exception):
    """The node could not be read; the message names why and carries no secret."""


def plain(value: Any) -> Any:
    """Drop Pulumi's secret wrappers, should the engine hand any over."""
    if isinstance(value, Mapping):
        if is_rpc_secret(value):
            return plain(unwrap_rpc_secret(value))
        return {key: plain(item) for key, item in value.items() if key != "__provider"}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value


def _is_unknown(value: Any) -> bool:
    return type(value).__name__ == "Unknown"


# --- SSH --------------------------------------------------------------------------------------


def _private_key(text: str) -> paramiko.PKey:
    for kind in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return kind.from_private_key(io.StringIO(text))
        except (paramiko.SSHException, ValueError):
            continue
    raise DriftReadError("the SSH private key is not an ed25519, ECDSA or RSA key paramiko can read")


class _UnpinnedBastion(paramiko.MissingHostKeyPolicy):
    """A bastion without `hostKey` is dialled as the steps dial it (the program warns about it): it
    only forwards bytes, and the node behind it is checked end to end with its own pinned key."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        return None


def _client(endpoint: Mapping[str, Any], what: str, sock: Any = None) -> paramiko.SSHClient:
    host, port = str(endpoint["host"]), int(endpoint["port"])
    client = paramiko.SSHClient()
    pinned = endpoint.get("host_key")
    if pinned:
        kind, _, rest = str(pinned).strip().partition(" ")
        try:
            key = paramiko.PKey.from_type_string(kind, base64.b64decode(rest.split()[0]))
        except Exception:  # any malformed pin is one clear error
            raise DriftReadError(f"the pinned host key of {what} is not '<type> <base64>'") from None
        client.get_host_keys().add(host if port == 22 else f"[{host}]:{port}", kind, key)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
    else:
        client.set_missing_host_key_policy(_UnpinnedBastion())
    try:
        client.connect(
            host,
            port,
            username=str(endpoint["user"]),
            pkey=_private_key(str(endpoint["private_key"])),
            sock=sock,
            timeout=DIAL_TIMEOUT,
            banner_timeout=DIAL_TIMEOUT,
            auth_timeout=DIAL_TIMEOUT,
            channel_timeout=DIAL_TIMEOUT,
            look_for_keys=False,
            allow_agent=False,
        )
    except paramiko.BadHostKeyException:
        client.close()
        raise DriftReadError(f"{what} offered a host key other than the pinned one; refusing it") from None
    except paramiko.AuthenticationException:
        client.close()
        raise DriftReadError(f"{what} refused the SSH key") from None
    except (OSError, paramiko.SSHException, EOFError) as error:
        client.close()
        raise DriftReadError(f"cannot reach {what} at {host}:{port}: {type(error).__name__}: {error}") from None
    return client


def ssh_read(connection: Mapping[str, Any], payload: str) -> str:
    """Run the read script on the node (through its bastion when set); its stdout, or DriftReadError."""
    if not connection.get("host_key"):
        raise DriftReadError("its host key is not pinned (nodes[i].sshHostKey), so it is not dialled for a read")
    bastion_client = None
    bastion = connection.get("bastion")
    sock = None
    try:
        if bastion:
            bastion_client = _client(bastion, f"the bastion {bastion['host']}")
            transport = bastion_client.get_transport()
            assert transport is not None
            try:
                sock = transport.open_channel(
                    "direct-tcpip",
                    (str(connection["host"]), int(connection["port"])),
                    ("127.0.0.1", 0),
                    timeout=DIAL_TIMEOUT,
                )
            except (paramiko.SSHException, OSError) as error:
                raise DriftReadError(f"the bastion {bastion['host']} cannot reach the node: {error}") from None
        client = _client(connection, "the node", sock=sock)
        try:
            stdin, stdout, stderr = client.exec_command(
                action_command("read", str(connection["user"])), timeout=READ_TIMEOUT
            )
            stdin.write(payload)
            stdin.channel.shutdown_write()
            out = stdout.read().decode("utf-8", "replace")
            err = stderr.read().decode("utf-8", "replace")
            status = stdout.channel.recv_exit_status()
        except (TimeoutError, paramiko.SSHException) as error:
            raise DriftReadError(f"the read did not finish within {READ_TIMEOUT:.0f}s: {error}") from None
        finally:
            client.close()
    finally:
        if bastion_client is not None:
            bastion_client.close()
    if status != 0:
        last = (err.strip().splitlines() or ["no message"])[-1]
        raise DriftReadError(f"the read script failed (exit {status}): {last}")
    return out


# --- the provider's operations, as functions (tested directly) ---------------------------------

Reader = Callable[[Mapping[str, Any], str], str]


def recorded(props: Mapping[str, Any], reachable: str | None) -> dict[str, Any]:
    """The outputs after a create or update: what was applied is taken as what the node has."""
    props = plain(dict(props))
    outs = {key: props.get(key) for key in INPUT_KEYS}
    outs["repair"] = props.get("repair") or zero_repair()
    outs["observed"] = dict.fromkeys(props.get("expected") or {}, AS_APPLIED)
    outs["reachable"] = reachable or NOT_READ
    return outs


def drift_check(olds: Mapping[str, Any], news: Mapping[str, Any]) -> dict[str, Any]:
    """The inputs: the program's, with the repair counters carried on (and bumped after a drift read).

    `observed` is "as applied" for every artefact: against the lines a refresh stored among the old
    inputs, that is what a preview's diff shows for each artefact the `up` repairs.
    """
    olds, checked = plain(dict(olds)), dict(news)
    for key in ("observed", "reachable", "repair"):
        checked.pop(key, None)
    checked["repair"] = next_repair(olds.get("repair"), olds.get("observed"))
    expected = checked.get("expected")
    checked["observed"] = dict.fromkeys(expected, AS_APPLIED) if isinstance(expected, Mapping) else {}
    return checked


def drift_diff(olds: Mapping[str, Any], news: Mapping[str, Any]) -> list[str]:
    """What changed, as property paths: inputs, and the artefacts the last read found drifted."""
    olds, news = plain(dict(olds)), plain(dict(news))
    changed = [key for key in INPUT_KEYS if _is_unknown(news.get(key)) or olds.get(key) != news.get(key)]
    changed += [f"observed.{artefact}" for artefact in drifted(olds.get("observed"))]
    return changed


def drift_read(props: Mapping[str, Any], read: Reader = ssh_read) -> tuple[dict[str, Any], dict[str, Any]]:
    """(outputs, inputs) after reading the node; a node that cannot be read keeps its observations."""
    props = plain(dict(props))
    expected = props.get("expected") or {}
    before = props.get("observed") or dict.fromkeys(expected, AS_APPLIED)
    payload = script_payload(node_script(READ_SCRIPT), read_parameters(expected))
    try:
        facts = parse_facts(read(props["connection"], payload))
    except DriftReadError as error:
        observed, reachable = dict(before), f"unreachable: {error}"
    else:
        observed, reachable = compare(str(props["node"]), expected, facts), "reachable"
    outs = {**{key: props.get(key) for key in INPUT_KEYS}, "observed": observed, "reachable": reachable}
    inputs = {**{key: props.get(key) for key in INPUT_KEYS}, "observed": observed}
    return outs, inputs


class NodeDriftProvider(pulumi.dynamic.ResourceProvider):
    """Dynamic provider of `NodeDriftRecord`: stateless, everything it needs is in the state."""

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.CheckResult:
        return pulumi.dynamic.CheckResult(drift_check(olds, news), [])

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.DiffResult:
        return pulumi.dynamic.DiffResult(changes=bool(drift_diff(olds, news)), replaces=[], delete_before_replace=False)

    def create(self, props: dict[str, Any]) -> pulumi.dynamic.CreateResult:
        return pulumi.dynamic.CreateResult(f"drift:{plain(props)['node']}", recorded(props, None))

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.UpdateResult:
        return pulumi.dynamic.UpdateResult(recorded(news, plain(olds).get("reachable")))

    def read(self, id_: str, props: dict[str, Any]) -> pulumi.dynamic.ReadResult:
        outs, inputs = drift_read(props)
        return pulumi.dynamic.ReadResult(id_, outs, inputs)

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        """Nothing to undo on the node: the record goes with the state."""


class NodeDriftRecord(pulumi.dynamic.Resource):
    """One node's drift record: registers as `pulumi-python:dynamic:Resource`."""

    repair: pulumi.Output[dict[str, int]]
    observed: pulumi.Output[dict[str, str]]
    reachable: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(
            NodeDriftProvider(),
            name,
            {**props, "repair": None, "observed": None, "reachable": None},
            pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["connection"])),
        )
