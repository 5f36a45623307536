"""How a node script reaches a node: its parameters and body go on stdin, never on argv.

pulumi-command sends one `stdin` to every action of a Command (create, update, delete), so the
payload holds the whole script and the command line picks the action: `bash -s -- apply`.
Parameters travel as shell assignments ahead of the script body, so secrets never show in `ps`;
they are not exported, so the programs a script starts (apt-get, systemctl, wg) never inherit them.
The shared shell library, components/scripts/lib.sh, goes ahead of every script's body.
"""

from __future__ import annotations

import functools
import re
import shlex
from collections.abc import Mapping
from importlib import resources

_ENV_NAME = re.compile(r"^HARBOR_[A-Z0-9_]+$")


LIBRARY = "lib.sh"


@functools.cache
def node_script(name: str) -> str:
    """The text of a shipped script in components/scripts/."""
    return resources.files("components.scripts").joinpath(name).read_text(encoding="utf-8")


def script_payload(script: str, env: Mapping[str, str]) -> str:
    """The stdin for `bash -s -- ACTION`: parameter assignments, then lib.sh and the script itself."""
    lines = []
    for key in sorted(env):
        if not _ENV_NAME.match(key):
            raise ValueError(f"{key!r} is not a HARBOR_* parameter name")
        lines.append(f"{key}={shlex.quote(env[key])}")
    body = script.split("\n", 1)[1] if script.startswith("#!") else script
    library = node_script(LIBRARY).rstrip("\n")
    # bash parses a whole function before running it, and the body's stdin is /dev/null, so no
    # command in the library or the script (apt-get, ssh) can swallow the rest of it from stdin.
    return "\n".join(
        [*lines, "__harbor_main() {", library, body.rstrip("\n"), "}", '__harbor_main "$@" </dev/null', ""]
    )


def action_command(action: str, ssh_user: str) -> str:
    """The command line for one action; non-root users go through passwordless sudo."""
    if not re.fullmatch(r"[a-z][a-z-]*", action):
        raise ValueError(f"{action!r} is not an action name")
    sudo = "" if ssh_user == "root" else "sudo -n "
    return f"{sudo}bash -s -- {action}"
