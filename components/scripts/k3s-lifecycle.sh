#!/usr/bin/env bash
# Space Harbor node lifecycle, run on a k3s server with `k3s kubectl` against the local API.
#
#   k3s-lifecycle.sh node-object      check that kubectl reaches the API (the create of the
#                                     Command whose delete is delete-node); changes nothing
#   k3s-lifecycle.sh prepare-upgrade  before the node's k3s moves to HARBOR_K3S_VERSION: refuse a
#                                     downgrade, then (unless HARBOR_DRAIN is false) cordon and
#                                     drain the node and mark it with the annotation below;
#                                     nothing when it already runs that version or has not
#                                     registered yet
#   k3s-lifecycle.sh confirm-upgrade  after the node's upgrade: wait (bounded) until it is Ready at
#                                     HARBOR_K3S_VERSION, then uncordon it if prepare-upgrade
#                                     cordoned it
#   k3s-lifecycle.sh reconcile        wait (bounded) until the node is Ready, apply its labels and
#                                     taints (k3s itself applies them only at registration) and
#                                     mark it as joined by Space Harbor; uncordon it if drain left
#                                     it cordoned (the node is in the stack again)
#   k3s-lifecycle.sh wait-ready       wait (bounded) until node HARBOR_NODE_NAME is Ready
#   k3s-lifecycle.sh drain            mark the node as leaving, cordon and drain it; a node that
#                                     is gone is fine
#   k3s-lifecycle.sh delete-node      delete the Node object of a node that left: marked as
#                                     leaving by drain, or no longer Ready. A Ready node that was
#                                     never drained to leave is kept (the step was replaced, the
#                                     node did not leave). A node that is gone, or a cluster whose
#                                     k3s is gone from this server, is fine
#   k3s-lifecycle.sh drain-departed   drain every node that reconcile marked as ours and that is
#                                     not in HARBOR_CLUSTER_NODES: runs before the other nodes'
#                                     mesh and firewall drop a removed node, while its kubelet
#                                     still reaches the API; delete the Node objects of
#                                     HARBOR_FORGET_NODES (gone for good: nothing to drain);
#                                     nothing when k3s is not installed yet
#   k3s-lifecycle.sh refuse-cluster-id-replacement
#                                     fail, saying why: the delete of the step that every node
#                                     step waits for, run only when the cluster's id is replaced
#   k3s-lifecycle.sh api-credential   make sure of the ServiceAccount space-harbor-deployer (bound to
#                                     cluster-admin) and its long-lived token Secret in
#                                     kube-system, then print a kubeconfig for it on stdout and
#                                     nothing else; stdout stays empty unless every step succeeded
#
# Parameters (environment):
#   HARBOR_NODE_NAME             the Kubernetes node name (every action but drain-departed,
#                                api-credential and refuse-cluster-id-replacement)
#   HARBOR_CLUSTER_NODES         drain-departed: the names of the nodes in the stack, one a line
#   HARBOR_FORGET_NODES          drain-departed: nodes gone for good (decommission.forget), one a line
#   HARBOR_K3S_VERSION           the release the node should run (prepare-upgrade, confirm-upgrade)
#   HARBOR_DRAIN                 prepare-upgrade: false keeps the node scheduled (the first server)
#   HARBOR_NODE_LABELS           reconcile: the node's labels, one key=value a line
#   HARBOR_NODE_TAINTS           reconcile: the node's taints, one key[=value]:Effect a line
#   HARBOR_DRAIN_TIMEOUT         seconds for `kubectl drain` (default 120)
#   HARBOR_FORCE                 true: a failing drain or delete is a warning, so that a dead or
#                                unreachable node can still be decommissioned
#   HARBOR_READY_TIMEOUT         optional, seconds wait-ready, reconcile and confirm-upgrade wait
#                                (default 300)
#   HARBOR_CREDENTIAL_WAIT       optional, seconds api-credential waits for its token (default 60)
#
# Labels and taints that reconcile set are listed in the node's annotations, so that removing one
# from the stack removes it from the node while labels set by others stay.
# The last line of output is `space-harbor: k3s-lifecycle.sh <action>: changed|unchanged`.
set -euo pipefail
# The payload brings lib.sh ahead of this body; run by hand from a checkout, load it from beside it.
# shellcheck source-path=SCRIPTDIR source=lib.sh
declare -F harbor_fail >/dev/null || . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

