"""Build the `remote.Command` resources that run node scripts: one connection and stdin recipe."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pulumi
from pulumi_command import remote

from components.config import Bastion, HarborConfig, Node
from components.render.remote import action_command, node_script, script_payload

# A failed dial is retried 6 times with pulumi's backoff (0.1 s growing by 1.5x): a host that drops
# packets gets about 70 s (7 dials of up to 10 s), one that refuses connections (sshd stopped)
# fails its step in a few seconds. Either way a dead node fails within bounded time and names
# itself; the other nodes' steps go on. tests/testbed/test_faults.py measures both. Behind a
# bastion both bound the dials to the bastion; pulumi-command's dial onward from the bastion to the
# node has no timeout of its own, so a node that drops packets there fails only when the bastion's
# TCP connect gives up (Linux: 134 s measured on the testbed), on each of its 7 dials (docs/bastion.md).
DIAL_ERROR_LIMIT = 6
PER_DIAL_TIMEOUT = 10


def connection(config: HarborConfig, node: Node) -> remote.ConnectionArgs:
    """How pulumi-command reaches `node`; the keys are secrets, the host keys pinned when given.

    The one place that builds a connection: every step on a node dials exactly this. Behind a
    bastion pulumi-command dials the bastion first (its own dial limits), then from there the
    node's `host:port`, and speaks SSH to the node through that channel: the node's host key and
    key are checked end to end, the bastion only forwards bytes. Without a bastion no `proxy` is
    set, so the inputs of existing steps stay exactly as they were.
    """
    bastion = config.bastion(node)
    return remote.ConnectionArgs(
        host=node.host,
        port=config.ssh_port(node),
        user=config.ssh_user(node),
        private_key=pulumi.Output.secret(config.ssh_key(node).get_secret_value()),
        host_key=node.ssh_host_key,
        dial_error_limit=DIAL_ERROR_LIMIT,
        per_dial_timeout=PER_DIAL_TIMEOUT,
        proxy=_proxy(bastion) if bastion is not None else None,
    )


def _proxy(bastion: Bastion) -> remote.ProxyConnectionArgs:
    assert bastion.private_key is not None and bastion.user is not None  # filled in by HarborConfig.bastion
    return remote.ProxyConnectionArgs(
        host=bastion.host,
        port=bastion.port,
        user=bastion.user,
        private_key=pulumi.Output.secret(bastion.private_key.get_secret_value()),
        host_key=bastion.host_key,
        dial_error_limit=DIAL_ERROR_LIMIT,
        per_dial_timeout=PER_DIAL_TIMEOUT,
    )


def node_command(
    name: str,
    config: HarborConfig,
    node: Node,
    script: str,
    *,
    create: str | None,
    delete: str | None,
    update: str | None = None,
    env: Mapping[str, pulumi.Input[str | None]],
    secret: bool,
    opts: pulumi.ResourceOptions,
    prints_secret: bool = False,
    triggers: Sequence[pulumi.Input[object]] | None = None,
) -> remote.Command:
    """A Command that runs `script` on `node`, parameters and body on stdin.

    `secret` marks the stdin secret when `env` carries key material or tokens. `prints_secret`
    is for commands whose stdout is a secret (a kubeconfig): it is kept out of logs and state
    in plain text. `update` is the action for a changed input; without it `create` runs again.
    A step without `create` (and `update`) dials nobody: pulumi-command runs nothing for it.
    """
    # Most steps' parameters are plain strings: their payload is built at once, not through an
    # Output per parameter (at a few hundred nodes that machinery was most of the up-mode run).
    plain = {key: value for key, value in env.items() if isinstance(value, str)}
    pending = {key: value for key, value in env.items() if not isinstance(value, str)}
    payload: pulumi.Input[str]
    if pending:
        # A parameter that resolves to None is left out (HARBOR_REPAIR before any repair).
        payload = pulumi.Output.all(**pending).apply(
            lambda values: script_payload(
                node_script(script), {**plain, **{key: value for key, value in values.items() if value is not None}}
            )
        )
    else:
        payload = script_payload(node_script(script), plain)
    user = config.ssh_user(node)
    options = opts
    if delete:
        # A replacement (`pulumi up --replace`, or of the resource it is deleted with) is
        # create-before-delete by default: the old delete would run after the new create, on the
        # same host, and undo it (no mesh, no firewall, no staged files). Delete first, then create.
        options = pulumi.ResourceOptions.merge(options, pulumi.ResourceOptions(delete_before_replace=True))
    if prints_secret:
        options = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["stdout"]))
    return remote.Command(
        name,
        connection=connection(config, node),
        create=action_command(create, user) if create else None,
        update=action_command(update, user) if update else None,
        delete=action_command(delete, user) if delete else None,
        stdin=pulumi.Output.secret(payload) if secret else payload,
        logging=remote.Logging.NONE if prints_secret else remote.Logging.STDOUT_AND_STDERR,
        # Otherwise every update and delete sends the previous stdout (a kubeconfig, for one step)
        # to sshd as an environment request.
        add_previous_output_in_env=False,
        triggers=triggers,
        opts=options,
    )


def node_copy(
    name: str, config: HarborConfig, node: Node, source: Path, remote_path: str, opts: pulumi.ResourceOptions
) -> remote.CopyToRemote:
    """Copy a local file to `node` (as the SSH user) over SFTP; components/shipped.py says what and why."""
    return remote.CopyToRemote(
        name,
        connection=connection(config, node),
        source=pulumi.FileAsset(str(source)),
        remote_path=remote_path,
        opts=opts,
    )


def disarmed_command(name: str, node_name: str, opts: pulumi.ResourceOptions) -> remote.Command:
    """A step of a forgotten node: same identity, no command, so neither its update nor its delete dials.

    `.invalid` (RFC 6761) never resolves: should anything ever dial it, it fails at once.
    """
    return remote.Command(
        name,
        connection=remote.ConnectionArgs(host=f"{node_name}.forgotten.invalid"),
        add_previous_output_in_env=False,
        opts=opts,
    )


def first_server_command(
    name: str,
    config: HarborConfig,
    env: Mapping[str, pulumi.Input[str]],
    opts: pulumi.ResourceOptions,
    *,
    create: str | None,
    delete: str | None,
    update: str | None = None,
    prints_secret: bool = False,
) -> pulumi.Resource:
    """A k3s-lifecycle.sh step; it runs on the first server, whose kubectl reaches the API locally."""
    return node_command(
        name,
        config,
        config.first_server,
        "k3s-lifecycle.sh",
        create=create,
        update=update,
        delete=delete,
        env=env,
        secret=False,
        prints_secret=prints_secret,
        opts=opts,
    )
