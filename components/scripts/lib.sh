# shellcheck shell=bash
# Space Harbor's shell library: what every node script shares. script_payload
# (components/render/remote.py) puts it ahead of each script's body; a script run by hand from a
# checkout loads it from beside itself. It defines functions and state only, and runs nothing.
#
# A script sets `harbor_script` (its file name) and `harbor_action` (its first argument) before
# it calls anything here; every message then names both:
#   space-harbor: <script> <action>: <text>
#   space-harbor: <script> <action>: error: <text>
set -euo pipefail

# Whether this run changed the node; `harbor_finish` reports it as the run's last line.
harbor_changed=false
# Whether the last harbor_write_if_changed replaced its file. (Not a condition-style function:
# `set -e` is off inside those.) Read by the scripts, which shellcheck may see apart from this file.
# shellcheck disable=SC2034
harbor_wrote=false
# Temporary files of this run; removed on exit, whatever the exit.
harbor_tmp_files=()

harbor_cleanup() {
    if [ "${#harbor_tmp_files[@]}" -gt 0 ]; then
        rm -f -- "${harbor_tmp_files[@]}"
    fi
}
trap harbor_cleanup EXIT

harbor_fail() {
    echo "space-harbor: ${harbor_script:-?} ${harbor_action:-?}: error: $*" >&2
    exit 1
}

harbor_log() {
    echo "space-harbor: ${harbor_script:-?} ${harbor_action:-}: $*" >&2
}

# The run's last line on stdout: `space-harbor: <script> <action>: changed|unchanged`.
harbor_finish() {
    if [ "$harbor_changed" = true ]; then
        echo "space-harbor: $harbor_script $harbor_action: changed"
    else
        echo "space-harbor: $harbor_script $harbor_action: unchanged"
    fi
}

# sd_booted(3): systemd is PID 1 exactly when this directory exists.
harbor_has_systemd() {
    [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1
}

# harbor_mktemp VAR TEMPLATE: a new temporary file (mktemp TEMPLATE), removed on exit; its path
# goes into the variable VAR (a command substitution would lose the cleanup entry in a subshell).
harbor_mktemp() {
    # An unusual local name: printf -v assigns the caller's variable only if no local here shadows it.
    local __harbor_new_tmp
    __harbor_new_tmp=$(mktemp "$2") || harbor_fail "cannot create a temporary file like $2"
    harbor_tmp_files+=("$__harbor_new_tmp")
    printf -v "$1" '%s' "$__harbor_new_tmp"
}

harbor_apt_install() {
    harbor_log "installing $*"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >&2; then
        # A fresh image may have no package lists yet.
        DEBIAN_FRONTEND=noninteractive apt-get update >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >&2
    fi
    harbor_changed=true
}

# harbor_apt_ensure PACKAGE...: install those of the packages that dpkg does not list as
# installed; nothing (and no apt call) when every one is.
harbor_apt_ensure() {
    local package
    local -a missing=()
    for package in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'ok installed'; then
            missing+=("$package")
        fi
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        harbor_apt_install "${missing[@]}"
    fi
}

# harbor_write_if_changed TARGET MODE [TEXT]: make TARGET hold TEXT (with one final newline), or
# stdin's bytes when TEXT is not given, at MODE. Written to a temporary file beside it and moved
# over it only when the bytes differ, so a reader never sees half a file and an unchanged file
# keeps its timestamp. Sets harbor_wrote. Files are created under umask 077: TEXT may be a secret.
# shellcheck disable=SC2034
harbor_write_if_changed() {
    local target=$1 mode=$2 dir base tmp
    dir=$(dirname "$target")
    base=$(basename "$target")
    harbor_wrote=false
    umask 077
    mkdir -p "$dir"
    # A run killed before its EXIT trap leaves its temporary file; the name is ours alone.
    rm -f -- "$dir/.$base."??????
    harbor_mktemp tmp "$dir/.$base.XXXXXX"
    if [ "$#" -ge 3 ]; then
        printf '%s\n' "${3%$'\n'}" >"$tmp"
    else
        cat >"$tmp"
    fi
    chmod "$mode" "$tmp"
    if [ -f "$target" ] && cmp -s "$tmp" "$target"; then
        rm -f "$tmp"
        chmod "$mode" "$target"
        return 0
    fi
    mv -f "$tmp" "$target"
    harbor_wrote=true
}