harbor_script="k3s-lifecycle.sh"
harbor_action="${1:-}"
lc_node="${HARBOR_NODE_NAME:-}"
lc_drain_timeout="${HARBOR_DRAIN_TIMEOUT:-120}"
lc_force="${HARBOR_FORCE:-false}"
lc_ready_timeout="${HARBOR_READY_TIMEOUT:-300}"
lc_version="${HARBOR_K3S_VERSION:-}"
lc_labels="${HARBOR_NODE_LABELS:-}"
lc_taints="${HARBOR_NODE_TAINTS:-}"
lc_members="${HARBOR_CLUSTER_NODES:-}"
lc_forget="${HARBOR_FORGET_NODES:-}"
lc_drain_for_upgrade="${HARBOR_DRAIN:-true}"
lc_credential_wait="${HARBOR_CREDENTIAL_WAIT:-60}"
# Written by a k3s server when it first starts (k3s write-kubeconfig may put it elsewhere).
lc_kubeconfig="${HARBOR_K3S_KUBECONFIG:-/etc/rancher/k3s/k3s.yaml}"
# The stack's own API credential (see api-credential): a ServiceAccount token does not expire,
# unlike the 365-day client certificate of k3s' admin kubeconfig.
lc_credential_namespace=kube-system
lc_credential_account=space-harbor-deployer
lc_credential_secret=space-harbor-deployer-token
# Node annotations: what reconcile manages, and the version prepare-upgrade drained the node for.
lc_labels_note=space-harbor/managed-labels
lc_taints_note=space-harbor/managed-taints
lc_drained_note=space-harbor/drained-for-upgrade
lc_managed_note=space-harbor/managed
# Set by drain (a node leaving the stack): delete-node deletes only such a node while it is Ready,
# and reconcile, finding it on a node of the stack, uncordons the node.
lc_leaving_note=space-harbor/drained-to-leave

# Under HARBOR_FORCE a failed step is reported and skipped; otherwise it stops the run.
lc_fail_or_warn() {
    if [ "$lc_force" = true ]; then
        harbor_log "warning (HARBOR_FORCE=true, continuing): $*"
    else
        harbor_fail "$* (set decommission.force to true to skip this step for a dead node)"
    fi
}

lc_k3s_bin() {
    command -v k3s || echo /usr/local/bin/k3s
}

lc_kubectl() {
    local k3s
    k3s=$(lc_k3s_bin)
    [ -x "$k3s" ] || return 127
    KUBECONFIG="$lc_kubeconfig" "$k3s" kubectl "$@"
}

# Prints "yes" or "no", or fails when the API cannot be asked.
lc_node_exists() {
    local found
    found=$(lc_kubectl get node "$lc_node" --ignore-not-found -o name) || return 1
    if [ -n "$found" ]; then echo yes; else echo no; fi
}

# Retries for a while: right after an install or restart the API needs a few seconds.
lc_wait_for_api() {
    local deadline=$((SECONDS + 60))
    until lc_kubectl get nodes -o name >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            return 1
        fi
        sleep 2
    done
}

# One field of the Node object through jsonpath; empty when the field or the node is missing.
lc_node_field() {
    lc_kubectl get node "$lc_node" --ignore-not-found -o "jsonpath={$1}"
}

# v1.31.4+k3s1 -> 1.31.4.1, so that `sort -V` orders k3s releases.
lc_sortable() {
    sed -E 's/^v//; s/\+k3s/./'
}

# Succeeds when release $1 is older than release $2.
lc_older() {
    [ "$1" != "$2" ] && [ "$(printf '%s\n%s\n' "$1" "$2" | lc_sortable | sort -V | head -n 1)" = "$(printf '%s\n' "$1" | lc_sortable)" ]
}

lc_node_object() {
    lc_wait_for_api || harbor_fail "kubectl on this server cannot reach the k3s API (node $lc_node, step node-object)"
}

lc_wait_ready() {
    local deadline=$((SECONDS + lc_ready_timeout)) status=""
    lc_wait_for_api || harbor_fail "kubectl on this server cannot reach the k3s API (node $lc_node, step wait-ready)"
    while :; do
        # Empty while the node has not registered yet: keep waiting, it is joining.
        status=$(lc_kubectl get node "$lc_node" --ignore-not-found \
            -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null || true)
        if [ "$status" = True ]; then
            harbor_log "node $lc_node is Ready"
            return 0
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            harbor_fail "node $lc_node did not become Ready within ${lc_ready_timeout}s (Ready=${status:-not registered}; step wait-ready)"
        fi
        sleep 3
    done
}

