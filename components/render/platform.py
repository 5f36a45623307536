"""The platform components in the GitOps tree: pure functions, config -> {repo path: text}.

For every enabled component Space Harbor writes, under `gitops.path`:

    apps/platform/<name>.yaml         its Argo CD Application (project `infrastructure`), synced by the root
    components/<name>/*.yaml          the plain manifests beside its chart: Namespace, NetworkPolicies,
                                      IngressRoute, ConfigMaps, and the SealedSecrets the caller adds

Each Application has two sources (Argo CD multi-source): the pinned Helm chart with `helm.valuesObject`
rendered from stack config, and `<gitops.path>/components/<name>` of the cluster repo at `gitops.branch`.
Chart coordinates and versions live in one place, `manifests/gitops/versions.yaml`.

Secrets never enter the tree. `secret_specs(config)` says which Secrets the components need and
where their SealedSecret files go; the chart values only name those Secrets. The caller seals the
specs and hands the files to `render_tree(config, sealed=...)` (components/render/gitops.py).

Network: every component's pods start from a default-deny NetworkPolicy (ingress and egress) and get
only the openings listed beside it. In a namespace of its own the deny selects every pod; in
`kube-system` (Sealed Secrets, where kubeseal looks for it) it selects the controller's pods only, since
a namespace-wide deny there would cut CoreDNS and the rest of k3s off.
"""

from __future__ import annotations

import ipaddress
import json
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import yaml

from components.config import HarborConfig
from components.render.k3s import API_PORT
from components.render.manifests import HEADER, TEMPLATES, child_sync_policy, dump, load_template, repo_path

APPS_DIR = "apps/platform"
COMPONENTS_DIR = "components"
KUBE_SYSTEM = "kube-system"

# Traefik's Let's Encrypt resolver, for IngressRoutes' `tls.certResolver`.
CERT_RESOLVER = "letsencrypt"
ACME_PRODUCTION = "https://acme-v02.api.letsencrypt.org/directory"
ACME_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"
ACME_STORAGE = "/data/acme.json"
# Traefik's entry points inside the pod (chart defaults); hostPort maps the node's 80/443 onto them.
WEB_PORT, WEBSECURE_PORT = 8000, 8443

# Infracheck answers on /<prefix>/ only (`--server-path-prefix`). The prefix is in git, so it is a
# path, not a password.
INFRACHECK_PATH_PREFIX = "health"
INFRACHECK_PORT = 8000
SEALED_SECRETS_FULLNAME = "sealed-secrets-controller"  # kubeseal's default --controller-name
SEALED_SECRETS_PORT = 8080
TELEGRAF_TLS_DIR = "/etc/telegraf-tls"
SMTP_PORT = 587
KUBELET_PORT = 10250


@dataclass(frozen=True)
class SecretSpec:
    """One Secret a component needs. `data` is plaintext from config, only ever handed to the sealer."""

    component: str
    namespace: str
    name: str
    path: str  # repo-relative path of the SealedSecret file, under <gitops.path>/components/<component>/
    data: Mapping[str, str] = field(repr=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", types.MappingProxyType(dict(self.data)))


@dataclass(frozen=True)
class ChartRef:
    """Where a component's chart comes from, pinned."""

    repo_url: str
    version: str
    chart: str | None = None  # from a chart repository
    path: str | None = None  # or from a folder of a git repository


@cache
def chart_refs() -> dict[str, ChartRef]:
    """manifests/gitops/versions.yaml: component name -> pinned chart."""
    document = yaml.safe_load((TEMPLATES / "versions.yaml").read_text(encoding="utf-8"))
    refs = {}
    for name, entry in document.items():
        refs[name] = ChartRef(
            repo_url=entry["repoURL"], version=str(entry["version"]), chart=entry.get("chart"), path=entry.get("path")
        )
        assert (refs[name].chart is None) != (refs[name].path is None), f"{name}: give chart or path"
    return refs


# --- NetworkPolicy building blocks ------------------------------------------------------------

Rule = dict[str, Any]


def _tcp(*ports: int) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": port} for port in ports]


def _ip_peers(addresses: list[str]) -> list[dict[str, Any]] | None:
    """ipBlock peers for these addresses, or None when one is a DNS name (ipBlock needs an IP)."""
    peers = []
    for address in addresses:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        peers.append({"ipBlock": {"cidr": f"{ip}/{ip.max_prefixlen}"}})
    return peers


def _dns_egress() -> Rule:
    return {
        "to": [
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": KUBE_SYSTEM}},
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
            }
        ],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    }


