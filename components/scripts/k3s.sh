#!/usr/bin/env bash
# Space Harbor k3s node: install from config.yaml, reconfigure, upgrade in order, uninstall.
#
#   k3s.sh install     write /etc/rancher/k3s/config.yaml and registries.yaml; run the k3s
#                      installer (then restart the service) when the pinned version is not the one
#                      installed and running, the service is missing or the reinstall counter
#                      changed, else restart the service only when one of the two files changed;
#                      then wait (bounded) until the service is active and, on a server, until
#                      the kubeconfig exists
#   k3s.sh reconfigure the update of an installed node: write config.yaml and registries.yaml and
#                      restart only when one changed, start the service when it is stopped; rerun
#                      the installer at the installed version when the reinstall counter changed
#                      (no uninstall) or when the binary was replaced by an older one by hand;
#                      never change the recorded version (upgrades go through `upgrade`, in the
#                      order the stack gives); a node with no k3s at all is installed as by `install`
#   k3s.sh upgrade     install HARBOR_K3S_VERSION when the node runs another one (a downgrade is
#                      refused), restart, and wait as `install` does; nothing when it runs it
#   k3s.sh uninstall   run k3s' own uninstall script, remove config.yaml, the kept installer and
#                      what k3s.registries wrote
#   k3s.sh prepare-staging  make the private directory the copy steps stage into: owned by
#                      HARBOR_STAGING_USER, mode 0700, inside a root-owned directory, so that no
#                      other local account can create, replace or link anything there
#   k3s.sh remove-shipped  remove the staged copies of the shipped files (the node is leaving),
#                      and those an older version staged in /var/tmp
#
# Parameters (environment):
#   HARBOR_K3S_ROLE            server | agent
#   HARBOR_K3S_VERSION         e.g. v1.31.4+k3s1
#   HARBOR_K3S_CONFIG          config.yaml text (holds the token: written 0600, never on argv)
#   HARBOR_STAGING_USER        prepare-staging: the SSH user, whose SFTP writes the staged copies
#   HARBOR_K3S_INSTALLER       the k3s installer as the stack's copy step staged it (a path in the
#                              staging directory: a symlink or a file of another owner is refused), and
#   HARBOR_K3S_INSTALLER_SHA256  its pinned sha256: it is copied to a root-only place, checked
#                              there, and kept as /usr/local/share/space-harbor/k3s-install.sh;
#                              nothing else is ever run as the installer
#   HARBOR_K3S_AIRGAP          true: install the binary at /usr/local/bin/k3s (INSTALL_K3S_SKIP_DOWNLOAD)
#                              instead of downloading it
#   HARBOR_K3S_BINARY          optional, with _SHA256: a staged k3s binary, checked the same way and
#   HARBOR_K3S_BINARY_SHA256   put at /usr/local/bin/k3s before an install or upgrade
#   HARBOR_K3S_IMAGES          optional, with _SHA256: a staged image archive (.tar, .tar.zst, ...),
#   HARBOR_K3S_IMAGES_SHA256   put into k3s' agent/images directory, which k3s imports at start
#   HARBOR_K3S_WAIT_TIMEOUT    optional, seconds to wait for the service (default 180)
#   HARBOR_NODE_PACKAGES       optional, Debian packages the enabled platform components need on
#                              every node (Longhorn: open-iscsi nfs-common), space-separated;
#                              install and reconfigure install the missing ones before k3s, and
#                              never remove one
#   HARBOR_K3S_REGISTRIES      optional, registries.yaml text (may hold registry passwords:
#                              written 0600); unset: a registries.yaml that this script wrote
#                              (its first line says so) is removed, any other is left alone
#   HARBOR_K3S_REGISTRY_FILES  optional, TLS files for registries.yaml, one `<registry>/<name>
#                              <base64 text>` a line, written 0600 under $k3s_registry_files;
#                              files there that are not listed are removed
#   HARBOR_K3S_REINSTALL       optional, the node's reinstall counter (default 0); install,
#                              reconfigure and upgrade record it in $k3s_generation_record and
#                              rerun the installer, at the installed version, when it differs
#
# A change of config.yaml restarts k3s, except one confined to its `server:` line on a running
# node: k3s reads `server` only to join, and a joined node reaches the servers through its client
# load balancer (agents) or etcd (servers); the new value is written and takes effect at the
# node's next restart.
#
# Every setting, the token and (for joining nodes) the `server:` URL live in config.yaml, never
# in installer flags, which a later re-run of the installer would silently drop. The upstream
# installer (get.k3s.io) takes the first word of INSTALL_K3S_EXEC as the k3s command and only
# falls back to K3S_URL/K3S_TOKEN to guess "agent" when no command is given, so
# INSTALL_K3S_EXEC=agent alone makes a k3s-agent.service, and `k3s agent` then reads `server`
# and `token` from config.yaml. K3S_URL/K3S_TOKEN are therefore not passed (nor written into the
# unit's env file).
set -euo pipefail
# The payload brings lib.sh ahead of this body; run by hand from a checkout, load it from beside it.
# shellcheck source-path=SCRIPTDIR source=lib.sh
declare -F harbor_fail >/dev/null || . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

