#!/usr/bin/env bash
# Space Harbor node lifecycle, run on a k3s server with `k3s kubectl` against the local API.
#
#   k3s-lifecycle.sh node-object  check that kubectl reaches the API (the create of the Command
#                                 whose delete is delete-node); changes nothing
#   k3s-lifecycle.sh wait-ready   wait (bounded) until node HARBOR_NODE_NAME is Ready
#   k3s-lifecycle.sh drain        cordon and drain the node; a node that is gone is fine
#   k3s-lifecycle.sh delete-node  delete the Node object; a node that is gone is fine
#
# Parameters (environment):
#   HARBOR_NODE_NAME             the Kubernetes node name
#   HARBOR_DRAIN_TIMEOUT         seconds for `kubectl drain` (default 120)
#   HARBOR_FORCE                 true: a failing drain or delete is a warning, so that a dead or
#                                unreachable node can still be decommissioned
#   HARBOR_READY_TIMEOUT         optional, seconds wait-ready waits (default 300)
# The last line of output is `space-harbor: k3s-lifecycle.sh <action>: changed|unchanged`.
set -euo pipefail

lc_action="${1:-}"
lc_node="${HARBOR_NODE_NAME:-}"
lc_drain_timeout="${HARBOR_DRAIN_TIMEOUT:-120}"
lc_force="${HARBOR_FORCE:-false}"
lc_ready_timeout="${HARBOR_READY_TIMEOUT:-300}"
lc_changed=false

lc_fail() {
    echo "space-harbor: k3s-lifecycle.sh ${lc_action:-?}: error: $*" >&2
    exit 1
}

lc_log() {
    echo "space-harbor: k3s-lifecycle.sh $lc_action: $*" >&2
}

# Under HARBOR_FORCE a failed step is reported and skipped; otherwise it stops the run.
lc_fail_or_warn() {
    if [ "$lc_force" = true ]; then
        lc_log "warning (HARBOR_FORCE=true, continuing): $*"
    else
        lc_fail "$* (set decommission.force to true to skip this step for a dead node)"
    fi
}

lc_kubectl() {
    local k3s
    k3s=$(command -v k3s || echo /usr/local/bin/k3s)
    [ -x "$k3s" ] || return 127
    KUBECONFIG=/etc/rancher/k3s/k3s.yaml "$k3s" kubectl "$@"
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

lc_node_object() {
    lc_wait_for_api || lc_fail "kubectl on this server cannot reach the k3s API (node $lc_node, step node-object)"
}

lc_wait_ready() {
    local deadline=$((SECONDS + lc_ready_timeout)) status=""
    lc_wait_for_api || lc_fail "kubectl on this server cannot reach the k3s API (node $lc_node, step wait-ready)"
    while :; do
        # Empty while the node has not registered yet: keep waiting, it is joining.
        status=$(lc_kubectl get node "$lc_node" --ignore-not-found \
            -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null || true)
        if [ "$status" = True ]; then
            lc_log "node $lc_node is Ready"
            return 0
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            lc_fail "node $lc_node did not become Ready within ${lc_ready_timeout}s (Ready=${status:-not registered}; step wait-ready)"
        fi
        sleep 3
    done
}

lc_drain() {
    local exists
    if ! exists=$(lc_node_exists); then
        lc_fail_or_warn "cannot ask the k3s API whether node $lc_node exists (step drain)"
        return 0
    fi
    if [ "$exists" = no ]; then
        lc_log "node $lc_node is not in the cluster: nothing to drain"
        return 0
    fi
    lc_changed=true
    if lc_kubectl drain "$lc_node" --ignore-daemonsets --delete-emptydir-data \
        --timeout="${lc_drain_timeout}s" >&2; then
        lc_log "node $lc_node drained"
    else
        lc_fail_or_warn "draining node $lc_node failed or timed out after ${lc_drain_timeout}s (step drain)"
    fi
}

lc_delete_node() {
    local output
    if ! output=$(lc_kubectl delete node "$lc_node" --ignore-not-found 2>&1); then
        printf '%s\n' "$output" >&2
        lc_fail_or_warn "deleting node $lc_node failed (step delete-node)"
        return 0
    fi
    if [ -n "$output" ]; then
        printf '%s\n' "$output" >&2
        lc_changed=true
    else
        lc_log "node $lc_node is not in the cluster: nothing to delete"
    fi
}

if ! [[ "$lc_node" =~ ^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$ ]]; then
    lc_fail "HARBOR_NODE_NAME must be a node name (DNS-1123 label), got '${lc_node}'"
fi
[[ "$lc_drain_timeout" =~ ^[0-9]+$ ]] || lc_fail "HARBOR_DRAIN_TIMEOUT must be a number of seconds"
[[ "$lc_ready_timeout" =~ ^[0-9]+$ ]] || lc_fail "HARBOR_READY_TIMEOUT must be a number of seconds"
case "$lc_force" in true | false) ;; *) lc_fail "HARBOR_FORCE must be true or false" ;; esac

case "$lc_action" in
node-object) lc_node_object ;;
wait-ready) lc_wait_ready ;;
drain) lc_drain ;;
delete-node) lc_delete_node ;;
*) lc_fail "unknown action '${lc_action}'; use node-object, wait-ready, drain or delete-node" ;;
esac

if [ "$lc_changed" = true ]; then
    echo "space-harbor: k3s-lifecycle.sh $lc_action: changed"
else
    echo "space-harbor: k3s-lifecycle.sh $lc_action: unchanged"
fi
