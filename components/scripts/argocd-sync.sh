#!/usr/bin/env bash
# Space Harbor's "sync now" (gitops.syncOnApply), run on the first k3s server with `k3s kubectl`
# against the local API, after the program pushed a commit to the GitOps repository.
#
#   argocd-sync.sh sync   refresh the root Application and wait (bounded) until Argo CD has
#                         compared it with git; sync it unless it is in sync or already syncing;
#                         then refresh every child Application that HARBOR_CHILD_SELECTOR selects
#                         and HARBOR_CHILD_APPLICATIONS names, and sync those that are out of sync;
#                         wait until every sync has finished; then record HARBOR_GITOPS_REVISION
#                         on the root Application. Nothing at all when that commit is recorded
#                         there already: the step runs again whenever its script or connection
#                         changes, and only a new commit syncs.
#
# Argo CD Core has no API server, so this does what `argocd app sync --core` and a click in the
# dashboard do: it writes the Application objects. A refresh is the annotation
# argocd.argoproj.io/refresh, which the application controller removes in the same write that
# stores the new comparison. A sync is the Application's `operation` field, written with the
# object's resourceVersion as a precondition, so that it never overwrites an operation the
# controller (an auto-sync) or someone else set in between: on a conflict it reads again. The
# controller runs the operation, reports it in status.operationState and clears `operation`.
#
# Parameters (environment):
#   HARBOR_GITOPS_REVISION   the commit the program pushed (hex sha); Argo CD should see it or newer
#   HARBOR_ARGOCD_NAMESPACE  where Argo CD and its Applications live (default argocd)
#   HARBOR_ROOT_APPLICATION  the app-of-apps root (default space-harbor)
#   HARBOR_CHILD_SELECTOR    label selector of the child Applications to sync
#   HARBOR_CHILD_APPLICATIONS  their names, one a line: the platform's Applications of this stack.
#                            Labels alone are not enough: a user's Application under apps/user/
#                            can carry them, and our sync prunes.
#   HARBOR_SYNC_TIMEOUT      seconds for the whole step once the API answers (default 300)
#   HARBOR_SYNC_POLL         optional, seconds between two looks at an Application (default 2)
#
# The last line of output is `space-harbor: argocd-sync.sh sync: changed` when a sync ran (ours or
# one the controller had started), `unchanged` when everything was in sync already.
set -euo pipefail
# The payload brings lib.sh ahead of this body; run by hand from a checkout, load it from beside it.
# shellcheck source-path=SCRIPTDIR source=lib.sh
declare -F harbor_fail >/dev/null || . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

harbor_script="argocd-sync.sh"
harbor_action="${1:-}"
as_revision="${HARBOR_GITOPS_REVISION:-}"
as_namespace="${HARBOR_ARGOCD_NAMESPACE:-argocd}"
as_root="${HARBOR_ROOT_APPLICATION:-space-harbor}"
as_selector="${HARBOR_CHILD_SELECTOR:-}"
as_child_names="${HARBOR_CHILD_APPLICATIONS:-}"
as_timeout="${HARBOR_SYNC_TIMEOUT:-300}"
as_poll="${HARBOR_SYNC_POLL:-2}"
as_kubeconfig=/etc/rancher/k3s/k3s.yaml
as_resource=applications.argoproj.io
as_controller=argocd-application-controller
as_refresh_key='argocd\.argoproj\.io/refresh'
as_initiator=space-harbor
# On the root Application: the commit the last complete run synced.
as_synced_note=space-harbor/synced-revision
# Set once the API answers; every wait below ends by then.
as_deadline=0
# What our operations say in operation.info, for whoever looks at the Application afterwards.
as_marker=""

as_kubectl() {
    local k3s
    k3s=$(command -v k3s || echo /usr/local/bin/k3s)
    [ -x "$k3s" ] || return 127
    KUBECONFIG="$as_kubeconfig" "$k3s" kubectl "$@"
}

as_left() {
    echo $((as_deadline - SECONDS))
}

# Retries for a while: right after an install or restart the API needs a few seconds.
as_wait_for_api() {
    local deadline=$((SECONDS + 60))
    until as_kubectl get nodes -o name >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 2
    done
}