harbor_script=k3s.sh
harbor_action="${1:-}"
k3s_role="${HARBOR_K3S_ROLE:-}"
k3s_version="${HARBOR_K3S_VERSION:-}"
k3s_airgap="${HARBOR_K3S_AIRGAP:-false}"
k3s_installer_staged="${HARBOR_K3S_INSTALLER:-}"
k3s_installer_sha256="${HARBOR_K3S_INSTALLER_SHA256:-}"
k3s_binary_staged="${HARBOR_K3S_BINARY:-}"
k3s_binary_sha256="${HARBOR_K3S_BINARY_SHA256:-}"
k3s_images_staged="${HARBOR_K3S_IMAGES:-}"
k3s_images_sha256="${HARBOR_K3S_IMAGES_SHA256:-}"
k3s_installer=/usr/local/share/space-harbor/k3s-install.sh
# The copy steps stage files here under names that are ours (components/shipped.py: STAGING_DIR).
# Its parent is root's, so only root can have made it; it belongs to the SSH user, mode 0700.
k3s_staging_parent=/var/lib/space-harbor
k3s_staging_dir="$k3s_staging_parent/staging"
k3s_staged_glob="$k3s_staging_dir/space-harbor-k3s-*"
# Where versions before the staging directory staged them (world-writable, predictable names).
k3s_legacy_staged_glob="/var/tmp/space-harbor-k3s-*"
k3s_images_dir=/var/lib/rancher/k3s/agent/images
k3s_images_name=space-harbor-airgap-images
k3s_wait="${HARBOR_K3S_WAIT_TIMEOUT:-180}"
k3s_packages="${HARBOR_NODE_PACKAGES:-}"
k3s_generation="${HARBOR_K3S_REINSTALL:-0}"
k3s_bin=/usr/local/bin/k3s
k3s_config_dir=/etc/rancher/k3s
k3s_config="$k3s_config_dir/config.yaml"
k3s_kubeconfig="$k3s_config_dir/k3s.yaml"
# "<role> <version>" that this script last installed and started. The binary's own version is not
# enough: after an air-gap upgrade the new binary is on disk while the old one still runs.
k3s_record="$k3s_config_dir/.space-harbor-installed"
# The reinstall counter the last install ran for; beside the record, whose format the preflight
# reads too. Missing: 0.
k3s_generation_record="$k3s_config_dir/.space-harbor-reinstall"
k3s_registries="$k3s_config_dir/registries.yaml"
k3s_registry_files="$k3s_config_dir/space-harbor-registries"
# The first line of a registries.yaml that this script wrote (components/render/k3s.py).
k3s_registries_header="# Managed by Space Harbor (Pulumi) from k3s.registries."
# What changed in this run that k3s reads only at start: config.yaml ("true", or "server" when only
# its `server:` line did) and the registry files.
k3s_config_changed=false
k3s_registries_changed=false

k3s_unit() {
    if [ "$k3s_role" = server ]; then echo k3s; else echo k3s-agent; fi
}

k3s_check_role() {
    case "$k3s_role" in
    server | agent) ;;
    *) harbor_fail "HARBOR_K3S_ROLE must be server or agent (got '${k3s_role}')" ;;
    esac
}

# The version the installed binary reports, e.g. "k3s version v1.31.4+k3s1 (a1b2c3d4)"; empty
# when there is no binary.
k3s_installed_version() {
    if [ -x "$k3s_bin" ]; then
        "$k3s_bin" --version 2>/dev/null | head -n 1 || true
    fi
}