def _api_egress(config: HarborConfig) -> list[Rule]:
    """The API server: kube-proxy turns kubernetes.default (first service IP, 443) into a server's node IP
    on 6443 before the policy sees the packet, so the policy must allow the latter; the former is kept for
    network-policy engines that look before the translation."""
    service_ip = next(config.k3s.service_cidr.hosts())
    servers = _ip_peers([config.node_address(node) for node in sorted(config.servers, key=lambda n: n.name)])
    api: Rule = {"ports": _tcp(API_PORT)}
    if servers is not None:
        api = {"to": servers, **api}
    return [{"to": [{"ipBlock": {"cidr": f"{service_ip}/32"}}], "ports": _tcp(443)}, api]


def _kubelet_egress(config: HarborConfig) -> Rule:
    nodes = _ip_peers([config.node_address(node) for node in config.nodes])
    rule: Rule = {"ports": _tcp(KUBELET_PORT)}
    return {"to": nodes, **rule} if nodes is not None else rule


@dataclass(frozen=True)
class Opening:
    """One NetworkPolicy beside the default deny: `name` and its ingress and/or egress rules."""

    name: str
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()


def _network_policy(name: str, namespace: str, selector: dict[str, Any], opening: Opening | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"podSelector": selector}
    if opening is None:
        # No rules at all: nothing in, nothing out, for the selected pods.
        spec["policyTypes"] = ["Ingress", "Egress"]
    else:
        kinds = (("Ingress", opening.ingress), ("Egress", opening.egress))
        spec["policyTypes"] = [kind for kind, rules in kinds if rules]
        if opening.ingress:
            spec["ingress"] = list(opening.ingress)
        if opening.egress:
            spec["egress"] = list(opening.egress)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace, "labels": _labels()},
        "spec": spec,
    }


def _labels() -> dict[str, str]:
    return {"app.kubernetes.io/managed-by": "space-harbor"}


# --- the components ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Component:
    """A platform component: where it runs and how its chart values, openings and extras follow config."""

    name: str  # Application name, folder name, key in versions.yaml
    namespace: str
    release: str  # Helm release name; the charts derive pod labels and Service names from it
    enabled: Callable[[HarborConfig], bool]
    values: Callable[[HarborConfig], dict[str, Any]]
    openings: Callable[[HarborConfig], list[Opening]]
    manifests: Callable[[HarborConfig], list[dict[str, Any]]] = lambda _config: []
    secrets: Callable[[HarborConfig], list[SecretSpec]] = lambda _config: []
    # Pods the policies select; {} = the whole namespace (only in a namespace of its own).
    pod_selector: Mapping[str, Any] = field(default_factory=dict)
    sync_options: tuple[str, ...] = ()

    @property
    def own_namespace(self) -> bool:
        return self.namespace != KUBE_SYSTEM

    def policy_name(self, base: str) -> str:
        # In a shared namespace the component's name keeps its policies apart from others'.
        return base if self.own_namespace else f"{self.name}-{base}"


def _resources(cpu: str, memory: str, cpu_limit: str, memory_limit: str) -> dict[str, Any]:
    return {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu_limit, "memory": memory_limit}}


def _secret_path(config: HarborConfig, component: str, name: str) -> str:
    return repo_path(config, f"{COMPONENTS_DIR}/{component}/sealedsecret-{name}.yaml")


# Traefik (traefik/traefik): keys checked against traefik/values.yaml and values.schema.json of 41.3.0.