# The fields of one Application this script decides on, one a line, into the array `as_app`.
# kubectl's jsonpath prints lists and maps as JSON and a missing field as nothing.
as_fields='{.metadata.resourceVersion}{"\n"}'
as_fields+="{.metadata.annotations.$as_refresh_key}"'{"\n"}'
as_fields+='{.metadata.deletionTimestamp}{"\n"}'
as_fields+='{.operation.sync}{"\n"}'
as_fields+='{.spec.source.repoURL}{"\n"}'
as_fields+='{.spec.syncPolicy.syncOptions}{"\n"}'
as_fields+='{.spec.syncPolicy.retry}{"\n"}'
as_fields+='{.status.sync.status}{"\n"}'
as_fields+='{.status.sync.revision}{"\n"}'
as_fields+='{.status.sync.revisions}{"\n"}'
as_fields+='{.status.operationState.phase}{"\n"}'
as_fields+='{.status.operationState.syncResult.revision}{"\n"}'
as_fields+='{.status.operationState.syncResult.revisions}{"\n"}'
as_fields+="{.metadata.annotations.$as_synced_note}"'{"\n"}'
AS_VERSION=0 AS_REFRESH=1 AS_DELETING=2 AS_OPERATION=3 AS_SINGLE_SOURCE=4 AS_OPTIONS=5 AS_RETRY=6
AS_SYNC=7 AS_REVISION=8 AS_REVISIONS=9 AS_PHASE=10 AS_SYNCED_REVISION=11 AS_SYNCED_REVISIONS=12
AS_SYNCED_NOTE=13 AS_FIELD_COUNT=14
as_app=()
# Unless the Application has a retry of its own: a child whose CRDs another child brings
# (SkipDryRunOnMissingResource) fails until that one has synced, and then succeeds.
as_default_retry='{"limit":3,"backoff":{"duration":"5s","factor":2,"maxDuration":"1m"}}'

as_read() {
    local name=$1 out
    out=$(as_kubectl -n "$as_namespace" get "$as_resource" "$name" -o "jsonpath=$as_fields" 2>&1) ||
        harbor_fail "cannot read Application $as_namespace/$name: $out"
    mapfile -t as_app <<<"$out"
    # $(...) drops trailing newlines, so trailing empty fields come back here.
    while [ "${#as_app[@]}" -lt "$AS_FIELD_COUNT" ]; do as_app+=(""); done
}

# The revision(s) Argo CD compared the Application with: a sha, or a JSON list for several sources.
as_target() {
    if [ -n "${as_app[$AS_SINGLE_SOURCE]}" ]; then
        printf '%s' "${as_app[$AS_REVISION]}"
    else
        printf '%s' "${as_app[$AS_REVISIONS]}"
    fi
}

as_synced_target() {
    if [ -n "${as_app[$AS_SINGLE_SOURCE]}" ]; then
        printf '%s' "${as_app[$AS_SYNCED_REVISION]}"
    else
        printf '%s' "${as_app[$AS_SYNCED_REVISIONS]}"
    fi
}

as_finished() {
    case "$1" in Succeeded | Failed | Error) return 0 ;; esac
    return 1
}

as_check_argocd() {
    local out ready
    if ! out=$(as_kubectl -n "$as_namespace" get "$as_resource" "$as_root" -o name 2>&1); then
        case "$out" in
        *"doesn't have a resource type"* | *"could not find the requested resource"*)
            harbor_fail "Argo CD's Application CRD is not installed in this cluster ($out); pulumi up applies Argo CD Core before this step"
            ;;
        *NotFound* | *"not found"*)
            harbor_fail "the root Application $as_namespace/$as_root does not exist; if it was deleted by hand, open the API" \
                "tunnel (./scripts/kubeconfig STACK), run pulumi refresh, then pulumi up to create it again"
            ;;
        esac
        harbor_fail "cannot read the root Application $as_namespace/$as_root: $out"
    fi
    while :; do
        if ! out=$(as_kubectl -n "$as_namespace" get statefulsets.apps "$as_controller" -o 'jsonpath={.status.readyReplicas}' 2>&1); then
            case "$out" in
            *NotFound* | *"not found"*)
                harbor_fail "Argo CD's application controller (StatefulSet $as_namespace/$as_controller) does not exist; nothing would run a sync"
                ;;
            esac
            harbor_fail "cannot read StatefulSet $as_namespace/$as_controller: $out"
        fi
        ready=${out:-0}
        if [[ "$ready" =~ ^[0-9]+$ ]] && [ "$ready" -ge 1 ]; then
            return 0
        fi
        if [ "$(as_left)" -le 0 ]; then
            harbor_fail "Argo CD's application controller (StatefulSet $as_namespace/$as_controller) has no ready replica" \
                "after ${as_timeout}s; look at kubectl -n $as_namespace get pods -l app.kubernetes.io/name=$as_controller"
        fi
        sleep "$as_poll"
    done
}

as_request_refresh() {
    local name=$1 out
    out=$(as_kubectl -n "$as_namespace" patch "$as_resource" "$name" --type merge \
        -p '{"metadata":{"annotations":{"argocd.argoproj.io/refresh":"normal"}}}' 2>&1) ||
        harbor_fail "cannot ask Argo CD to refresh Application $as_namespace/$name: $out"
}