k3s_version_matches() {
    # A whole word, so v1.31.4+k3s1 never matches v1.31.4+k3s10.
    k3s_installed_version | awk -v want="$k3s_version" '{ for (i = 1; i <= NF; i++) if ($i == want) found = 1 } END { exit !found }'
}

# config.yaml without its `server:` line (printf and grep: the text holds the token, and must
# not go through a here-string's temporary file).
k3s_without_server() {
    printf '%s\n' "${1%$'\n'}" | grep -v '^server:' || true
}

k3s_write_config() {
    local previous=""
    if [ -f "$k3s_config" ]; then
        previous=$(cat "$k3s_config")
    fi
    harbor_write_if_changed "$k3s_config" 600 "$HARBOR_K3S_CONFIG"
    k3s_config_changed=$harbor_wrote
    if [ "$harbor_wrote" = true ]; then
        harbor_log "$k3s_config written"
        harbor_changed=true
        if [ -n "$previous" ] &&
            [ "$(k3s_without_server "$previous")" = "$(k3s_without_server "$HARBOR_K3S_CONFIG")" ]; then
            k3s_config_changed=server
        fi
    fi
}

# The TLS files of HARBOR_K3S_REGISTRY_FILES, and no others, under $k3s_registry_files.
k3s_write_registry_files() {
    local name data path text
    local -A wanted=()
    while read -r name data; do
        [ -n "$name" ] || continue
        [[ "$name" =~ ^[A-Za-z0-9._-]+/(ca\.crt|client\.crt|client\.key)$ ]] && [[ "$name" != .* ]] ||
            harbor_fail "HARBOR_K3S_REGISTRY_FILES: '$name' is not <registry>/ca.crt, client.crt or client.key"
        wanted["$k3s_registry_files/$name"]=1
        text=$(printf '%s' "$data" | base64 -d 2>/dev/null) ||
            harbor_fail "HARBOR_K3S_REGISTRY_FILES: the text of $name is not base64"
        harbor_write_if_changed "$k3s_registry_files/$name" 600 "$text"
        if [ "$harbor_wrote" = true ]; then
            harbor_log "$k3s_registry_files/$name written"
            k3s_registries_changed=true
        fi
    done < <(printf '%s\n' "${HARBOR_K3S_REGISTRY_FILES:-}")
    [ -d "$k3s_registry_files" ] || return 0
    while IFS= read -r -d '' path; do
        if [ -z "${wanted[$path]:-}" ]; then
            rm -f -- "$path"
            harbor_log "$path removed"
            k3s_registries_changed=true
        fi
    done < <(find "$k3s_registry_files" -type f -print0)
    find "$k3s_registry_files" -mindepth 1 -type d -empty -delete
    if [ "${#wanted[@]}" -eq 0 ]; then
        rmdir "$k3s_registry_files" 2>/dev/null || true
    fi
}

k3s_registries_ours() {
    [ -f "$k3s_registries" ] && head -n 1 "$k3s_registries" | grep -qF "$k3s_registries_header"
}

# registries.yaml from HARBOR_K3S_REGISTRIES, or, without it, the removal of the one we wrote.
k3s_write_registries() {
    if [ -n "${HARBOR_K3S_REGISTRIES:-}" ]; then
        if [ -f "$k3s_registries" ] && ! k3s_registries_ours; then
            harbor_log "replacing $k3s_registries, which Space Harbor did not write, with k3s.registries"
        fi
        # The files first: registries.yaml must never name one that is not there yet.
        k3s_write_registry_files
        harbor_write_if_changed "$k3s_registries" 600 "$HARBOR_K3S_REGISTRIES"
        if [ "$harbor_wrote" = true ]; then
            harbor_log "$k3s_registries written"
            k3s_registries_changed=true
        fi
    else
        if k3s_registries_ours; then
            rm -f "$k3s_registries"
            harbor_log "$k3s_registries removed: k3s.registries is not set"
            k3s_registries_changed=true
        elif [ -f "$k3s_registries" ]; then
            harbor_log "leaving $k3s_registries as it is: Space Harbor did not write it and k3s.registries is not set"
        fi
        k3s_write_registry_files
    fi
    if [ "$k3s_registries_changed" = true ]; then
        harbor_changed=true
    fi
}

k3s_sha256_of() {
    local sum
    sum=$(sha256sum -- "$1" 2>/dev/null) || return 0
    echo "${sum%% *}"
}