def traefik_node(config: HarborConfig) -> str:
    """The node whose public address answers 80/443: components.traefik.node, else the first server."""
    return config.components.traefik.node or config.first_server.name


def _traefik_values(config: HarborConfig) -> dict[str, Any]:
    traefik = config.components.traefik
    return {
        # One pod on one known node: its public address is what `domain`'s DNS points at, and Let's
        # Encrypt's account and certificates (acme.json) sit on a ReadWriteOnce volume on that node.
        # Traefik Proxy cannot share acme.json between replicas.
        "deployment": {"kind": "Deployment", "replicas": 1},
        # The new pod needs the old one's host ports and volume: stop it first.
        "updateStrategy": {"type": "Recreate"},
        "nodeSelector": {"kubernetes.io/hostname": traefik_node(config)},
        # servicelb is disabled: the node's 80/443 reach the pod by hostPort (CNI portmap). hostNetwork
        # would need root or NET_BIND_SERVICE for 80/443, expose every other Traefik port on the node, and
        # bypass NetworkPolicy; hostPort keeps the pod unprivileged, in the pod network, behind its policies.
        "ports": {
            "web": {
                "hostPort": 80,
                "http": {"redirections": {"entryPoint": {"to": "websecure", "scheme": "https", "permanent": True}}},
            },
            "websecure": {"hostPort": 443},
        },
        # A LoadBalancer Service would stay pending without servicelb, and Argo CD would report it Progressing.
        "service": {"spec": {"type": "ClusterIP"}},
        "api": {"dashboard": False},
        "ingressRoute": {"dashboard": {"enabled": False}},
        "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
        "persistence": {"enabled": True, "size": "128Mi", "path": "/data"},
        "certificatesResolvers": {
            CERT_RESOLVER: {
                "acme": {
                    "email": traefik.acme_email,
                    "caServer": ACME_STAGING if traefik.acme_staging else ACME_PRODUCTION,
                    "storage": ACME_STORAGE,
                    # TLS-ALPN-01 on 443: independent of the HTTP->HTTPS redirect on port 80.
                    "tlsChallenge": True,
                }
            }
        },
        "resources": _resources("50m", "64Mi", "500m", "256Mi"),
    }


def _traefik_openings(config: HarborConfig) -> list[Opening]:
    return [
        Opening("allow-web", ingress=({"ports": _tcp(WEB_PORT, WEBSECURE_PORT)},)),
        Opening("allow-dns", egress=(_dns_egress(),)),
        # Traefik watches Ingresses, IngressRoutes, Services and EndpointSlices.
        Opening("allow-api-server", egress=tuple(_api_egress(config))),
        # Let's Encrypt's ACME API.
        Opening("allow-acme", egress=({"ports": _tcp(443)},)),
        # Whatever an IngressRoute points at, in any namespace.
        Opening("allow-backends", egress=({"to": [{"namespaceSelector": {}}]},)),
    ]


# Sealed Secrets (bitnami-labs/sealed-secrets): keys checked against helm/sealed-secrets/values.yaml of 2.18.5.

SEALED_SECRETS_POD_LABELS = {"app.kubernetes.io/name": "sealed-secrets", "app.kubernetes.io/instance": "sealed-secrets"}


def _sealed_secrets_values(config: HarborConfig) -> dict[str, Any]:
    del config
    return {
        "fullnameOverride": SEALED_SECRETS_FULLNAME,
        # The key pair comes from Pulumi state (a Secret labelled sealed-secrets-key=active, made by the
        # program); a key the controller renewed itself would exist in the cluster only, unbacked.
        "keyrenewperiod": "0",
        "resources": _resources("10m", "32Mi", "200m", "128Mi"),
    }


def _sealed_secrets_openings(config: HarborConfig) -> list[Opening]:
    return [
        Opening("allow-dns", egress=(_dns_egress(),)),
        Opening("allow-api-server", egress=tuple(_api_egress(config))),
        # `kubeseal --fetch-cert` goes through the API server's service proxy, from whichever node
        # address the hop uses (mesh or flannel); the port serves the public certificate and verify/rotate.
        Opening("allow-kubeseal", ingress=({"ports": _tcp(SEALED_SECRETS_PORT)},)),
    ]