# Waits until the controller has removed the refresh annotation of every Application named: it
# does so in the same write that stores the comparison with the newest commit of the branch.
as_wait_refreshed() {
    local name pending
    while :; do
        pending=()
        for name in "$@"; do
            as_read "$name"
            if [ -n "${as_app[$AS_REFRESH]}" ]; then
                pending+=("$name")
            fi
        done
        [ "${#pending[@]}" -gt 0 ] || return 0
        if [ "$(as_left)" -le 0 ]; then
            harbor_fail "Argo CD's application controller did not refresh ${pending[*]} within ${as_timeout}s;" \
                "is it running? kubectl -n $as_namespace logs statefulset/$as_controller"
        fi
        sleep "$as_poll"
    done
}

# Starts a sync of one Application unless it needs none. Prints what it did: "none" (in sync),
# "running" (an operation was there already: the controller's auto-sync, or someone's click) or
# "started". The caller waits for the last two.
as_start_sync() {
    local name=$1 target options retry sources body out
    while :; do
        as_read "$name"
        if [ -n "${as_app[$AS_OPERATION]}" ] || [ "${as_app[$AS_PHASE]}" = Running ] || [ "${as_app[$AS_PHASE]}" = Terminating ]; then
            echo running
            return 0
        fi
        target=$(as_target)
        if [ "${as_app[$AS_SYNC]}" = Synced ]; then
            echo none
            return 0
        fi
        # Synced a moment ago at this very revision; the comparison after a sync can lag behind it.
        if [ "${as_app[$AS_PHASE]}" = Succeeded ] && [ -n "$target" ] && [ "$(as_synced_target)" = "$target" ]; then
            echo none
            return 0
        fi
        if [ -z "$target" ]; then
            harbor_fail "Argo CD has no revision for Application $as_namespace/$name (sync status" \
                "'${as_app[$AS_SYNC]:-none}'); it could not read the repository? kubectl -n $as_namespace get $as_resource $name -o yaml"
        fi
        # The operation `argocd app sync` writes: the revision(s) the refresh resolved, the
        # Application's own sync options, and prune (the root prunes by itself too, and a child's
        # files are Space Harbor's).
        options=${as_app[$AS_OPTIONS]:-[]}
        retry=${as_app[$AS_RETRY]:-$as_default_retry}
        if [ -n "${as_app[$AS_SINGLE_SOURCE]}" ]; then
            sources="\"revision\":\"$target\""
        else
            sources="\"revisions\":$target"
        fi
        body=$(printf '{"metadata":{"resourceVersion":"%s"},"operation":{"initiatedBy":{"username":"%s"},"info":[{"name":"%s","value":"%s"}],"retry":%s,"sync":{%s,"prune":true,"syncOptions":%s,"syncStrategy":{"hook":{}}}}}' \
            "${as_app[$AS_VERSION]}" "$as_initiator" "$as_initiator" "$as_marker" "$retry" "$sources" "$options")
        if out=$(as_kubectl -n "$as_namespace" patch "$as_resource" "$name" --type merge -p "$body" 2>&1); then
            harbor_log "Application $name was ${as_app[$AS_SYNC]:-not compared}: sync started at $target"
            echo started
            return 0
        fi
        case "$out" in
        *Conflict* | *"has been modified"*)
            # The controller or someone else wrote it since we read it: look again.
            [ "$(as_left)" -gt 0 ] || harbor_fail "Application $as_namespace/$name kept changing for ${as_timeout}s; no sync started"
            ;;
        *) harbor_fail "cannot start a sync of Application $as_namespace/$name: $out" ;;
        esac
    done
}

# Waits until no operation is pending on any Application named and prints the names whose last
# operation did not succeed, with Argo CD's message, one a line.
as_wait_synced() {
    local name pending message
    while :; do
        pending=()
        for name in "$@"; do
            as_read "$name"
            if [ -n "${as_app[$AS_OPERATION]}" ] || ! as_finished "${as_app[$AS_PHASE]}"; then
                pending+=("$name")
            fi
        done
        [ "${#pending[@]}" -gt 0 ] || break
        if [ "$(as_left)" -le 0 ]; then
            harbor_fail "the sync of ${pending[*]} did not finish within ${as_timeout}s (gitops.syncTimeoutSeconds);" \
                "it goes on in Argo CD: argocd admin dashboard --core, or kubectl -n $as_namespace get $as_resource"
        fi
        sleep "$as_poll"
    done
    for name in "$@"; do
        as_read "$name"
        if [ "${as_app[$AS_PHASE]}" != Succeeded ]; then
            message=$(as_kubectl -n "$as_namespace" get "$as_resource" "$name" -o 'jsonpath={.status.operationState.message}' 2>/dev/null | tr '\n' ' ' || true)
            printf '%s: %s: %s\n' "$name" "${as_app[$AS_PHASE]}" "${message:-no message}"
        else
            harbor_log "Application $name synced at $(as_synced_target)"
        fi
    done
}