# k3s_take WHAT STAGED SHA256 DEST MODE: make DEST the file with SHA256, from STAGED when DEST is not
# it yet. The staged file is checked, then copied into DEST's directory and checked again there:
# the SSH user (maybe not root) owns the staged copy and could change it between a check and its use.
k3s_take() {
    local what=$1 staged=$2 want=$3 dest=$4 mode=$5 have tmp
    [[ "$want" =~ ^[0-9a-f]{64}$ ]] || harbor_fail "$what: the sha256 parameter is missing or malformed"
    if [ "$(k3s_sha256_of "$dest")" = "$want" ]; then
        return 0
    fi
    [ -n "$staged" ] && [ -f "$staged" ] ||
        harbor_fail "$what: the staged copy ${staged:-(none)} is not on this node, and $dest is not the pinned file" \
            "(sha256 $want); the copy step of this node stages it: run \`pulumi up --replace\` with that step's URN"
    k3s_check_staged "$what" "$staged"
    have=$(k3s_sha256_of "$staged")
    if [ "$have" != "$want" ]; then
        harbor_fail "$what: $staged has sha256 $have, the stack pinned $want; refusing to use it"
    fi
    mkdir -p "$(dirname "$dest")"
    harbor_mktemp tmp "$(dirname "$dest")/.$(basename "$dest").XXXXXX"
    cp -- "$staged" "$tmp"
    have=$(k3s_sha256_of "$tmp")
    if [ "$have" != "$want" ]; then
        harbor_fail "$what: $staged changed while it was copied (sha256 $have, pinned $want); refusing to use it"
    fi
    chmod "$mode" "$tmp"
    mv -f -- "$tmp" "$dest"
    harbor_log "$what: $dest is the pinned file (sha256 $want)"
    harbor_changed=true
}

# A staged copy is read only from the private staging directory, as a regular file of its owner
# (or root): never through a symlink, never one another local account put there.
k3s_check_staged() {
    local what=$1 staged=$2 dir owner parent
    dir=$(dirname -- "$staged")
    parent=$(dirname -- "$dir")
    if [ "$dir" != "$k3s_staging_dir" ] || [ -L "$dir" ] || [ -L "$parent" ]; then
        harbor_fail "$what: $staged is not in the private staging directory $k3s_staging_dir; refusing to use it"
    fi
    if [ "$(stat -c '%U %a' -- "$parent")" != "root 755" ] || [ "$(stat -c '%a' -- "$dir")" != 700 ]; then
        harbor_fail "$what: $dir is not the private staging directory (its parent must be root's, mode 0755," \
            "itself mode 0700); refusing to use $staged"
    fi
    owner=$(stat -c '%U' -- "$dir")
    if [ -L "$staged" ] || [ ! -f "$staged" ]; then
        harbor_fail "$what: $staged is not a regular file (a symlink?); refusing to use it"
    fi
    case "$(stat -c '%U' -- "$staged")" in
    root | "$owner") ;;
    *) harbor_fail "$what: $staged belongs to $(stat -c '%U' -- "$staged"), not to $owner (the SSH user) or root; refusing to use it" ;;
    esac
}

# prepare-staging: the staging directory, for the copy steps that follow (as HARBOR_STAGING_USER).
k3s_prepare_staging() {
    local user="${HARBOR_STAGING_USER:-}"
    if ! [[ "$user" =~ ^[A-Za-z0-9._][A-Za-z0-9._-]*$ ]] || ! id -u -- "$user" >/dev/null 2>&1; then
        harbor_fail "HARBOR_STAGING_USER must be the SSH user, an account on this node (got '${user}')"
    fi
    local path
    for path in "$k3s_staging_parent" "$k3s_staging_dir"; do
        if [ -L "$path" ] || { [ -e "$path" ] && [ ! -d "$path" ]; }; then
            harbor_fail "$path is not a directory (a symlink?); remove it and run pulumi up again"
        fi
    done
    if [ ! -d "$k3s_staging_parent" ]; then
        mkdir -m 755 -- "$k3s_staging_parent"
        harbor_changed=true
    fi
    if [ "$(stat -c '%U %G %a' -- "$k3s_staging_parent")" != "root root 755" ]; then
        chown root:root -- "$k3s_staging_parent"
        chmod 755 -- "$k3s_staging_parent"
        harbor_changed=true
    fi
    if [ ! -d "$k3s_staging_dir" ]; then
        mkdir -m 700 -- "$k3s_staging_dir"
        harbor_changed=true
    fi
    if [ "$(stat -c '%U %a' -- "$k3s_staging_dir")" != "$user 700" ]; then
        chown -- "$user" "$k3s_staging_dir"
        chmod 700 -- "$k3s_staging_dir"
        harbor_log "$k3s_staging_dir: owned by $user, mode 0700"
        harbor_changed=true
    fi
}