# Infracheck (riotkit-org/infracheck, branch k8s, folder k8s): keys checked against k8s/values.yaml and
# k8s/templates/*.yaml at the pinned commit.

INFRACHECK_SERVICE = "infracheck-http"  # `{{ .Release.Name }}-http`; the chart selects pods by release name


def infracheck_checks(config: HarborConfig) -> dict[str, dict[str, Any]]:
    """The default checks: free disk, free RAM, load, and the TLS certificate of `domain`."""
    checks: dict[str, dict[str, Any]] = {
        # The container's root is the node's containerd filesystem, so this is the node's free space.
        "free-disk": {"type": "disk-space", "input": {"dir": "/", "min_req_space": "2"}},
        # /proc/meminfo and /proc/loadavg are the node's even inside the container.
        "free-ram": {"type": "free-ram", "input": {"max_ram_percentage": "90"}},
        "load": {"type": "load-average-auto", "input": {"maximum_above": "1", "timing": "15"}},
    }
    if config.domain:
        checks[f"tls-{config.domain}"] = {"type": "tls", "input": {"domain": config.domain, "alert_days_before": "10"}}
    return checks


def _infracheck_values(config: HarborConfig) -> dict[str, Any]:
    return {
        "deployment": {
            "resources": _resources("10m", "64Mi", "500m", "256Mi"),
            # The checks above need neither host paths nor privileges.
            "allowHostSystemPaths": False,
            "isPrivileged": False,
        },
        # The chart declares this volume only with allowHostSystemPaths; the results cache can live in the pod.
        "dbVolume": {"enabled": False},
        # The chart's IngressRoute uses traefik.containo.us, which Traefik 3 no longer serves; ours is in git.
        "ingress": {"enabled": False},
        "settings": {"secret_code": INFRACHECK_PATH_PREFIX},
        "checks": {
            "configured": {name: json.dumps(check, indent=4) for name, check in infracheck_checks(config).items()}
        },
    }


def _infracheck_manifests(config: HarborConfig) -> list[dict[str, Any]]:
    host = config.components.infracheck.host
    return [
        {
            "apiVersion": "traefik.io/v1alpha1",
            "kind": "IngressRoute",
            "metadata": {"name": "infracheck", "namespace": "infracheck", "labels": _labels()},
            "spec": {
                "entryPoints": ["websecure"],
                "routes": [
                    {"kind": "Rule", "match": f"Host(`{host}`)", "services": [{"name": INFRACHECK_SERVICE, "port": 80}]}
                ],
                "tls": {"certResolver": CERT_RESOLVER},
            },
        }
    ]


def _infracheck_openings(config: HarborConfig) -> list[Opening]:
    del config
    from_traefik = {
        "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "traefik"}}}],
        "ports": _tcp(INFRACHECK_PORT),
    }
    return [
        Opening("allow-from-traefik", ingress=(from_traefik,)),
        Opening("allow-dns", egress=(_dns_egress(),)),
        # The tls check opens a TLS connection to `domain`:443.
        Opening("allow-tls-check", egress=({"ports": _tcp(443)},)),
    ]


# Telegraf (influxdata/telegraf-ds): keys checked against charts/telegraf-ds/values.yaml and
# templates/daemonset.yaml of 1.1.53.

TELEGRAF_CERTS = "telegraf-tls"
TELEGRAF_KEY = "telegraf-tls-key"


def central_address(config: HarborConfig) -> tuple[str, int]:
    """socket_writer's address (with tcp://) and its port."""
    address = config.components.telegraf.central_address or ""
    url = address if address.startswith("tcp://") else f"tcp://{address}"
    return url, int(url.rsplit(":", 1)[1])


