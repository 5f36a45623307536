"""The built CLI and our stand-in language host run a small Python project offline, as a user would.

No testbed: a project in a temporary folder whose program declares a dynamic resource (the
dynamic-provider plugin bundled next to `pulumi`) and stack outputs read from config, one of them
a secret set with `pulumi config set --secret`. It goes through stack init, preview, up, a no-change preview
and destroy, with the passphrase secrets provider and a local file backend.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tests.realengine.cli import ROOT, Pulumi

pytestmark = pytest.mark.realengine

PROGRAM = textwrap.dedent(
    """\
    import pulumi
    from pulumi.dynamic import CreateResult, Resource, ResourceProvider


    class Greeter(ResourceProvider):
        def create(self, props):
            return CreateResult(id_="greeting", outs={"said": "hello " + props["name"]})


    class Greeting(Resource):
        said: pulumi.Output[str]

        def __init__(self, name, props, opts=None):
            super().__init__(Greeter(), name, {"said": None, **props}, opts)


    config = pulumi.Config()
    greeting = Greeting("greeting", {"name": config.require("name")})
    pulumi.export("said", greeting.said)
    pulumi.export("tokenLength", config.require_secret("token").apply(len))
    # The SDK learns which config keys are secret from the language host.
    pulumi.export("tokenIsSecretConfig", pulumi.runtime.is_config_secret("offline-smoke:token"))
    """
)


@pytest.fixture
def project(tmp_path: Path) -> Pulumi:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "Pulumi.yaml").write_text(
        "name: offline-smoke\nruntime:\n  name: python\n  options:\n    toolchain: pip\n    virtualenv: .venv\n"
    )
    (folder / "__main__.py").write_text(PROGRAM)
    # The repository's virtualenv has the pinned pulumi SDK.
    (folder / ".venv").symlink_to(ROOT / ".venv")
    return Pulumi(folder, tmp_path / "state", netns=None)


def test_a_dynamic_resource_and_a_secret_go_through_up_and_destroy(project: Pulumi) -> None:
    about = project.run("about")
    assert "stand-in for pulumi-language-python" in about.output

    project.stack_init("dev")
    project.run("config", "set", "name", "world")
    project.run("config", "set", "--secret", "token", input="s3cr3t")
    assert "s3cr3t" not in (project.project / "Pulumi.dev.yaml").read_text()

    preview = project.run("preview")
    assert "pulumi-python:dynamic:Resource" in preview.output
    assert "+ 2 to create" in preview.output

    project.run("up", "--yes")
    outputs = json.loads(project.run("stack", "output", "--json", "--show-secrets").stdout)
    assert outputs == {"said": "hello world", "tokenLength": 6, "tokenIsSecretConfig": True}
    shown = json.loads(project.run("stack", "output", "--json").stdout)
    assert shown["tokenLength"] == "[secret]"
    greeting = next(r for r in project.resources() if r["type"] == "pulumi-python:dynamic:Resource")
    assert greeting["outputs"]["said"] == "hello world"

    project.run("preview", "--expect-no-changes")

    project.run("destroy", "--yes")
    assert project.resources() == []


def test_a_failing_program_fails_the_command_with_its_error(project: Pulumi) -> None:
    project.stack_init("dev")
    (project.project / "__main__.py").write_text('raise ValueError("the program refuses")\n')
    result = project.run("preview", check=False)
    assert result.returncode != 0
    assert "the program refuses" in result.output