# The installer: only ever the pinned one, checked on this node.
k3s_take_installer() {
    k3s_take "k3s installer" "$k3s_installer_staged" "$k3s_installer_sha256" "$k3s_installer" 700
}

# Before an install or upgrade: the shipped binary in place, or (air gap) the one placed by hand
# checked; else the installer downloads it (and checks it against the release's checksums).
k3s_prepare_binary() {
    if [ -n "$k3s_binary_staged" ]; then
        k3s_take "k3s binary" "$k3s_binary_staged" "$k3s_binary_sha256" "$k3s_bin" 755
    fi
    if [ "$k3s_airgap" = true ]; then
        [ -x "$k3s_bin" ] || harbor_fail "air-gap install: $k3s_bin is missing; place the k3s $k3s_version binary there first"
        if ! k3s_version_matches; then
            harbor_fail "air-gap install: $k3s_bin reports '$(k3s_installed_version)', the stack wants $k3s_version;" \
                "ship that binary (k3s.airgap.binary) or place it first"
        fi
    else
        command -v curl >/dev/null 2>&1 || harbor_apt_install curl ca-certificates
    fi
}

# The shipped image archive, which k3s imports from its images directory at every start; another
# archive of ours (an older one, or one of another format) goes. Sets k3s_images_changed.
k3s_place_images() {
    local name="" suffix old
    k3s_images_changed=false
    if [ -n "$k3s_images_staged" ]; then
        suffix=${k3s_images_staged#*/space-harbor-k3s-images-*.}
        name="$k3s_images_name.$suffix"
        if [ "$(k3s_sha256_of "$k3s_images_dir/$name")" != "$k3s_images_sha256" ]; then
            k3s_take "k3s images" "$k3s_images_staged" "$k3s_images_sha256" "$k3s_images_dir/$name" 644
            k3s_images_changed=true
        fi
    fi
    for old in "$k3s_images_dir/$k3s_images_name".*; do
        if [ -f "$old" ] && [ "$old" != "$k3s_images_dir/$name" ]; then
            rm -f -- "$old"
            harbor_log "removed $old (no longer shipped)"
            k3s_images_changed=true
            harbor_changed=true
        fi
    done
}

# Staged copies of other runs (older versions, and all of the old /var/tmp ones) go; the current
# ones stay for a repair. `rm` on a symlink removes the link, never its target.
k3s_prune_staged() {
    local staged
    for staged in $k3s_staged_glob $k3s_legacy_staged_glob; do
        case "$staged" in
        "$k3s_installer_staged" | "$k3s_binary_staged" | "$k3s_images_staged") ;;
        *) if [ -f "$staged" ] || [ -L "$staged" ]; then rm -f -- "$staged"; fi ;;
        esac
    done
}

k3s_run_installer() {
    local unit
    unit=$(k3s_unit)
    k3s_prepare_binary
    k3s_place_images
    harbor_log "installing k3s $k3s_version as $k3s_role ($unit.service)"
    # INSTALL_K3S_SKIP_START: the installer's own restart waits without a bound (TimeoutStartSec=0);
    # the restart below is bounded. K3S_* from the caller's environment must not reach the unit.
    local -a env_args=(
        -u K3S_URL -u K3S_TOKEN -u K3S_TOKEN_FILE -u K3S_AGENT_TOKEN
        INSTALL_K3S_VERSION="$k3s_version"
        INSTALL_K3S_EXEC="$k3s_role"
        INSTALL_K3S_SKIP_START=true
    )
    if [ "$k3s_airgap" = true ]; then
        env_args+=(INSTALL_K3S_SKIP_DOWNLOAD=true)
    fi
    env "${env_args[@]}" sh "$k3s_installer" >&2 || harbor_fail "the k3s installer failed for $k3s_role $k3s_version"
    k3s_restart "$unit"
    harbor_changed=true
}

