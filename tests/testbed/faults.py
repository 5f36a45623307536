"""Cut an SSH session at a chosen point inside a node script, deterministically.

`cut_session(tb, node, "nft", r"^-f ", "before")` puts a wrapper for `nft` first in the node's
PATH (/usr/local/sbin). The next call of `nft` whose arguments match the pattern, made from an SSH
session, SIGKILLs the calling script and the sshd processes of its session: the connection drops
and the script stops at exactly that call, as with a cut link or a crash there. "before" cuts
instead of running the command, "after" runs it first. The wrapper fires once and otherwise runs
the real command untouched; it ignores callers outside SSH (a systemd unit's wg-quick, say). The
production scripts carry no hook of any kind: only the node's PATH is changed, and only for the
duration of the `with` block.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.testbed.nodes import Node, Testbed

WRAPPER_DIR = "usr/local/sbin"
TRIGGER_DIR = "var/lib/shtb-fault"

WRAPPER = r"""#!/bin/sh
# TESTBED FAULT INJECTION, not part of Space Harbor (tests/testbed/faults.py). Removed after the test.
real=@REAL@
trigger=/@TRIGGER_DIR@/@NAME@
if [ -f "$trigger" ]; then
    when=$(sed -n 1p "$trigger")
    pattern=$(sed -n 2p "$trigger")
    # The caller's ancestors up to (not including) the sshd listener, whose parent is PID 1.
    chain=""
    in_ssh=false
    pid=$PPID
    while [ "$pid" -gt 1 ]; do
        parent=$(sed -n 's/^PPid:[[:space:]]*//p' "/proc/$pid/status")
        [ "$parent" -gt 1 ] || break
        chain="$chain $pid"
        [ "$(cat "/proc/$pid/comm")" = sshd ] && in_ssh=true
        pid=$parent
    done
    if $in_ssh && printf '%s\n' "$*" | grep -Eq -- "$pattern" &&
        /usr/bin/mv "$trigger" "$trigger.fired" 2>/dev/null; then
        echo "$when: $(basename "$real") $*" >>"$trigger.fired"
        if [ "$when" = after ]; then
            "$real" "$@"
            echo "rc=$?" >>"$trigger.fired"
        fi
        echo "killed:$chain" >>"$trigger.fired"
        sync
        # shellcheck disable=SC2086
        kill -KILL $chain
        exit 137
    fi
fi
exec "$real" "$@"
"""


@dataclass
class Cut:
    node: Node
    command: str
    pattern: str
    when: str

    @property
    def _fired_path(self) -> Path:
        return self.node.rootdir / TRIGGER_DIR / f"{self.command}.fired"

    def fired(self) -> str:
        """What the wrapper recorded when it cut the session ('' if it never did)."""
        path = self._fired_path
        return path.read_text() if path.exists() else ""


@contextlib.contextmanager
def cut_session(tb: Testbed, node: Node | str, command: str, pattern: str, when: str) -> Iterator[Cut]:
    """Arm a one-shot cut at the first matching call of `command` on `node` (see the module doc)."""
    if when not in ("before", "after"):
        raise ValueError(f"when must be 'before' or 'after', not {when!r}")
    re.compile(pattern)  # a typo should fail here, not silently never match on the node
    node = tb.nodes[node] if isinstance(node, str) else node
    real = tb.ssh(node, f"command -v {command}").stdout.strip()
    if not real.startswith("/") or real.startswith(f"/{WRAPPER_DIR}/"):
        raise RuntimeError(f"{node.name}: `{command}` resolves to {real!r}; a wrapper is already there?")
    wrapper = node.rootdir / WRAPPER_DIR / command
    trigger = node.rootdir / TRIGGER_DIR / command
    cut = Cut(node, command, pattern, when)
    try:
        text = WRAPPER.replace("@REAL@", real).replace("@TRIGGER_DIR@", TRIGGER_DIR).replace("@NAME@", command)
        Testbed._write(wrapper, text, 0o755)
        Testbed._write(trigger, f"{when}\n{pattern}\n", 0o600)
        yield cut
    finally:
        for path in (wrapper, trigger, cut._fired_path):
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            (node.rootdir / TRIGGER_DIR).rmdir()