def _telegraf_values(config: HarborConfig) -> dict[str, Any]:
    return {
        "resources": _resources("20m", "64Mi", "500m", "256Mi"),
        # Every node, tainted ones too: metrics of a node nobody watches are the ones you miss.
        "tolerations": [{"operator": "Exists"}],
        "config": {
            # Pass-through to the central Telegraf (its socket_listener), with mutual TLS from our own CA.
            "outputs": [
                {
                    "socket_writer": {
                        "address": central_address(config)[0],
                        "data_format": "influx",
                        "tls_ca": f"{TELEGRAF_TLS_DIR}/ca.crt",
                        "tls_cert": f"{TELEGRAF_TLS_DIR}/tls.crt",
                        "tls_key": f"{TELEGRAF_TLS_DIR}/tls.key",
                    }
                }
            ]
        },
        # The certificates (ConfigMap, in git) and the key (Secret, sealed) in one read-only folder.
        "volumes": [
            {
                "name": "tls",
                "projected": {"sources": [{"configMap": {"name": TELEGRAF_CERTS}}, {"secret": {"name": TELEGRAF_KEY}}]},
            }
        ],
        "mountPoints": [{"name": "tls", "mountPath": TELEGRAF_TLS_DIR, "readOnly": True}],
    }


def _pem(text: str | None) -> str:
    text = (text or "").strip()
    return text + "\n"


def _telegraf_manifests(config: HarborConfig) -> list[dict[str, Any]]:
    telegraf = config.components.telegraf
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": TELEGRAF_CERTS, "namespace": "telegraf", "labels": _labels()},
            # Certificates are public; only the key is sealed.
            "data": {"ca.crt": _pem(telegraf.ca_cert), "tls.crt": _pem(telegraf.tls_cert)},
        }
    ]


def _telegraf_secrets(config: HarborConfig) -> list[SecretSpec]:
    key = config.components.telegraf.tls_key
    assert key is not None  # config validation requires it while telegraf is enabled
    return [
        SecretSpec(
            component="telegraf",
            namespace="telegraf",
            name=TELEGRAF_KEY,
            path=_secret_path(config, "telegraf", TELEGRAF_KEY),
            data={"tls.key": _pem(key.get_secret_value())},
        )
    ]


def _telegraf_openings(config: HarborConfig) -> list[Opening]:
    return [
        Opening("allow-dns", egress=(_dns_egress(),)),
        Opening("allow-central", egress=({"ports": _tcp(central_address(config)[1])},)),
        # The kubernetes input reads each node's kubelet (status.hostIP:10250).
        Opening("allow-kubelet", egress=(_kubelet_egress(config),)),
    ]


# SMTP relay (bokysan/docker-postfix, chart `mail`): keys checked against helm/mail/values.yaml and
# templates/statefulset.yaml of the published 5.1.0 package.

SMTP_SECRET = "smtp-relay"  # noqa: S105 (a Secret's name)


def relay_port(relay_host: str) -> int:
    """The port of RELAYHOST (`host`, `host:port`, `[host]:port`); Postfix's default is 25."""
    tail = relay_host.rsplit("]", 1)[-1] if relay_host.startswith("[") else relay_host
    if ":" in tail:
        port = tail.rsplit(":", 1)[1]
        if port.isdigit():
            return int(port)
    return 25


def sender_domains(config: HarborConfig) -> list[str]:
    return config.components.smtp.allowed_sender_domains or [config.domain or ""]


def _smtp_values(config: HarborConfig) -> dict[str, Any]:
    smtp = config.components.smtp
    general: dict[str, str] = {
        "RELAYHOST": smtp.relay_host or "",
        "ALLOWED_SENDER_DOMAINS": " ".join(sender_domains(config)),
    }
    if smtp.relay_username:
        general["RELAYHOST_USERNAME"] = smtp.relay_username
    values: dict[str, Any] = {
        # The Service becomes smtp.smtp.svc:587.
        "fullnameOverride": "smtp",
        # true stamps `now` into the pod template on every render: Argo CD would never see it in sync.
        "recreateOnRedeploy": False,
        "resources": _resources("10m", "64Mi", "250m", "256Mi"),
        "config": {"general": general},
    }
    if smtp.relay_password is not None:
        # The chart adds every key of this Secret to the pod's environment (envFrom).
        values["existingSecret"] = SMTP_SECRET
    return values