# systemctl restart waits for k3s' sd_notify READY; bound it so a node that cannot join fails
# this step instead of hanging `pulumi up`.
k3s_restart() {
    local unit=$1
    if ! timeout "$k3s_wait" systemctl restart "$unit"; then
        harbor_fail "$unit.service did not become active within ${k3s_wait}s; see journalctl -u $unit"
    fi
}

k3s_wait_for() {
    local what=$1 deadline=$((SECONDS + k3s_wait))
    shift
    until "$@"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            harbor_fail "timed out after ${k3s_wait}s waiting for $what"
        fi
        sleep 2
    done
}

k3s_unit_active() {
    systemctl is-active --quiet "$(k3s_unit)"
}

k3s_kubeconfig_ready() {
    [ -s "$k3s_kubeconfig" ]
}

# v1.31.4+k3s1 -> 1.31.4.1, which `sort -V` orders correctly.
k3s_sortable() {
    sed 's/^v//; s/+k3s/./'
}

# k3s supports upgrades only: an older binary on a newer datastore can corrupt it.
k3s_refuse_downgrade() {
    local recorded
    recorded=$(awk '{ print $2 }' "$k3s_record" 2>/dev/null || true)
    if [ -z "$recorded" ] || [ "$recorded" = "$k3s_version" ]; then
        return 0
    fi
    if [ "$(printf '%s\n%s\n' "$recorded" "$k3s_version" | k3s_sortable | sort -V | tail -n 1)" = \
        "$(printf '%s\n' "$recorded" | k3s_sortable)" ]; then
        harbor_fail "refusing to downgrade k3s from $recorded to $k3s_version: k3s supports upgrades only;" \
            "set k3s.version back to $recorded or newer (a downgrade means restoring a datastore backup)"
    fi
}

k3s_check_parameters() {
    k3s_check_role
    [[ "$k3s_version" =~ ^v[0-9]+\.[0-9]+\.[0-9]+\+k3s[0-9]+$ ]] ||
        harbor_fail "HARBOR_K3S_VERSION must look like v1.31.4+k3s1 (got '${k3s_version}')"
    [[ "$k3s_wait" =~ ^[0-9]+$ ]] || harbor_fail "HARBOR_K3S_WAIT_TIMEOUT must be a number of seconds"
    [[ "$k3s_packages" =~ ^[[:space:]]*([a-z0-9][a-z0-9+.-]+([[:space:]]+|$))*$ ]] ||
        harbor_fail "HARBOR_NODE_PACKAGES must be Debian package names separated by spaces (got '${k3s_packages}')"
    [[ "$k3s_generation" =~ ^[0-9]+$ ]] || harbor_fail "HARBOR_K3S_REINSTALL must be a number (got '${k3s_generation}')"
    harbor_has_systemd || harbor_fail "systemd is not running on this node; Space Harbor runs k3s as a systemd service"
}

# The role and version this script last installed here, from its record ("<role> <version>").
k3s_recorded_role() {
    awk '{ print $1 }' "$k3s_record" 2>/dev/null || true
}

k3s_recorded_version() {
    awk '{ print $2 }' "$k3s_record" 2>/dev/null || true
}

# The reinstall counter of the last install here; 0 for an install from before the counter.
k3s_recorded_generation() {
    local generation
    generation=$(cat "$k3s_generation_record" 2>/dev/null || true)
    echo "${generation:-0}"
}

k3s_generation_matches() {
    [ "$(k3s_recorded_generation)" = "$k3s_generation" ]
}

# Whether k3s is installed here for this role: a record, a binary and the enabled unit.
k3s_installed() {
    local unit
    unit=$(k3s_unit)
    [ "$(k3s_recorded_role)" = "$k3s_role" ] && [ -x "$k3s_bin" ] &&
        [ -n "$(systemctl list-unit-files --no-legend "$unit.service" 2>/dev/null)" ] &&
        systemctl is-enabled --quiet "$unit"
}

