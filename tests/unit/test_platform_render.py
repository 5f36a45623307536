"""The platform components in the GitOps tree (components/render/platform.py, through render_tree)."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import kubernetes_validate
import pytest
import yaml

from components.config import HarborConfig, load_config
from components.platform.traefik import CERT_RESOLVER
from components.render import platform
from components.render.gitops import create_only_paths, render_tree
from tests.conftest import GIT_KEY_MARKER, SSH_KEY_MARKER, TOKEN_MARKER, base_config, mesh_off_config

KUBERNETES = "1.31"
SMTP_PASSWORD = "MARKER-SMTP-PASSWORD-71c2"
TELEGRAF_KEY = "MARKER-TELEGRAF-KEY-5e90"
BACKUP_TOKEN = "MARKER-BACKUP-TOKEN-c4d8"
GIT_PASSWORD = "MARKER-GIT-PASSWORD-0b3f"
COMPONENT_MARKERS = {"smtp": SMTP_PASSWORD, "telegraf": TELEGRAF_KEY, "backup": BACKUP_TOKEN}
NAMES = ("traefik", "sealed-secrets", "infracheck", "telegraf", "smtp", "backup", "longhorn")
# Kinds whose schemas kubernetes-validate ships; custom resources are checked by hand below.
CORE_API_VERSIONS = {"v1", "networking.k8s.io/v1"}
# Where each chart takes the main container's resources (read off each chart's values.yaml).
RESOURCES_KEY = {
    "traefik": ("resources",),
    "sealed-secrets": ("resources",),
    "infracheck": ("deployment", "resources"),
    "telegraf": ("resources",),
    "smtp": ("resources",),
    "backup": ("resources",),
    "longhorn": ("longhornManager", "resources"),
}


def full_raw(**components: Any) -> dict[str, Any]:
    """Every component on, every secret a unique marker (the k3s token too)."""
    raw = base_config(agents=2)
    raw["k3s"] = {"token": TOKEN_MARKER}
    raw["components"] = {
        "traefik": {"acmeEmail": "ops@example.org"},
        "infracheck": {"host": "health.example.org"},
        "sealedSecrets": {"enabled": True},
        "telegraf": {
            "enabled": True,
            "centralAddress": "metrics.example.net:8094",
            "caCert": "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----",
            "tlsCert": "-----BEGIN CERTIFICATE-----\nCLIENT\n-----END CERTIFICATE-----",
            "tlsKey": f"-----BEGIN PRIVATE KEY-----\n{TELEGRAF_KEY}\n-----END PRIVATE KEY-----",
        },
        "smtp": {
            "enabled": True,
            "relayHost": "[smtp.example.net]:587",
            "relayUsername": "relay@example.org",
            "relayPassword": SMTP_PASSWORD,
            "allowedSenderDomains": ["example.org", "mail.example.org"],
        },
        "backup": {
            "enabled": True,
            "schedule": "30 2 * * *",
            "repositoryUrl": "https://backups.example.net:8443",
            "collectionId": "harbor-prod",
            "token": BACKUP_TOKEN,
        },
        "longhorn": {"enabled": True},
    }
    for name, settings in components.items():
        raw["components"][name] = {**raw["components"].get(name, {}), **settings}
    return raw


def full_config(**components: Any) -> HarborConfig:
    return load_config(full_raw(**components))


def https_full_config() -> HarborConfig:
    raw = full_raw()
    raw["gitops"] = {"repoUrl": "https://git.example.org/ops/cluster.git", "username": "bot", "password": GIT_PASSWORD}
    return load_config(raw)


def documents(tree: dict[str, str]) -> dict[str, dict[str, Any]]:
    parsed = {}
    for path, text in tree.items():
        if path.endswith(".yaml"):
            docs = [doc for doc in yaml.safe_load_all(text) if doc is not None]
            assert len(docs) == 1, path
            parsed[path] = docs[0]
    return parsed


def applications(config: HarborConfig) -> dict[str, dict[str, Any]]:
    docs = documents(render_tree(config))
    prefix = f"{config.gitops.path}/apps/platform/"
    return {path[len(prefix) : -len(".yaml")]: doc for path, doc in docs.items() if path.startswith(prefix)}


def values(config: HarborConfig, name: str) -> dict[str, Any]:
    return applications(config)[name]["spec"]["sources"][0]["helm"]["valuesObject"]


def component_objects(config: HarborConfig, name: str) -> list[dict[str, Any]]:
    prefix = f"{config.gitops.path}/components/{name}/"
    return [doc for path, doc in documents(render_tree(config)).items() if path.startswith(prefix)]


def policies(config: HarborConfig, name: str) -> list[dict[str, Any]]:
    return [doc for doc in component_objects(config, name) if doc["kind"] == "NetworkPolicy"]


def egress_ports(config: HarborConfig, name: str) -> set[tuple[str, int]]:
    return {
        (port["protocol"], port["port"])
        for policy in policies(config, name)
        for rule in policy["spec"].get("egress", [])
        for port in rule.get("ports", [])
    }


def fake_sealed_secret(spec: platform.SecretSpec) -> str:
    """What the sealer hands back: encrypted values only (here stand-ins), never the plaintext."""
    return yaml.safe_dump(
        {
            "apiVersion": "bitnami.com/v1alpha1",
            "kind": "SealedSecret",
            "metadata": {"name": spec.name, "namespace": spec.namespace},
            "spec": {
                "encryptedData": {key: f"AgB{index}sealed==" for index, key in enumerate(spec.data)},
                "template": {"metadata": {"name": spec.name, "namespace": spec.namespace}, "type": "Opaque"},
            },
        }
    )


def sealed_files(config: HarborConfig) -> dict[str, str]:
    return {spec.path: fake_sealed_secret(spec) for spec in platform.secret_specs(config)}


# --- every file ----------------------------------------------------------------------------------


def test_every_file_parses_and_core_kinds_validate_against_kubernetes() -> None:
    config = full_config()
    tree = render_tree(config, sealed=sealed_files(config))
    validated: dict[str, int] = {}
    for path, doc in documents(tree).items():
        assert tree[path].startswith("# Managed by Space Harbor"), path
        if doc["apiVersion"] in CORE_API_VERSIONS:
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)
            validated[doc["kind"]] = validated.get(doc["kind"], 0) + 1
    assert validated.keys() == {"Namespace", "NetworkPolicy", "ConfigMap"}
    # one Namespace per component with a namespace of its own: all but sealed-secrets (kube-system)
    assert validated["Namespace"] == len(NAMES) - 1


def test_kubernetes_validate_catches_a_broken_network_policy() -> None:
    """The schema check above is real: a policy of the wrong shape fails it."""
    policy = copy.deepcopy(policies(full_config(), "traefik")[0])
    policy["spec"]["podSelector"] = "everything"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(policy, KUBERNETES, strict=True)


def test_tree_is_deterministic() -> None:
    config = full_config()
    assert render_tree(config) == render_tree(full_config())


# --- Applications -----------------------------------------------------------------------------------

_SEMVER = re.compile(r"^v?\d+\.\d+\.\d+$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@pytest.mark.parametrize("branch", ["main", "production"])
def test_applications_are_pinned_and_point_at_their_folder(branch: str) -> None:
    raw = full_raw()
    raw["gitops"] |= {"branch": branch, "path": "k8s/harbor"}
    config = load_config(raw)
    apps = applications(config)
    assert sorted(apps) == sorted(NAMES)
    tree = render_tree(config)
    for name, app in apps.items():
        assert (app["apiVersion"], app["kind"]) == ("argoproj.io/v1alpha1", "Application")
        assert app["metadata"] == app["metadata"] | {"name": name, "namespace": "argocd"}
        assert "resources-finalizer.argocd.argoproj.io" in app["metadata"]["finalizers"]
        spec = app["spec"]
        assert spec["project"] == "infrastructure"
        assert "source" not in spec
        chart, folder = spec["sources"]
        ref = platform.chart_refs()[name]
        assert chart["repoURL"] == ref.repo_url and chart["targetRevision"] == ref.version
        if "chart" in chart:
            assert _SEMVER.match(chart["targetRevision"]), name
        else:
            # a chart from a git folder: only a commit pins it
            assert _COMMIT.match(chart["targetRevision"]), name
        assert isinstance(chart["helm"]["valuesObject"], dict) and chart["helm"]["releaseName"]
        assert folder == {
            "repoURL": "git@git.example.org:ops/cluster.git",
            "targetRevision": branch,
            "path": f"k8s/harbor/components/{name}",
        }
        # the folder it reads is in the tree, and not empty
        assert any(path.startswith(f"k8s/harbor/components/{name}/") for path in tree)
        assert spec["destination"]["server"] == "https://kubernetes.default.svc"
        assert re.match(r"^[a-z0-9-]+$", spec["destination"]["namespace"])
        assert "ServerSideApply=true" in spec["syncPolicy"]["syncOptions"]
        if name in ("infracheck", "telegraf", "smtp", "backup"):
            # their IngressRoute or SealedSecret needs a CRD that another component brings
            assert "SkipDryRunOnMissingResource=true" in spec["syncPolicy"]["syncOptions"]


def test_every_component_folder_belongs_to_an_application() -> None:
    config = full_config()
    folders = {path.split("/")[2] for path in render_tree(config) if path.startswith("cluster/components/")}
    assert folders == set(applications(config))


def test_versions_live_in_versions_yaml_only() -> None:
    assert set(platform.chart_refs()) == set(NAMES)
    for ref in platform.chart_refs().values():
        assert ref.version not in {"", "HEAD", "latest", "*"} and "*" not in ref.version


def test_auto_sync_toggles_sync_policy() -> None:
    on_click = applications(full_config())
    assert all("automated" not in app["spec"]["syncPolicy"] for app in on_click.values())
    raw = full_raw()
    raw["gitops"]["autoSync"] = True
    automatic = applications(load_config(raw))
    for name, app in automatic.items():
        policy = app["spec"]["syncPolicy"]
        assert policy["automated"] == {"prune": True, "selfHeal": True}, name
        assert policy["syncOptions"] == on_click[name]["spec"]["syncPolicy"]["syncOptions"]


# --- enabling and disabling ----------------------------------------------------------------------

# Config key per component, and what must be off with it: infracheck is served through Traefik, and
# the components with secrets get them as SealedSecrets.
CONFIG_KEY = {
    "traefik": "traefik",
    "sealed-secrets": "sealedSecrets",
    "infracheck": "infracheck",
    "telegraf": "telegraf",
    "smtp": "smtp",
    "backup": "backup",
    "longhorn": "longhorn",
}
DEPENDANTS = {"traefik": ["infracheck"], "sealed-secrets": ["telegraf", "smtp", "backup"]}


def _without(raw: dict[str, Any], name: str) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    for each in [name, *DEPENDANTS.get(name, [])]:
        raw["components"][CONFIG_KEY[each]]["enabled"] = False
    return raw


# Beside its Application and folder, a component may bring a project for its users' objects.
_COMPONENT_PROJECTS = {"backup": "cluster/apps/projects/backups.yaml"}


def _owned(path: str, name: str) -> bool:
    return (
        path == f"cluster/apps/platform/{name}.yaml"
        or path.startswith(f"cluster/components/{name}/")
        or path == _COMPONENT_PROJECTS.get(name)
    )


@pytest.mark.parametrize("name", NAMES)
def test_a_disabled_component_has_no_application_and_no_files(name: str) -> None:
    config = load_config(_without(full_raw(), name))
    tree = render_tree(config, sealed=sealed_files(config))
    assert not [path for path in tree if _owned(path, name)]
    assert name not in applications(config)
    assert all(spec.component != name for spec in platform.secret_specs(config))


@pytest.mark.parametrize("name", NAMES)
def test_enabling_a_component_adds_exactly_its_files(name: str) -> None:
    # the baseline lacks the component's dependants too, so that only `name` changes
    raw = full_raw()
    for dependant in DEPENDANTS.get(name, []):
        raw = _without(raw, dependant)
    before_config, after_config = load_config(_without(raw, name)), load_config(raw)
    before = render_tree(before_config, sealed=sealed_files(before_config))
    after = render_tree(after_config, sealed=sealed_files(after_config))
    added = set(after) - set(before)
    assert added and all(_owned(path, name) for path in added)
    assert f"cluster/apps/platform/{name}.yaml" in added
    assert set(before) <= set(after)
    # nothing else changes but the README, which lists the files
    assert {path for path in before if before[path] != after[path]} == {"cluster/README.md"}


def test_default_components_are_traefik_sealed_secrets_and_infracheck() -> None:
    assert sorted(applications(load_config(base_config()))) == ["infracheck", "sealed-secrets", "traefik"]


# --- secrets -------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [full_config, https_full_config])
def test_no_secret_value_and_no_secret_kind_in_the_tree(make) -> None:
    config = make()
    tree = render_tree(config, sealed=sealed_files(config))
    text = "".join(tree.values())
    for marker in [*COMPONENT_MARKERS.values(), SSH_KEY_MARKER, GIT_KEY_MARKER, TOKEN_MARKER, GIT_PASSWORD]:
        assert marker not in text, marker
    assert all(doc["kind"] != "Secret" for doc in documents(tree).values())
    assert not re.search(r"^kind:\s*Secret\s*$", text, flags=re.MULTILINE)
    # the specs are where the component secrets go, and only those
    data = "".join(value for spec in platform.secret_specs(config) for value in spec.data.values())
    for marker in COMPONENT_MARKERS.values():
        assert marker in data
    for marker in (SSH_KEY_MARKER, GIT_KEY_MARKER, TOKEN_MARKER, GIT_PASSWORD):
        assert marker not in data


def test_secret_specs_name_what_the_charts_reference() -> None:
    config = full_config()
    specs = {spec.component: spec for spec in platform.secret_specs(config)}
    assert sorted(specs) == ["backup", "smtp", "telegraf"]
    apps = applications(config)
    for component, spec in specs.items():
        assert spec.path == f"cluster/components/{component}/sealedsecret-{spec.name}.yaml"
        assert spec.namespace == apps[component]["spec"]["destination"]["namespace"]
        assert COMPONENT_MARKERS[component] in "".join(spec.data.values())
        # a spec printed in a log or an error does not show the value
        assert COMPONENT_MARKERS[component] not in repr(spec)
    assert values(config, "smtp")["existingSecret"] == specs["smtp"].name
    assert specs["smtp"].data.keys() == {"RELAYHOST_PASSWORD"}
    projected = values(config, "telegraf")["volumes"][0]["projected"]["sources"]
    assert {"secret": {"name": specs["telegraf"].name}} in projected
    assert specs["telegraf"].data.keys() == {"tls.key"}
    assert specs["backup"].data.keys() == {"token"}
    assert f"secretName: {specs['backup'].name}" in render_tree(config)["cluster/README.md"]


def test_sealed_files_join_the_tree_and_the_owned_list() -> None:
    config = full_config()
    sealed = sealed_files(config)
    tree = render_tree(config, sealed=sealed)
    readme = tree["cluster/README.md"]
    listed = {line[3:-1] for line in readme.splitlines() if line.startswith("- `")}
    assert set(sealed) <= set(tree)
    assert listed == set(tree) - create_only_paths(config)
    for path, text in sealed.items():
        assert yaml.safe_load(tree[path]) == yaml.safe_load(text)
    # without them the tree simply lacks them
    assert not set(sealed) & set(render_tree(config))


def test_sealed_files_are_refused_unless_they_are_the_expected_sealed_secrets() -> None:
    config = full_config()
    spec = platform.secret_specs(config)[0]
    good = fake_sealed_secret(spec)
    with pytest.raises(ValueError, match="no enabled component"):
        render_tree(config, sealed={"cluster/components/smtp/other.yaml": good})
    plain = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": spec.name, "namespace": spec.namespace}}
    with pytest.raises(ValueError, match="is not one SealedSecret"):
        render_tree(config, sealed={spec.path: yaml.safe_dump(plain)})
    with pytest.raises(ValueError, match="is not one SealedSecret"):
        render_tree(config, sealed={spec.path: good + "---\n" + good})
    wrong = good.replace(f"name: {spec.name}", "name: someone-else")
    with pytest.raises(ValueError, match="seals"):
        render_tree(config, sealed={spec.path: wrong})


def test_no_secret_specs_without_secrets() -> None:
    raw = full_raw(telegraf={"enabled": False}, backup={"enabled": False})
    del raw["components"]["smtp"]["relayUsername"], raw["components"]["smtp"]["relayPassword"]
    config = load_config(raw)
    assert platform.secret_specs(config) == []
    assert "existingSecret" not in values(config, "smtp")


# --- network policies ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_every_component_starts_from_a_default_deny(name: str) -> None:
    config = full_config()
    namespace = applications(config)[name]["spec"]["destination"]["namespace"]
    found = policies(config, name)
    assert all(policy["metadata"]["namespace"] == namespace for policy in found)
    denies = [
        policy
        for policy in found
        if set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        and not policy["spec"].get("ingress")
        and not policy["spec"].get("egress")
    ]
    assert len(denies) == 1
    selector = denies[0]["spec"]["podSelector"]
    if namespace == "kube-system":
        # never the whole of kube-system: CoreDNS and k3s's own pods live there
        assert selector["matchLabels"]["app.kubernetes.io/name"] == "sealed-secrets"
    else:
        assert selector == {}
    # the openings apply to the very pods the deny selects
    assert all(policy["spec"]["podSelector"] == selector for policy in found)


@pytest.mark.parametrize("name", NAMES)
def test_every_component_may_resolve_names(name: str) -> None:
    rules = [rule for policy in policies(full_config(), name) for rule in policy["spec"].get("egress", [])]
    dns = [rule for rule in rules if {"protocol": "UDP", "port": 53} in rule.get("ports", [])]
    assert dns
    peer = dns[0]["to"][0]
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "kube-system"}


@pytest.mark.parametrize(("make", "servers"), [(full_config, ["10.160.0.1/32"]), (None, ["172.16.0.10/32"])])
def test_api_server_egress_reaches_the_servers_on_6443(make, servers) -> None:
    config = make() if make else load_config(mesh_off_config())
    for name in ("traefik", "sealed-secrets", "backup"):
        if name not in applications(config):
            continue
        rules = [rule for policy in policies(config, name) for rule in policy["spec"].get("egress", [])]
        api = [rule for rule in rules if {"protocol": "TCP", "port": 6443} in rule.get("ports", [])]
        assert [peer["ipBlock"]["cidr"] for peer in api[0]["to"]] == servers, name


def test_api_server_egress_falls_back_to_the_port_for_dns_named_nodes() -> None:
    raw = mesh_off_config()
    raw["firewall"] = {"enabled": False}
    raw["nodes"][0]["privateAddress"] = "server-1.internal.example.org"
    rules = [rule for policy in policies(load_config(raw), "traefik") for rule in policy["spec"].get("egress", [])]
    api = [rule for rule in rules if {"protocol": "TCP", "port": 6443} in rule.get("ports", [])]
    assert api == [{"ports": [{"protocol": "TCP", "port": 6443}]}]


def test_components_without_api_access_get_none() -> None:
    for name in ("infracheck", "smtp"):
        assert ("TCP", 6443) not in egress_ports(full_config(), name)


# --- each component ------------------------------------------------------------------------------


def test_traefik_binds_host_ports_on_one_node_and_keeps_acme_json() -> None:
    traefik = values(full_config(), "traefik")
    assert traefik["ports"]["web"]["hostPort"] == 80
    assert traefik["ports"]["websecure"]["hostPort"] == 443
    assert traefik.get("hostNetwork", False) is False
    assert traefik["deployment"] == {"kind": "Deployment", "replicas": 1}
    assert traefik["updateStrategy"]["type"] == "Recreate"
    assert traefik["nodeSelector"] == {"kubernetes.io/hostname": "server-1"}
    assert traefik["api"]["dashboard"] is False
    assert traefik["ingressRoute"]["dashboard"]["enabled"] is False
    assert traefik["service"]["spec"]["type"] != "LoadBalancer"
    acme = traefik["certificatesResolvers"][CERT_RESOLVER]["acme"]
    assert acme["email"] == "ops@example.org"
    assert traefik["persistence"]["enabled"] is True
    assert acme["storage"].startswith(traefik["persistence"]["path"] + "/")
    # anyone may reach the entry points the host ports lead to
    ingress = [rule for policy in policies(full_config(), "traefik") for rule in policy["spec"].get("ingress", [])]
    assert ingress == [{"ports": [{"protocol": "TCP", "port": 8000}, {"protocol": "TCP", "port": 8443}]}]


def test_traefik_node_can_be_chosen() -> None:
    assert values(full_config(traefik={"node": "agent-2"}), "traefik")["nodeSelector"] == {
        "kubernetes.io/hostname": "agent-2"
    }


def test_acme_staging_switches_the_ca_server() -> None:
    def ca_server(config: HarborConfig) -> str:
        return values(config, "traefik")["certificatesResolvers"][CERT_RESOLVER]["acme"]["caServer"]

    assert ca_server(full_config()) == "https://acme-v02.api.letsencrypt.org/directory"
    staging = full_config(traefik={"acmeStaging": True})
    assert ca_server(staging) == "https://acme-staging-v02.api.letsencrypt.org/directory"
    assert "staging" in render_tree(staging)["cluster/README.md"]


def test_infracheck_is_served_over_https_through_traefik() -> None:
    config = full_config(infracheck={"host": "status.example.org"})
    (route,) = [doc for doc in component_objects(config, "infracheck") if doc["kind"] == "IngressRoute"]
    assert route["apiVersion"] == "traefik.io/v1alpha1"
    assert route["spec"]["entryPoints"] == ["websecure"]
    assert route["spec"]["routes"][0]["match"] == "Host(`status.example.org`)"
    assert route["spec"]["routes"][0]["services"] == [{"name": "infracheck-http", "port": 80}]
    # the resolver it names is the one Traefik defines
    assert route["spec"]["tls"]["certResolver"] in values(config, "traefik")["certificatesResolvers"]
    infracheck = values(config, "infracheck")
    assert infracheck["ingress"]["enabled"] is False  # the chart's own route uses an API Traefik 3 dropped
    assert applications(config)["infracheck"]["spec"]["sources"][0]["helm"]["releaseName"] == "infracheck"
    allowed = [rule for policy in policies(config, "infracheck") for rule in policy["spec"].get("ingress", [])]
    assert allowed == [
        {
            "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "traefik"}}}],
            "ports": [{"protocol": "TCP", "port": 8000}],
        }
    ]
    assert "https://status.example.org/health/" in render_tree(config)["cluster/README.md"]


def test_infracheck_checks_disk_ram_load_and_the_domain_certificate() -> None:
    configured = values(full_config(), "infracheck")["checks"]["configured"]
    checks = {name: json.loads(text) for name, text in configured.items()}
    types = {check["type"] for check in checks.values()}
    assert {"disk-space", "free-ram", "tls"} <= types
    assert any(kind.startswith("load-average") for kind in types)
    (tls,) = [check for check in checks.values() if check["type"] == "tls"]
    assert tls["input"]["domain"] == "example.org"
    assert all(re.match(r"^[-._a-zA-Z0-9]+$", name) for name in checks)  # ConfigMap keys
    assert ("TCP", 443) in egress_ports(full_config(), "infracheck")


def test_telegraf_forwards_to_the_central_address_over_tls() -> None:
    config = full_config()
    telegraf = values(config, "telegraf")
    (output,) = telegraf["config"]["outputs"]
    writer = output["socket_writer"]
    assert writer["address"] == "tcp://metrics.example.net:8094"
    mount = telegraf["mountPoints"][0]
    assert mount["name"] == telegraf["volumes"][0]["name"] and mount["readOnly"] is True
    for key in ("tls_ca", "tls_cert", "tls_key"):
        assert writer[key].startswith(mount["mountPath"] + "/")
    (certs,) = [doc for doc in component_objects(config, "telegraf") if doc["kind"] == "ConfigMap"]
    assert {"configMap": {"name": certs["metadata"]["name"]}} in telegraf["volumes"][0]["projected"]["sources"]
    assert "CA" in certs["data"]["ca.crt"] and "CLIENT" in certs["data"]["tls.crt"]
    assert ("TCP", 8094) in egress_ports(config, "telegraf")
    assert ("TCP", 10250) in egress_ports(config, "telegraf")
    # an address with the scheme already is taken as it is
    other = values(full_config(telegraf={"centralAddress": "tcp://10.0.0.9:9000"}), "telegraf")
    assert other["config"]["outputs"][0]["socket_writer"]["address"] == "tcp://10.0.0.9:9000"


def test_smtp_relays_through_the_relay_host() -> None:
    config = full_config()
    general = values(config, "smtp")["config"]["general"]
    assert general == {
        "RELAYHOST": "[smtp.example.net]:587",
        "ALLOWED_SENDER_DOMAINS": "example.org mail.example.org",
        "RELAYHOST_USERNAME": "relay@example.org",
    }
    assert values(config, "smtp")["recreateOnRedeploy"] is False
    assert ("TCP", 587) in egress_ports(config, "smtp")
    bare = full_config(smtp={"relayHost": "relay.example.net", "allowedSenderDomains": []})
    assert ("TCP", 25) in egress_ports(bare, "smtp")
    # without a list, the base domain may send
    assert values(bare, "smtp")["config"]["general"]["ALLOWED_SENDER_DOMAINS"] == "example.org"


def test_backup_controller_and_its_target() -> None:
    config = full_config()
    backup = values(config, "backup")
    assert backup["redis"]["deploy"] is False and backup["replicas"] == 1
    assert ("TCP", 8443) in egress_ports(config, "backup")
    readme = render_tree(config)["cluster/README.md"]
    for text in ("30 2 * * *", "harbor-prod", "https://backups.example.net:8443"):
        assert text in readme
    plain = full_config(backup={"repositoryUrl": "http://backups.internal"})
    assert ("TCP", 80) in egress_ports(plain, "backup")


def test_sealed_secrets_keeps_the_name_kubeseal_expects_and_adopts_our_key() -> None:
    config = full_config()
    app = applications(config)["sealed-secrets"]
    assert app["spec"]["destination"]["namespace"] == "kube-system"
    sealed = values(config, "sealed-secrets")
    assert sealed["fullnameOverride"] == "sealed-secrets-controller"
    assert sealed["keyrenewperiod"] == "0"
    # its policies select the controller the chart labels with its name and release
    selector = policies(config, "sealed-secrets")[0]["spec"]["podSelector"]["matchLabels"]
    assert selector["app.kubernetes.io/instance"] == app["spec"]["sources"][0]["helm"]["releaseName"]


@pytest.mark.parametrize("name", NAMES)
def test_resources_fit_a_small_vps(name: str) -> None:
    node: Any = values(full_config(), name)
    for key in RESOURCES_KEY[name]:
        node = node[key]
    assert set(node) == {"requests", "limits"}
    assert set(node["requests"]) == set(node["limits"]) == {"cpu", "memory"}
    limit = node["limits"]["memory"]
    assert limit.endswith("Mi") and int(limit[:-2]) <= 512