# Starts the syncs the named Applications need and waits for them; fails naming every one that failed.
as_sync_all() {
    local name state failed
    local -a waiting=()
    for name in "$@"; do
        state=$(as_start_sync "$name")
        case "$state" in
        none) harbor_log "Application $name is in sync: nothing to do" ;;
        running)
            harbor_log "Application $name is syncing already: waiting for it"
            waiting+=("$name")
            ;;
        started) waiting+=("$name") ;;
        esac
    done
    [ "${#waiting[@]}" -gt 0 ] || return 0
    harbor_changed=true
    failed=$(as_wait_synced "${waiting[@]}")
    if [ -n "$failed" ]; then
        harbor_fail "Argo CD could not sync every Application (it retries on the next pulumi up):"$'\n'"$failed"
    fi
}

as_children() {
    local out line
    out=$(as_kubectl -n "$as_namespace" get "$as_resource" -l "$as_selector" -o name 2>&1) ||
        harbor_fail "cannot list the child Applications ($as_selector): $out"
    while IFS= read -r line; do
        [ -n "$line" ] || continue
        line=${line##*/}
        [ "$line" != "$as_root" ] || continue
        case $'\n'"$as_child_names"$'\n' in
        *$'\n'"$line"$'\n'*) echo "$line" ;;
        *) harbor_log "Application $line carries the platform's labels but is not one of this stack's: left alone" ;;
        esac
    done <<<"$out"
}

as_sync() {
    local out
    [ -x "$(command -v k3s || echo /usr/local/bin/k3s)" ] || harbor_fail "k3s is not installed on this server"
    as_wait_for_api || harbor_fail "kubectl on this server cannot reach the k3s API"
    as_deadline=$((SECONDS + as_timeout))
    as_marker="commit $as_revision, run $(date -u +%Y%m%dT%H%M%SZ)-$$"
    as_check_argocd

    as_read "$as_root"
    if [ "${as_app[$AS_SYNCED_NOTE]}" = "$as_revision" ]; then
        harbor_log "commit $as_revision was synced by an earlier run: nothing to do (the step changed, not the commit)"
        return 0
    fi
    as_sync_commit
    out=$(as_kubectl -n "$as_namespace" patch "$as_resource" "$as_root" --type merge \
        -p "{\"metadata\":{\"annotations\":{\"$as_synced_note\":\"$as_revision\"}}}" 2>&1) ||
        harbor_fail "cannot record the synced commit on Application $as_namespace/$as_root: $out"
}

as_sync_commit() {
    local name seen listing
    local -a children=() live=()
    as_request_refresh "$as_root"
    as_wait_refreshed "$as_root"
    seen=$(as_target)
    if [ -n "$seen" ] && [ "$seen" != "$as_revision" ]; then
        # The branch moved on after our push (another writer): its newer tip includes our commit.
        harbor_log "Argo CD sees $seen on the branch, not $as_revision: the branch moved on; syncing what it sees"
    fi
    as_sync_all "$as_root"

    # Listed after the root's sync: it creates the Applications of newly enabled components.
    listing=$(as_children)
    [ -z "$listing" ] || mapfile -t children <<<"$listing"
    for name in "${children[@]}"; do
        as_read "$name"
        if [ -n "${as_app[$AS_DELETING]}" ]; then
            harbor_log "Application $name is being deleted (its component was disabled): left alone"
            continue
        fi
        live+=("$name")
        as_request_refresh "$name"
    done
    [ "${#live[@]}" -gt 0 ] || return 0
    as_wait_refreshed "${live[@]}"
    as_sync_all "${live[@]}"
}

case "$harbor_action" in
sync) ;;
*) harbor_fail "unknown action '${harbor_action}'; use sync" ;;
esac
[[ "$as_revision" =~ ^[0-9a-f]{40}([0-9a-f]{24})?$ ]] ||
    harbor_fail "HARBOR_GITOPS_REVISION must be a commit sha (40 or 64 hex digits), got '${as_revision}'"
[[ "$as_timeout" =~ ^[0-9]+$ ]] || harbor_fail "HARBOR_SYNC_TIMEOUT must be a number of seconds"
[[ "$as_poll" =~ ^[0-9]+([.][0-9]+)?$ ]] || harbor_fail "HARBOR_SYNC_POLL must be a number of seconds"
[[ "$as_namespace" =~ ^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$ ]] || harbor_fail "HARBOR_ARGOCD_NAMESPACE must be a namespace name"
[[ "$as_root" =~ ^[a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?$ ]] || harbor_fail "HARBOR_ROOT_APPLICATION must be an object name"
[ -n "$as_selector" ] || harbor_fail "HARBOR_CHILD_SELECTOR must be a label selector"

as_sync
harbor_finish