# Restart when config.yaml, the registry files or the shipped images changed, start when the unit
# is down; the version
# stays as it is.
k3s_apply_config() {
    local unit
    unit=$(k3s_unit)
    k3s_place_images
    if [ "$k3s_config_changed" = true ] || [ "$k3s_registries_changed" = true ] ||
        [ "$k3s_images_changed" = true ]; then
        local changed=()
        [ "$k3s_config_changed" = false ] || changed+=(config.yaml)
        [ "$k3s_registries_changed" = false ] || changed+=(registries.yaml)
        [ "$k3s_images_changed" = false ] || changed+=("the shipped images")
        harbor_log "${changed[*]} changed: restarting $unit"
        k3s_restart "$unit"
    elif [ "$k3s_config_changed" = server ] && k3s_unit_active; then
        harbor_log "only the server: line of config.yaml changed: k3s reads it only to join, so $unit is not" \
            "restarted; the new value takes effect at its next restart"
    elif ! k3s_unit_active; then
        harbor_log "$unit is not running: starting it"
        k3s_restart "$unit"
        harbor_changed=true
    fi
}

k3s_install_version() {
    k3s_run_installer
    printf '%s %s\n' "$k3s_role" "$k3s_version" >"$k3s_record"
    printf '%s\n' "$k3s_generation" >"$k3s_generation_record"
}

# The reinstall verb: the installer again, at the version this node runs, over what is there (no
# uninstall: config, registries and the node's data under /var/lib/rancher/k3s stay). A version
# change in the same run is left to the upgrade step, whose install is the reinstall.
k3s_reinstall() {
    local installed
    installed=$(k3s_recorded_version)
    if [ "$installed" != "$k3s_version" ]; then
        harbor_log "reinstall $k3s_generation (was $(k3s_recorded_generation)): k3s.version moves from $installed to" \
            "$k3s_version in this run, so the upgrade step reinstalls it, in the stack's upgrade order"
        k3s_apply_config
        return 0
    fi
    harbor_log "reinstall $k3s_generation (was $(k3s_recorded_generation)): rerunning the k3s installer at $installed"
    k3s_install_version
}

k3s_wait_until_serving() {
    local unit
    unit=$(k3s_unit)
    k3s_wait_for "$unit.service to be active" k3s_unit_active
    if [ "$k3s_role" = server ]; then
        k3s_wait_for "$k3s_kubeconfig" k3s_kubeconfig_ready
    fi
}

k3s_refuse_role_change() {
    local recorded
    recorded=$(k3s_recorded_role)
    if [ -n "$recorded" ] && [ "$recorded" != "$k3s_role" ]; then
        harbor_fail "this node runs k3s as $recorded and the stack says $k3s_role; a role is not changed in place:" \
            "remove the node from nodes, run pulumi up, then add it back with the new role"
    fi
}

# What the platform components need on the node comes first: a k3s that runs before them would
# start pods (Longhorn's) that fail on the missing tools.
k3s_ensure_node_packages() {
    local -a packages=()
    read -r -a packages <<<"$k3s_packages"
    if [ "${#packages[@]}" -gt 0 ]; then
        harbor_apt_ensure "${packages[@]}"
    fi
}

k3s_install() {
    k3s_check_parameters
    [ -n "${HARBOR_K3S_CONFIG:-}" ] || harbor_fail "HARBOR_K3S_CONFIG is empty"
    k3s_refuse_role_change
    k3s_refuse_downgrade
    k3s_take_installer
    k3s_ensure_node_packages
    k3s_write_config
    k3s_write_registries
    if k3s_installed && k3s_version_matches && [ "$(k3s_recorded_version)" = "$k3s_version" ]; then
        if k3s_generation_matches; then
            k3s_apply_config
        else
            k3s_reinstall
        fi
    else
        k3s_install_version
    fi
    k3s_wait_until_serving
    k3s_prune_staged
}

k3s_reconfigure() {
    k3s_check_parameters
    [ -n "${HARBOR_K3S_CONFIG:-}" ] || harbor_fail "HARBOR_K3S_CONFIG is empty"
    k3s_refuse_role_change
    k3s_take_installer
    k3s_ensure_node_packages
    k3s_write_config
    k3s_write_registries
    if ! k3s_installed; then
        # Nothing (or a half-removed install) here: repair it at the stack's version.
        harbor_log "k3s is not installed here: installing $k3s_version"
        k3s_refuse_downgrade
        k3s_install_version
    elif ! k3s_generation_matches; then
        k3s_reinstall
    elif k3s_binary_replaced; then
        k3s_restore_binary
    else
        k3s_apply_config
    fi
    k3s_wait_until_serving
    k3s_prune_staged
}