def _smtp_secrets(config: HarborConfig) -> list[SecretSpec]:
    password = config.components.smtp.relay_password
    if password is None:
        return []
    return [
        SecretSpec(
            component="smtp",
            namespace="smtp",
            name=SMTP_SECRET,
            path=_secret_path(config, "smtp", SMTP_SECRET),
            data={"RELAYHOST_PASSWORD": password.get_secret_value()},
        )
    ]


def _smtp_openings(config: HarborConfig) -> list[Opening]:
    return [
        # Any workload may hand mail to the relay.
        Opening("allow-submission", ingress=({"from": [{"namespaceSelector": {}}], "ports": _tcp(SMTP_PORT)},)),
        Opening("allow-dns", egress=(_dns_egress(),)),
        Opening("allow-relay", egress=({"ports": _tcp(relay_port(config.components.smtp.relay_host or ""))},)),
    ]


# Backup (riotkit-org backup-maker-controller, from helm-of-revolution): keys checked against the
# packaged chart's values.yaml and templates of v0.1.2. The controller has no target of its own: each
# ScheduledBackup names a Backup Repository server, a collection and a token Secret. Space Harbor puts
# the token in `backup-repository` of namespace `backup`, for the ScheduledBackups committed there.

BACKUP_SECRET = "backup-repository"  # noqa: S105 (a Secret's name)
BACKUP_TOKEN_KEY = "token"  # noqa: S105 (a key's name)


def _backup_values(config: HarborConfig) -> dict[str, Any]:
    del config
    return {
        "replicas": 1,
        # The tag is pinned; Always would pull on every restart for nothing.
        "image": {"pullPolicy": "IfNotPresent"},
        "resources": _resources("10m", "32Mi", "200m", "128Mi"),
        # One replica locks in memory; no Redis to run.
        "redis": {"deploy": False, "enable": False},
    }


def repository_port(config: HarborConfig) -> int:
    url = config.components.backup.repository_url or ""
    authority = url.split("://", 1)[-1].split("/", 1)[0]
    if ":" in authority:
        return int(authority.rsplit(":", 1)[1])
    return 80 if url.startswith("http://") else 443


def _backup_secrets(config: HarborConfig) -> list[SecretSpec]:
    token = config.components.backup.token
    assert token is not None  # config validation requires it while backup is enabled
    return [
        SecretSpec(
            component="backup",
            namespace="backup",
            name=BACKUP_SECRET,
            path=_secret_path(config, "backup", BACKUP_SECRET),
            data={BACKUP_TOKEN_KEY: token.get_secret_value()},
        )
    ]


def _backup_openings(config: HarborConfig) -> list[Opening]:
    return [
        Opening("allow-dns", egress=(_dns_egress(),)),
        # The controller turns ScheduledBackups into CronJobs, Secrets and ConfigMaps.
        Opening("allow-api-server", egress=tuple(_api_egress(config))),
        # Its backup jobs upload to the Backup Repository server.
        Opening("allow-repository", egress=({"ports": _tcp(repository_port(config))},)),
    ]


# A custom resource whose CRD another component brings (IngressRoute: Traefik; SealedSecret: Sealed
# Secrets) would fail the dry run until that component has synced.
CRD_PENDING = "SkipDryRunOnMissingResource=true"

