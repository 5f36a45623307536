#!/usr/bin/env bash
# Space Harbor preflight: read-only checks on a node before anything is installed anywhere.
#
#   preflight.sh check   verify the node can take its role; change nothing
#
# Parameters (environment): HARBOR_NODE_NAME, HARBOR_K3S_ROLE, HARBOR_K3S_BOOTSTRAP, HARBOR_K3S_VERSION
set -euo pipefail

pf_action="${1:-}"
pf_node="${HARBOR_NODE_NAME:-}"
pf_role="${HARBOR_K3S_ROLE:-}"
# What k3s.sh records of the k3s it installed: "<role> <version>".
pf_record=/etc/rancher/k3s/.space-harbor-installed

pf_fail() {
    echo "space-harbor: preflight ${pf_node:-?}: $*" >&2
    exit 1
}

pf_check_role() {
    local installed
    installed=$(awk '{ print $1 }' "$pf_record" 2>/dev/null || true)
    if [ -n "$installed" ] && [ "$installed" != "$pf_role" ]; then
        pf_fail "role: node $pf_node runs k3s as $installed and the stack says $pf_role; a role is not" \
            "changed in place: remove the node from nodes, run pulumi up, then add it back with the new role"
    fi
}

case "$pf_action" in
check)
    case "$pf_role" in server | agent) ;; *) pf_fail "role: HARBOR_K3S_ROLE must be server or agent" ;; esac
    pf_check_role
    echo "space-harbor: preflight.sh check: ok"
    ;;
*) pf_fail "unknown action '${pf_action}'; use check" ;;
esac