# The binary reports another version than the one this script installed and recorded, which is
# the stack's: it was replaced by hand (a version change of the stack goes through `upgrade`).
k3s_binary_replaced() {
    [ "$(k3s_recorded_version)" = "$k3s_version" ] && ! k3s_version_matches
}

# Put the stack's version back: the installer again, which is an upgrade from an older binary.
# A newer one is never replaced by an older (its datastore may be migrated already); it may also be
# the binary an air-gap operator placed ahead of raising k3s.version. It stays, and so does the
# rest: config and service are reconciled as usual.
k3s_restore_binary() {
    local found newest
    found=$(k3s_installed_version | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^v[0-9]/) { print $i; exit } }')
    if [ -n "$found" ]; then
        newest=$(printf '%s\n%s\n' "$found" "$k3s_version" | k3s_sortable | sort -V | tail -n 1)
        if [ "$newest" = "$(printf '%s\n' "$found" | k3s_sortable)" ]; then
            harbor_log "$k3s_bin reports $found, newer than $k3s_version, which the stack installed here: left" \
                "as it is (never downgraded); set k3s.version to $found to upgrade to it, or put the $k3s_version binary back"
            k3s_apply_config
            return 0
        fi
    fi
    harbor_log "$k3s_bin reports ${found:-no version}, the stack installed $k3s_version: installing $k3s_version again"
    k3s_install_version
}

k3s_upgrade() {
    k3s_check_parameters
    k3s_refuse_role_change
    [ -f "$k3s_config" ] || harbor_fail "$k3s_config is missing: the install step writes it before any upgrade"
    if k3s_installed && k3s_version_matches && [ "$(k3s_recorded_version)" = "$k3s_version" ]; then
        harbor_log "k3s $k3s_version is already installed"
        k3s_wait_until_serving
        return 0
    fi
    k3s_refuse_downgrade
    k3s_take_installer
    harbor_log "upgrading k3s from $(k3s_recorded_version) to $k3s_version"
    k3s_install_version
    k3s_wait_until_serving
    k3s_prune_staged
}

k3s_uninstall() {
    k3s_check_role
    local script=/usr/local/bin/k3s-uninstall.sh
    if [ "$k3s_role" = agent ]; then
        script=/usr/local/bin/k3s-agent-uninstall.sh
    fi
    if [ -x "$script" ]; then
        harbor_log "running $script"
        "$script" >&2 || harbor_fail "$script failed"
        harbor_changed=true
    fi
    if [ -e "$k3s_config" ]; then
        rm -f "$k3s_config"
        harbor_changed=true
    fi
    if k3s_registries_ours; then
        rm -f "$k3s_registries"
        harbor_changed=true
    fi
    if [ -d "$k3s_registry_files" ]; then
        rm -rf "$k3s_registry_files"
        harbor_changed=true
    fi
    rm -f "$k3s_record" "$k3s_generation_record"
    # The staged copies stay: a replaced install step (uninstall, then install) needs them. The
    # node's `shipped` step removes them when the node leaves (`remove-shipped`).
    if [ -f "$k3s_installer" ]; then
        rm -f -- "$k3s_installer"
        harbor_changed=true
    fi
    rmdir /usr/local/share/space-harbor 2>/dev/null || true
}

# The staged copies of every shipped file: the copy steps' own deletes remove nothing. Also those
# an older version staged in /var/tmp (its files, or links in their place), and the directory.
k3s_remove_shipped() {
    local staged
    for staged in $k3s_staged_glob $k3s_legacy_staged_glob; do
        if [ -f "$staged" ] || [ -L "$staged" ]; then
            rm -f -- "$staged"
            harbor_log "removed $staged"
            harbor_changed=true
        fi
    done
    if [ -d "$k3s_staging_dir" ] && [ ! -L "$k3s_staging_dir" ] && rmdir -- "$k3s_staging_dir" 2>/dev/null; then
        harbor_changed=true
    fi
    rmdir -- "$k3s_staging_parent" 2>/dev/null || true
}

case "$harbor_action" in
install) k3s_install ;;
reconfigure) k3s_reconfigure ;;
upgrade) k3s_upgrade ;;
uninstall) k3s_uninstall ;;
prepare-staging) k3s_prepare_staging ;;
remove-shipped) k3s_remove_shipped ;;
*) harbor_fail "unknown action '${harbor_action}'; use install, reconfigure, upgrade, uninstall, prepare-staging or remove-shipped" ;;
esac

harbor_finish
