"""The project fence: admission policies that keep Argo CD to the users' projects and the platform's own AppProjects.

The root Application syncs everything under `<path>/apps`, `apps/user/` included, in a project that
may create Applications and AppProjects in `argocd`. Without this fence, whoever may commit under
`apps/user/` could commit an Application in project `infrastructure` (which may create anything),
or an AppProject of their own, and step over the `applications` project's fence and the Pod Security
rule. Argo CD's application controller is the one that writes them, so two ValidatingAdmissionPolicies
judge exactly that user's CREATEs and UPDATEs:

- an Application is one of this stack's platform Applications or the root, exactly as Space Harbor
  renders them (same name and same spec), or it names a project meant for users;
- an Application's operation deploys its spec: no sources or manifests of the operation's own;
- an AppProject is one of the platform's, exactly as rendered; no other.

Exactly, not by name alone: when two manifests under `<path>/apps` name the same object, Argo CD
applies the last one, and `apps/user/` comes after `apps/platform/`. A copy of `traefik.yaml` under
`apps/user/` with other sources would otherwise take the platform's place, and its project.

The names are this stack's: a disabled component's name is free for a user's Application, which then
gets a user's project like any other. An UPDATE that keeps the spec passes the first and last rules:
the controller records status, syncs and removes finalizers that way, and it must do so for the
Application of a component just disabled (which it deletes once the root has synced the commit), for
a platform Application whose rendering this run changed, and for one an admin made with kubectl.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from components.config import HarborConfig
from components.render.admission import controller_condition, forbidden, validating_policy
from components.render.gitops import (
    ARGOCD_NAMESPACE,
    ROOT_APPLICATION,
    USER_README,
    project_objects,
    render_root_application,
    user_projects,
)
from components.render.manifests import repo_path
from components.render.platform import render_application

APPLICATIONS_POLICY = "space-harbor-argocd-applications"
PROJECTS_POLICY = "space-harbor-argocd-projects"
# The folder of users' Applications: the one of the README Space Harbor writes there once.
USER_FOLDER = posixpath.dirname(USER_README)


@dataclass(frozen=True)
class ProjectFenceArgs:
    """What the fence needs: whose writes it judges, the platform's objects as rendered, the users' projects."""

    controller_username: str
    # name -> spec, as the GitOps tree (or, for the root, Pulumi) writes them
    platform_applications: Mapping[str, Mapping[str, Any]]
    platform_projects: Mapping[str, Mapping[str, Any]]
    user_projects: tuple[str, ...]
    # `<gitops.path>/apps/user`, for the refusals' wording
    user_folder: str


def project_fence_args(config: HarborConfig, controller_username: str) -> ProjectFenceArgs:
    """The fence of this stack: its enabled components' Applications, the root, and the projects it renders."""
    applications = {
        component.name: render_application(config, component)["spec"] for component in config.enabled_components()
    }
    root = render_root_application(config)
    applications[root["metadata"]["name"]] = root["spec"]
    return ProjectFenceArgs(
        controller_username=controller_username,
        platform_applications=dict(sorted(applications.items())),
        platform_projects={name: project["spec"] for name, project in project_objects(config).items()},
        user_projects=tuple(user_projects(config)),
        user_folder=repo_path(config, USER_FOLDER),
    )


def cel_literal(value: Any) -> str:
    """`value` (JSON data) as a CEL literal: each map value and list item wrapped in dyn(), since the
    API server's CEL wants every literal list and map homogeneous; strings and numbers as JSON spells them."""
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(key))}: dyn({cel_literal(item)})" for key, item in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(f"dyn({cel_literal(item)})" for item in value) + "]"
    return json.dumps(value)


def _names(names: Any) -> str:
    return ", ".join(names)


def application_refusal(args: ProjectFenceArgs) -> str:
    """The fixed part of the refusal of an Application in another project: what to change, and where."""
    projects = " or ".join(args.user_projects)
    return (
        f"an Application under {args.user_folder} must name project {projects} "
        f"(Space Harbor's project fence): set its spec.project"
    )


def platform_copy_refusal(args: ProjectFenceArgs) -> str:
    return (
        "is the name of one of the platform's own Applications, which Argo CD may apply only as Space Harbor "
        f"renders it (Space Harbor's project fence): give yours another name in {args.user_folder}"
    )


def project_refusal(args: ProjectFenceArgs) -> str:
    return (
        f"Argo CD may apply only the platform's own AppProjects ({_names(args.platform_projects)}), as Space "
        f"Harbor renders them (Space Harbor's project fence): remove it from {args.user_folder}; your "
        f"Applications name project {' or '.join(args.user_projects)}"
    )