COMPONENTS: tuple[Component, ...] = (
    Component(
        name="traefik",
        namespace="traefik",
        release="traefik",
        enabled=lambda c: c.components.traefik.enabled,
        values=_traefik_values,
        openings=_traefik_openings,
    ),
    Component(
        name="sealed-secrets",
        namespace=KUBE_SYSTEM,
        release="sealed-secrets",
        enabled=lambda c: c.components.sealed_secrets.enabled,
        values=_sealed_secrets_values,
        openings=_sealed_secrets_openings,
        pod_selector={"matchLabels": SEALED_SECRETS_POD_LABELS},
    ),
    Component(
        name="infracheck",
        namespace="infracheck",
        release="infracheck",
        enabled=lambda c: c.components.infracheck.enabled,
        values=_infracheck_values,
        openings=_infracheck_openings,
        manifests=_infracheck_manifests,
        # The IngressRoute's CRD arrives with Traefik; until then a dry run would refuse it.
        sync_options=(CRD_PENDING,),
    ),
    Component(
        name="telegraf",
        namespace="telegraf",
        release="telegraf",
        enabled=lambda c: c.components.telegraf.enabled,
        values=_telegraf_values,
        openings=_telegraf_openings,
        manifests=_telegraf_manifests,
        secrets=_telegraf_secrets,
        sync_options=(CRD_PENDING,),
    ),
    Component(
        name="smtp",
        namespace="smtp",
        release="smtp",
        enabled=lambda c: c.components.smtp.enabled,
        values=_smtp_values,
        openings=_smtp_openings,
        secrets=_smtp_secrets,
        sync_options=(CRD_PENDING,),
    ),
    Component(
        name="backup",
        namespace="backup",
        release="backup-maker-controller",
        enabled=lambda c: c.components.backup.enabled,
        values=_backup_values,
        openings=_backup_openings,
        secrets=_backup_secrets,
        sync_options=(CRD_PENDING,),
    ),
)


def enabled_components(config: HarborConfig) -> list[Component]:
    return [component for component in COMPONENTS if component.enabled(config)]


def component_dir(config: HarborConfig, name: str) -> str:
    """`<gitops.path>/components/<name>`: the second source of the component's Application."""
    return repo_path(config, f"{COMPONENTS_DIR}/{name}")


def application_path(config: HarborConfig, name: str) -> str:
    return repo_path(config, f"{APPS_DIR}/{name}.yaml")


# --- rendering -----------------------------------------------------------------------------------


def secret_specs(config: HarborConfig) -> list[SecretSpec]:
    """Every Secret the enabled components need, for the caller to seal. Sorted by path."""
    specs = [spec for component in enabled_components(config) for spec in component.secrets(config)]
    return sorted(specs, key=lambda spec: spec.path)


def render_application(config: HarborConfig, component: Component) -> dict[str, Any]:
    """The component's Argo CD Application: the pinned chart plus its folder of the cluster repo."""
    ref = chart_refs()[component.name]
    chart: dict[str, Any] = {"repoURL": ref.repo_url}
    if ref.chart is not None:
        chart["chart"] = ref.chart
    else:
        chart["path"] = ref.path
    chart["targetRevision"] = ref.version
    chart["helm"] = {"releaseName": component.release, "valuesObject": component.values(config)}
    manifests = {
        "repoURL": config.gitops.repo_url,
        "targetRevision": config.gitops.branch,
        "path": component_dir(config, component.name),
    }
    app = load_template("component-application.yaml")
    app["metadata"]["name"] = component.name
    app["spec"]["sources"] = [chart, manifests]
    app["spec"]["destination"]["namespace"] = component.namespace
    options = app["spec"]["syncPolicy"]["syncOptions"] + list(component.sync_options)
    app["spec"]["syncPolicy"] = {**child_sync_policy(config), "syncOptions": options}
    return app


def render_manifests(config: HarborConfig, component: Component) -> dict[str, dict[str, Any]]:
    """The plain manifests of components/<name>/, file name -> object."""
    objects: list[dict[str, Any]] = []
    if component.own_namespace:
        objects.append(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": component.namespace, "labels": _labels()}}
        )
    selector = dict(component.pod_selector)
    objects.append(_network_policy(component.policy_name("default-deny"), component.namespace, selector, None))
    for opening in component.openings(config):
        name = component.policy_name(opening.name)
        objects.append(_network_policy(name, component.namespace, selector, opening))
    objects += component.manifests(config)
    files: dict[str, dict[str, Any]] = {}
    for obj in objects:
        kind, name = obj["kind"].lower(), obj["metadata"]["name"]
        filename = "namespace.yaml" if kind == "namespace" else f"{kind}-{name}.yaml"
        assert filename not in files, f"{component.name}: two objects for {filename}"
        files[filename] = obj
    return files