lc_prepare_upgrade() {
    local exists current
    lc_wait_for_api || harbor_fail "kubectl on this server cannot reach the k3s API (node $lc_node, step prepare-upgrade)"
    exists=$(lc_node_exists) || harbor_fail "cannot ask the k3s API about node $lc_node (step prepare-upgrade)"
    if [ "$exists" = no ]; then
        harbor_log "node $lc_node has not registered: nothing to drain before its install"
        return 0
    fi
    current=$(lc_node_field .status.nodeInfo.kubeletVersion) ||
        harbor_fail "cannot read the k3s version of node $lc_node (step prepare-upgrade)"
    if [ -z "$current" ] || [ "$current" = "$lc_version" ]; then
        harbor_log "node $lc_node runs ${current:-an unknown version}: no upgrade to prepare"
        return 0
    fi
    if lc_older "$lc_version" "$current"; then
        harbor_fail "refusing to downgrade node $lc_node from $current to $lc_version: k3s supports upgrades only;" \
            "set k3s.version back to $current or newer (step prepare-upgrade)"
    fi
    if [ "$lc_drain_for_upgrade" != true ]; then
        harbor_log "node $lc_node moves from $current to $lc_version without a drain"
        return 0
    fi
    harbor_changed=true
    # The mark goes on first: if the drain fails, the next confirm-upgrade still knows to uncordon.
    lc_kubectl annotate --overwrite -- node "$lc_node" "$lc_drained_note=$lc_version" >&2 ||
        harbor_fail "cannot annotate node $lc_node (step prepare-upgrade)"
    harbor_log "draining node $lc_node for its upgrade from $current to $lc_version"
    lc_kubectl drain "$lc_node" --ignore-daemonsets --delete-emptydir-data --timeout="${lc_drain_timeout}s" >&2 ||
        harbor_fail "draining node $lc_node before its upgrade to $lc_version failed or timed out after" \
            "${lc_drain_timeout}s; it stays cordoned; fix what blocks the eviction and run pulumi up again (step prepare-upgrade)"
}

# Makes the node's "key=value" lines (labels) or "key[=value]:Effect" lines (taints) match the
# stack, and removes the ones that reconcile set before and the stack no longer has. `--` ends
# kubectl's options, so no item, whatever it holds, is read as one (this runs as root).
lc_reconcile_list() {
    local kind="$1" wanted="$2" note="$3" previous item key new_keys="" changed=false
    previous=$(lc_node_field ".metadata.annotations.$note") ||
        harbor_fail "cannot read the annotations of node $lc_node (step reconcile)"
    while IFS= read -r item; do
        [ -n "$item" ] || continue
        if [ "$kind" = label ]; then
            key="${item%%=*}"
            lc_kubectl label --overwrite -- node "$lc_node" "$item" >&2 ||
                harbor_fail "cannot set label $item on node $lc_node (step reconcile)"
        else
            key="${item%%=*}"
            key="${key%%:*}:${item##*:}"
            lc_kubectl taint --overwrite -- node "$lc_node" "$item" >&2 ||
                harbor_fail "cannot set taint $item on node $lc_node (step reconcile)"
        fi
        new_keys="${new_keys:+$new_keys,}$key"
    done <<<"$wanted"
    local -a old_keys=()
    IFS=, read -r -a old_keys <<<"$previous"
    for key in "${old_keys[@]}"; do
        case ",$new_keys," in *",$key,"*) continue ;; esac
        changed=true
        if [ "$kind" = label ]; then
            lc_kubectl label -- node "$lc_node" "$key-" >&2 || harbor_fail "cannot remove label $key from node $lc_node (step reconcile)"
        elif ! lc_kubectl taint -- node "$lc_node" "$key-" >&2; then
            harbor_log "taint $key was already gone from node $lc_node"
        fi
    done
    if [ "$previous" != "$new_keys" ]; then
        changed=true
        lc_kubectl annotate --overwrite -- node "$lc_node" "$note=$new_keys" >&2 ||
            harbor_fail "cannot annotate node $lc_node (step reconcile)"
    fi
    if [ "$changed" = true ]; then
        harbor_changed=true
        harbor_log "node $lc_node: ${kind}s now ${new_keys:-none}"
    fi
}