def _match(resource: str) -> dict[str, Any]:
    return {
        # A PATCH (client- or server-side apply) reaches admission as CREATE or UPDATE. The CRDs have
        # no status subresource: the controller's status writes are UPDATEs of the object itself.
        "resourceRules": [
            {
                "apiGroups": ["argoproj.io"],
                "apiVersions": ["*"],
                "operations": ["CREATE", "UPDATE"],
                "resources": [resource],
            }
        ],
        "matchPolicy": "Equivalent",
    }


def _rendered_variables(objects: Mapping[str, Mapping[str, Any]]) -> list[dict[str, str]]:
    return [
        {"name": "rendered", "expression": cel_literal(dict(objects))},
        {
            "name": "platform",
            "expression": f"object.metadata.namespace == {json.dumps(ARGOCD_NAMESPACE)}"
            " && object.metadata.name in variables.rendered",
        },
        {
            "name": "asRendered",
            "expression": "variables.platform && dyn(object.spec) == variables.rendered[object.metadata.name]",
        },
    ]


def operation_refusal(args: ProjectFenceArgs) -> str:
    return (
        "Argo CD may start a sync only of the Application's own spec: no operation.sync.manifests, and "
        "operation.sync.source or sources only as in the spec (Space Harbor's project fence): remove the "
        f"operation from its file in {args.user_folder}"
    )


# The spec is what an Application deploys; an UPDATE that keeps it (status, finalizers, annotations)
# widens nothing, whatever the Application's project.
SPEC_KEPT = "request.operation == 'UPDATE' && object.spec == oldObject.spec"
# An operation deploys the spec unless it names sources or manifests of its own (a rollback does, a
# manual "sync local manifests" does; a file under apps/user could). The controller's own automated
# syncs name none, or the spec's own. dyn(): the two sides have different schema types, one shape.
RUNS_ITS_SPEC = (
    "!has(object.operation) || !has(object.operation.sync) || ("
    "!has(object.operation.sync.manifests)"
    " && (!has(object.operation.sync.source)"
    " || (has(object.spec.source) && dyn(object.operation.sync.source) == dyn(object.spec.source)))"
    " && (!has(object.operation.sync.sources)"
    " || (has(object.spec.sources) && dyn(object.operation.sync.sources) == dyn(object.spec.sources))))"
)
# An operation already stored (an admin's rollback, say) while the controller records its progress.
OPERATION_KEPT = (
    "request.operation == 'UPDATE' && has(object.operation) && has(oldObject.operation)"
    " && object.operation == oldObject.operation"
)


def render_applications_policy(args: ProjectFenceArgs) -> dict[str, Any]:
    """Applications by the controller: the platform's as rendered, else in a project meant for users;
    and no operation that deploys anything but the spec."""
    assert ROOT_APPLICATION in args.platform_applications, "the root's own status writes must pass"
    return validating_policy(
        APPLICATIONS_POLICY,
        match=_match("applications"),
        conditions=[controller_condition(args.controller_username)],
        variables=[
            *_rendered_variables(args.platform_applications),
            {"name": "specKept", "expression": SPEC_KEPT},
            {"name": "runsItsSpec", "expression": RUNS_ITS_SPEC},
            {"name": "operationKept", "expression": OPERATION_KEPT},
        ],
        validations=[
            forbidden(
                "variables.specKept || !variables.platform || variables.asRendered",
                f"an Application {platform_copy_refusal(args)}",
                f"'Application ' + object.metadata.name + ' ' + {json.dumps(platform_copy_refusal(args))}",
            ),
            forbidden(
                "variables.specKept || variables.platform"
                f" || object.spec.project in {json.dumps(list(args.user_projects))}",
                application_refusal(args),
                "'Application ' + object.metadata.name + ' names project ' + object.spec.project"
                f" + ': ' + {json.dumps(application_refusal(args))}",
            ),
            forbidden(
                "variables.operationKept || variables.runsItsSpec",
                operation_refusal(args),
                f"'Application ' + object.metadata.name + ': ' + {json.dumps(operation_refusal(args))}",
            ),
        ],
    )


def render_projects_policy(args: ProjectFenceArgs) -> dict[str, Any]:
    """AppProjects by the controller: the platform's own, as rendered; nothing else."""
    return validating_policy(
        PROJECTS_POLICY,
        match=_match("appprojects"),
        conditions=[controller_condition(args.controller_username)],
        variables=[*_rendered_variables(args.platform_projects), {"name": "specKept", "expression": SPEC_KEPT}],
        validations=[
            forbidden(
                "variables.specKept || variables.asRendered",
                project_refusal(args),
                f"'AppProject ' + object.metadata.name + ': ' + {json.dumps(project_refusal(args))}",
            )
        ],
    )