def render_platform(config: HarborConfig) -> dict[str, str]:
    """The Applications and component folders of every enabled component, repo path -> text."""
    tree: dict[str, str] = {}
    for component in enabled_components(config):
        tree[application_path(config, component.name)] = dump(render_application(config, component))
        for filename, obj in render_manifests(config, component).items():
            tree[f"{component_dir(config, component.name)}/{filename}"] = dump(obj)
    return tree


def merge_sealed(config: HarborConfig, sealed: Mapping[str, str]) -> dict[str, str]:
    """The caller's SealedSecret files, checked: each at a path of `secret_specs`, each one SealedSecret."""
    specs = {spec.path: spec for spec in secret_specs(config)}
    files: dict[str, str] = {}
    for path, text in sealed.items():
        spec = specs.get(path)
        if spec is None:
            raise ValueError(f"{path}: no enabled component needs a sealed Secret there")
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
        if len(documents) != 1 or documents[0].get("kind") != "SealedSecret":
            # Never let a plain Secret (or anything else) into the tree through this door.
            raise ValueError(f"{path}: is not one SealedSecret")
        metadata = documents[0].get("metadata", {})
        if (metadata.get("namespace"), metadata.get("name")) != (spec.namespace, spec.name):
            sealed_for = f"{metadata.get('namespace')}/{metadata.get('name')}"
            raise ValueError(f"{path}: seals {sealed_for}, not {spec.namespace}/{spec.name}")
        files[path] = text if text.startswith(HEADER) else HEADER + text
    return files


def readme_components(config: HarborConfig) -> str:
    """The generated README's table of enabled components and the notes an operator needs."""
    rows = ["| component | chart | version | namespace |", "|---|---|---|---|"]
    for component in enabled_components(config):
        ref = chart_refs()[component.name]
        chart = ref.chart if ref.chart is not None else f"{ref.repo_url} `{ref.path}`"
        rows.append(f"| `{component.name}` | {chart} | `{ref.version}` | `{component.namespace}` |")
    if len(rows) == 2:
        return "No platform component is enabled."
    notes = []
    names = {component.name for component in enabled_components(config)}
    if "traefik" in names:
        staging = " (staging CA: certificates are not trusted)" if config.components.traefik.acme_staging else ""
        notes.append(
            f"**traefik** binds ports 80 and 443 of node `{traefik_node(config)}`: point the DNS names you "
            f"serve at its public address. Certificates come from Let's Encrypt{staging}; use "
            f"`tls.certResolver: {CERT_RESOLVER}` in an IngressRoute."
        )
    if "infracheck" in names:
        notes.append(
            f"**infracheck** answers `https://{config.components.infracheck.host}/{INFRACHECK_PATH_PREFIX}/` "
            "with HTTP 200 when every check passes and 500 otherwise: point an outside monitor at it."
        )
    if "smtp" in names:
        notes.append(f"**smtp** accepts mail from any namespace at `smtp.smtp.svc:{SMTP_PORT}`.")
    if "backup" in names:
        notes.append(
            f"**backup** runs backup-maker-controller, which has no target of its own: commit "
            f"`ScheduledBackup`s in namespace `backup` (under `{config.gitops.path}/apps/user/`, say) with "
            f'`cronJob.scheduleEvery: "{config.components.backup.schedule}"`, '
            f"`collectionId: {config.components.backup.collection_id}`, Repository url "
            f"`{config.components.backup.repository_url}` and "
            f"`tokenSecretRef: {{secretName: {BACKUP_SECRET}, tokenKey: {BACKUP_TOKEN_KEY}}}`. A job that "
            "reads a database in another namespace needs a NetworkPolicy of its own beside it."
        )
    return "\n".join(rows) + ("\n\n" + "\n\n".join(notes) if notes else "")