lc_confirm_upgrade() {
    local deadline current drained
    lc_wait_ready
    deadline=$((SECONDS + lc_ready_timeout))
    # After an upgrade the Node reports the new kubelet only once the restarted agent checks in.
    until current=$(lc_node_field .status.nodeInfo.kubeletVersion) && [ "$current" = "$lc_version" ]; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            harbor_fail "node $lc_node runs ${current:-an unknown version}, not $lc_version, after ${lc_ready_timeout}s (step confirm-upgrade)"
        fi
        sleep 3
    done
    drained=$(lc_node_field ".metadata.annotations.$lc_drained_note") ||
        harbor_fail "cannot read the annotations of node $lc_node (step confirm-upgrade)"
    if [ -n "$drained" ]; then
        # Only a cordon of our own is undone; one an operator set stays.
        lc_kubectl uncordon "$lc_node" >&2 || harbor_fail "cannot uncordon node $lc_node (step confirm-upgrade)"
        lc_kubectl annotate -- node "$lc_node" "$lc_drained_note-" >&2 ||
            harbor_fail "cannot annotate node $lc_node (step confirm-upgrade)"
        harbor_changed=true
        harbor_log "node $lc_node upgraded to $lc_version and uncordoned"
    fi
}

lc_reconcile() {
    local leaving
    lc_wait_ready
    leaving=$(lc_node_field ".metadata.annotations.$lc_leaving_note") ||
        harbor_fail "cannot read the annotations of node $lc_node (step reconcile)"
    if [ -n "$leaving" ]; then
        # Drained to leave, and in the stack after all (a replaced registration, or a node that came
        # back): only this cordon of ours is undone, never an operator's.
        lc_kubectl uncordon "$lc_node" >&2 || harbor_fail "cannot uncordon node $lc_node (step reconcile)"
        lc_kubectl annotate node "$lc_node" "$lc_leaving_note-" >&2 ||
            harbor_fail "cannot annotate node $lc_node (step reconcile)"
        harbor_changed=true
        harbor_log "node $lc_node was drained to leave and is in the stack: uncordoned"
    fi
    if [ -z "$(lc_node_field ".metadata.annotations.$lc_managed_note")" ]; then
        # drain-departed only ever drains nodes with this mark
        lc_kubectl annotate --overwrite -- node "$lc_node" "$lc_managed_note=true" >&2 ||
            harbor_fail "cannot annotate node $lc_node (step reconcile)"
        harbor_changed=true
    fi
    lc_reconcile_list label "$lc_labels" "$lc_labels_note"
    lc_reconcile_list taint "$lc_taints" "$lc_taints_note"
}

lc_drain() {
    local exists
    if ! exists=$(lc_node_exists); then
        lc_fail_or_warn "cannot ask the k3s API whether node $lc_node exists (step drain)"
        return 0
    fi
    if [ "$exists" = no ]; then
        harbor_log "node $lc_node is not in the cluster: nothing to drain"
        return 0
    fi
    harbor_changed=true
    # The mark goes on first: delete-node, after the uninstall, must know the node left.
    if ! lc_kubectl annotate node "$lc_node" --overwrite "$lc_leaving_note=true" >&2; then
        lc_fail_or_warn "cannot annotate node $lc_node (step drain)"
    fi
    if lc_kubectl drain "$lc_node" --ignore-daemonsets --delete-emptydir-data \
        --timeout="${lc_drain_timeout}s" >&2; then
        harbor_log "node $lc_node drained"
    else
        lc_fail_or_warn "draining node $lc_node failed or timed out after ${lc_drain_timeout}s (step drain)"
    fi
}

lc_delete_node() {
    local output
    if ! [ -x "$(lc_k3s_bin)" ]; then
        # The cluster itself is gone from this server (a whole-stack destroy): no Node object is left.
        harbor_log "k3s is not installed on this server: no Node object of $lc_node to delete"
        return 0
    fi
    if ! output=$(lc_kubectl delete node "$lc_node" --ignore-not-found 2>&1); then
        printf '%s\n' "$output" >&2
        lc_fail_or_warn "deleting node $lc_node failed (step delete-node)"
        return 0
    fi
    if [ -n "$output" ]; then
        printf '%s\n' "$output" >&2
        harbor_changed=true
    else
        harbor_log "node $lc_node is not in the cluster: nothing to delete"
    fi
}

