"""No node script feeds a secret through a here-string or a here-document.

bash before 5.1 (Ubuntu 20.04's, which the preflight accepts) writes every here-string and
here-document to a temporary file under $TMPDIR or /tmp, and 5.1+ still does for text larger than a
pipe buffer. The file is unlinked at once, but its blocks keep the text. A secret must reach a
command through a builtin's `printf ... |`, a bash test, or a file written 0600, never `<<<` or `<<`.

The scan reads every components/scripts/*.sh. A variable counts as secret when it is a parameter
that the program sends in a secret stdin, when its name says so (token, password, ...), or when it
is assigned from one of those.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from components.render.remote import node_script, script_payload
from tests.helpers import SCRIPTS

# The parameters that travel in a secret stdin (components/mesh.py, components/k3s.py: secret=True):
# the WireGuard file with its private key, config.yaml with the token, registry credentials and keys.
SECRET_PARAMETERS = ("HARBOR_WG_CONFIG", "HARBOR_K3S_CONFIG", "HARBOR_K3S_REGISTRIES", "HARBOR_K3S_REGISTRY_FILES")
# Secrets a script gets at run time (a ServiceAccount token, a password) by what their names say.
SECRET_NAME = re.compile(r"token|passw|secret|private|passphrase|credential", re.IGNORECASE)

_VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")
_ASSIGNMENT = re.compile(r"^\s*(?:local\s+|declare\s+(?:-\w+\s+)*)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
_HERE_STRING = re.compile(r"<<<\s*(\"(?:[^\"\\]|\\.)*\"|'[^']*'|\S+)")
_HERE_DOC = re.compile(r"<<(-?)\s*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\2")


def secret_variables(text: str) -> set[str]:
    """The secret parameters and names, and every variable assigned from one of them (to a fixpoint)."""
    names = set(SECRET_PARAMETERS) | {name for name in _VARIABLE.findall(text) if SECRET_NAME.search(name)}
    assignments = [m.groups() for line in text.splitlines() if (m := _ASSIGNMENT.match(line))]
    grown = True
    while grown:
        grown = False
        for target, value in assignments:
            if target not in names and set(_VARIABLE.findall(value)) & names:
                names.add(target)
                grown = True
    return names


def secret_redirections(text: str) -> list[str]:
    """`line N: ...` for each here-string or expanding here-document that carries a secret variable."""
    secrets = secret_variables(text)
    lines = text.splitlines()
    found = []
    index = 0
    while index < len(lines):
        line = lines[index]
        code = line.split(" #", 1)[0] if not line.lstrip().startswith("#") else ""
        for match in _HERE_STRING.finditer(code):
            used = set(_VARIABLE.findall(match.group(1))) & secrets
            if used:
                found.append(f"line {index + 1}: here-string of {', '.join(sorted(used))}")
        heredoc = _HERE_DOC.search(code.replace("<<<", "   "))
        if heredoc:
            strip_tabs, quoted, delimiter = heredoc.groups()
            body = []
            end = index + 1
            while end < len(lines) and (lines[end].lstrip("\t") if strip_tabs else lines[end]) != delimiter:
                body.append(lines[end])
                end += 1
            # A quoted delimiter expands nothing: its body is literal text.
            used = set() if quoted else set(_VARIABLE.findall("\n".join(body))) & secrets
            if used:
                found.append(f"line {index + 1}: here-document of {', '.join(sorted(used))}")
            index = end
        index += 1
    return found


@pytest.mark.parametrize("script", sorted(path.name for path in SCRIPTS.glob("*.sh")))
def test_no_secret_goes_through_a_here_string_or_a_here_document(script: str) -> None:
    assert secret_redirections((SCRIPTS / script).read_text()) == []


def test_the_secret_parameters_are_the_ones_the_scripts_read() -> None:
    # A renamed parameter would leave this scan looking for a name that no script has.
    text = "\n".join(path.read_text() for path in SCRIPTS.glob("*.sh"))
    for name in SECRET_PARAMETERS:
        assert f"${{{name}" in text or f"${name}" in text, name


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ('grep -q x <<<"$HARBOR_WG_CONFIG"', ["line 1: here-string of HARBOR_WG_CONFIG"]),
        ('cfg="${HARBOR_K3S_CONFIG:-}"\nread -r a <<< "$cfg"', ["line 2: here-string of cfg"]),
        ("cat <<EOF\ntoken: $token\nEOF", ["line 1: here-document of token"]),
        ("x=$(\n    cat <<-END\n\tpassword=${db_password}\n\tEND\n)", ["line 2: here-document of db_password"]),
        ("key=$(cat /etc/k.pem)\nsecret_copy=$key\nwc <<<$secret_copy", ["line 3: here-string of secret_copy"]),
    ],
)
def test_the_scan_finds_a_secret_fed_to_a_command_this_way(snippet: str, expected: list[str]) -> None:
    assert secret_redirections(snippet) == expected


@pytest.mark.parametrize(
    "snippet",
    [
        'mapfile -t names <<<"$listing"',
        "cat <<'EOF'\ntoken: $token\nEOF",
        "cat <<EOF\nname: $account\nEOF",
        'printf "%s\\n" "$token" | base64 -d',
        '# grep x <<<"$token" in a comment',
    ],
)
def test_the_scan_lets_the_rest_through(snippet: str) -> None:
    assert secret_redirections(snippet) == []


@pytest.mark.parametrize(
    ("config", "accepted"),
    [
        ("[Interface]\nPrivateKey = k\n", True),
        ("# rendered\n  [Interface]\nPrivateKey = k\n", True),
        ("[Peer]\nPublicKey = p\n", False),
        ("x[Interface]\n", False),
    ],
)
def test_mesh_still_tells_a_config_without_an_interface_section(config: str, accepted: bool) -> None:
    # The check that replaced mesh.sh's here-string, on its own: refused, or past it (to the tools).
    payload = script_payload(node_script("mesh.sh"), {"HARBOR_WG_INTERFACE": "wg-scan", "HARBOR_WG_CONFIG": config})
    env = {"PATH": "/nonexistent"}  # no wg, no apt-get: an accepted config stops at the tools
    result = subprocess.run(
        ["/bin/bash", "-s", "--", "apply"], input=payload, capture_output=True, text=True, env=env, timeout=30
    )
    assert result.returncode != 0
    assert ("HARBOR_WG_CONFIG has no [Interface] section" in result.stderr) is not accepted, result.stderr