# The delete of the node-object step. It also runs when that step is replaced (delete first, then
# the create), on a node that stays: only a node that left loses its Node object.
lc_delete_departed_node() {
    local exists leaving ready
    if [ -x "$(lc_k3s_bin)" ]; then
        if ! exists=$(lc_node_exists); then
            lc_fail_or_warn "cannot ask the k3s API whether node $lc_node exists (step delete-node)"
            return 0
        fi
        if [ "$exists" = yes ]; then
            leaving=$(lc_node_field ".metadata.annotations.$lc_leaving_note") ||
                harbor_fail "cannot read the annotations of node $lc_node (step delete-node)"
            ready=$(lc_node_field '.status.conditions[?(@.type=="Ready")].status') ||
                harbor_fail "cannot read the status of node $lc_node (step delete-node)"
            if [ -z "$leaving" ] && [ "$ready" = True ]; then
                harbor_log "node $lc_node is Ready and was not drained to leave the stack: its Node object stays"
                return 0
            fi
        fi
    fi
    lc_delete_node
}

lc_drain_departed() {
    local listing name managed
    local -a names=()
    if ! [ -x "$(command -v k3s || echo /usr/local/bin/k3s)" ]; then
        harbor_log "k3s is not installed here yet: no node to drain"
        return 0
    fi
    # An air-gapped node has the binary before the install; no kubeconfig means no server ever ran.
    if ! [ -e "$lc_kubeconfig" ]; then
        harbor_log "k3s has not started a server here yet: no node to drain"
        return 0
    fi
    if ! lc_wait_for_api; then
        lc_fail_or_warn "kubectl on this server cannot reach the k3s API to drain removed nodes (step drain-departed)"
        return 0
    fi
    listing=$(lc_kubectl get nodes -o name) || harbor_fail "cannot list the nodes (step drain-departed)"
    mapfile -t names <<<"$listing"
    for name in "${names[@]}"; do
        name="${name#node/}"
        [ -n "$name" ] || continue
        if grep -qxF -- "$name" <<<"$lc_members"; then
            continue
        fi
        if [ -n "$lc_forget" ] && grep -qxF -- "$name" <<<"$lc_forget"; then
            # Gone for good: a drain would wait on pods a dead kubelet never stops. Deleting the
            # Node object lets Kubernetes reschedule them now.
            lc_node="$name"
            harbor_log "node $name is forgotten (decommission.forget): deleting its Node object without a drain"
            lc_delete_node
            continue
        fi
        lc_node="$name"
        managed=$(lc_node_field ".metadata.annotations.$lc_managed_note") ||
            harbor_fail "cannot read the annotations of node $name (step drain-departed)"
        if [ "$managed" != true ]; then
            harbor_log "node $name is not in the stack but was not joined by Space Harbor: left alone"
            continue
        fi
        harbor_log "node $name left the stack: draining it before the mesh drops it"
        lc_drain
    done
}

# One manifest, applied idempotently: the account, its binding, and a token Secret that the token
# controller fills in. A token Secret made by hand is not one of the "auto-generated" legacy tokens
# that Kubernetes cleans up after a year unused.
lc_credential_manifest() {
    # printf, as for the kubeconfig below: no here-documents, which bash < 5.1 writes to /tmp.
    printf '%s\n' \
        "apiVersion: v1" \
        "kind: ServiceAccount" \
        "metadata:" \
        "  name: $lc_credential_account" \
        "  namespace: $lc_credential_namespace" \
        "  labels: {app.kubernetes.io/managed-by: space-harbor}" \
        "---" \
        "apiVersion: rbac.authorization.k8s.io/v1" \
        "kind: ClusterRoleBinding" \
        "metadata:" \
        "  name: $lc_credential_account" \
        "  labels: {app.kubernetes.io/managed-by: space-harbor}" \
        "roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}" \
        "subjects:" \
        "- {kind: ServiceAccount, name: $lc_credential_account, namespace: $lc_credential_namespace}" \
        "---" \
        "apiVersion: v1" \
        "kind: Secret" \
        "type: kubernetes.io/service-account-token" \
        "metadata:" \
        "  name: $lc_credential_secret" \
        "  namespace: $lc_credential_namespace" \
        "  annotations: {kubernetes.io/service-account.name: $lc_credential_account}" \
        "  labels: {app.kubernetes.io/managed-by: space-harbor}"
}

# The kubeconfig goes to stdout only once it is whole: pulumi-command puts a failed step's stdout
# into its error message, and this one is a credential.
lc_api_credential() {
    local token ca deadline kubeconfig
    lc_wait_for_api || harbor_fail "kubectl on this server cannot reach the k3s API (step api-credential)"
    lc_credential_manifest | lc_kubectl apply -f - >&2 ||
        harbor_fail "cannot apply the deployer ServiceAccount (step api-credential)"
    deadline=$((SECONDS + lc_credential_wait))
    until token=$(lc_kubectl -n "$lc_credential_namespace" get secret "$lc_credential_secret" \
        -o 'jsonpath={.data.token}' 2>/dev/null) && [ -n "$token" ]; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            harbor_fail "the token controller did not fill in $lc_credential_namespace/$lc_credential_secret within ${lc_credential_wait}s (step api-credential)"
        fi
        sleep 2
    done
    token=$(printf '%s' "$token" | base64 -d) || harbor_fail "the deployer token is not base64 (step api-credential)"
    ca=$(lc_kubectl config view --raw -o 'jsonpath={.clusters[0].cluster.certificate-authority-data}') ||
        harbor_fail "cannot read the cluster CA from $lc_kubeconfig (step api-credential)"
    [ -n "$ca" ] || harbor_fail "$lc_kubeconfig has no certificate-authority-data (step api-credential)"
    # printf (a builtin, no file): a here-document goes through a temporary file in bash before
    # 5.1, and this text holds a cluster-admin token.
    kubeconfig=$(printf '%s\n' \
        "apiVersion: v1" \
        "kind: Config" \
        "clusters:" \
        "- name: default" \
        "  cluster:" \
        "    certificate-authority-data: $ca" \
        "    server: https://127.0.0.1:6443" \
        "contexts:" \
        "- name: default" \
        "  context: {cluster: default, user: $lc_credential_account}" \
        "current-context: default" \
        "users:" \
        "- name: $lc_credential_account" \
        "  user:" \
        "    token: $token")
    printf '%s\n' "$kubeconfig"
}

case "$harbor_action" in
drain-departed | api-credential | refuse-cluster-id-replacement) ;;
*)
    [[ "$lc_node" =~ ^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$ ]] ||
        harbor_fail "HARBOR_NODE_NAME must be a node name (DNS-1123 label), got '${lc_node}'"
    ;;
esac
[[ "$lc_drain_timeout" =~ ^[0-9]+$ ]] || harbor_fail "HARBOR_DRAIN_TIMEOUT must be a number of seconds"
[[ "$lc_ready_timeout" =~ ^[0-9]+$ ]] || harbor_fail "HARBOR_READY_TIMEOUT must be a number of seconds"
[[ "$lc_credential_wait" =~ ^[0-9]+$ ]] || harbor_fail "HARBOR_CREDENTIAL_WAIT must be a number of seconds"
case "$lc_force" in true | false) ;; *) harbor_fail "HARBOR_FORCE must be true or false" ;; esac
case "$lc_drain_for_upgrade" in true | false) ;; *) harbor_fail "HARBOR_DRAIN must be true or false" ;; esac
case "$harbor_action" in
prepare-upgrade | confirm-upgrade)
    [[ "$lc_version" =~ ^v[0-9]+\.[0-9]+\.[0-9]+\+k3s[0-9]+$ ]] ||
        harbor_fail "HARBOR_K3S_VERSION must look like v1.31.4+k3s1 (got '${lc_version}')"
    ;;
esac

case "$harbor_action" in
node-object) lc_node_object ;;
prepare-upgrade) lc_prepare_upgrade ;;
confirm-upgrade) lc_confirm_upgrade ;;
reconcile) lc_reconcile ;;
wait-ready) lc_wait_ready ;;
drain) lc_drain ;;
delete-node) lc_delete_departed_node ;;
drain-departed) lc_drain_departed ;;
refuse-cluster-id-replacement)
    harbor_fail "refusing to replace cluster-id: everything that goes with the cluster would be replaced" \
        "with it, and the replacement of a node's registration drains the node. Nothing else was touched;" \
        "the new id is kept, and the next pulumi up replaces nothing. A new cluster is a new stack."
    ;;
api-credential)
    lc_api_credential
    # stdout is the kubeconfig and nothing else.
    echo "space-harbor: k3s-lifecycle.sh api-credential: unchanged" >&2
    exit 0
    ;;
*) harbor_fail "unknown action '${harbor_action}'; use node-object, prepare-upgrade, confirm-upgrade, reconcile, wait-ready, drain, delete-node, drain-departed, refuse-cluster-id-replacement or api-credential" ;;
esac

harbor_finish
