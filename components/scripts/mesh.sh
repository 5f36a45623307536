#!/usr/bin/env bash
# Space Harbor WireGuard mesh: one wg-quick interface per node, changed in place, never bounced.
#
#   mesh.sh apply   install WireGuard if missing, write /etc/wireguard/<if>.conf, bring the
#                   interface up, or, when it is already up, apply the new file with
#                   `wg syncconf` (peers added or removed without disturbing the others)
#   mesh.sh remove  take the interface down, disable it at boot and delete its file
#
# Parameters (environment):
#   HARBOR_WG_INTERFACE  interface name, e.g. wg-harbor
#   HARBOR_WG_CONFIG     the wg-quick file text (holds the private key; written 0600, never on argv)
#
# Assumption about the file (components/render/wireguard.py renders it so): `Address` carries the
# mesh prefix (e.g. 10.160.0.1/12), so the kernel's subnet route reaches every peer and a new peer
# needs no route of its own. For AllowedIPs outside that subnet this script still adds and removes
# the routes that wg-quick would have made. Table, FwMark, DNS and Pre/Post hooks are not used by
# Space Harbor and are applied only when the interface comes up, never on a live change.
# The last line of output is `space-harbor: mesh.sh <action>: changed|unchanged`.
set -euo pipefail
# The payload brings lib.sh ahead of this body; run by hand from a checkout, load it from beside it.
# shellcheck source-path=SCRIPTDIR source=lib.sh
declare -F harbor_fail >/dev/null || . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

harbor_script=mesh.sh
harbor_action="${1:-}"
wg_if="${HARBOR_WG_INTERFACE:-}"
wg_dir=/etc/wireguard
wg_file="$wg_dir/$wg_if.conf"
wg_unit="wg-quick@$wg_if.service"

wg_link_exists() {
    ip link show dev "$wg_if" >/dev/null 2>&1
}

# The kernel module is preferred; without it wg-quick falls back to wireguard-go by itself.
wg_kernel_supported() {
    local probe="hbwgprobe$$"
    probe=${probe:0:15}
    if ip link add dev "$probe" type wireguard >/dev/null 2>&1; then
        ip link delete dev "$probe" >/dev/null 2>&1 || true
        return 0
    fi
    return 1
}

wg_ensure_tools() {
    if ! command -v wg >/dev/null 2>&1 || ! command -v wg-quick >/dev/null 2>&1; then
        harbor_apt_install wireguard-tools
    fi
    if ! wg_kernel_supported && ! command -v wireguard-go >/dev/null 2>&1; then
        harbor_log "the kernel has no WireGuard module; using the userspace implementation"
        harbor_apt_install wireguard-go
    fi
}

# Values of `Key = value` in the [Interface] or every [Peer] section of a wg-quick text, one per
# line, comma lists split. $1: text, $2: section (Interface|Peer), $3: key.
wg_values() {
    printf '%s\n' "$1" | awk -v want_section="$2" -v want_key="$3" '
        { sub(/#.*/, "") }
        /^[ \t]*\[/ { gsub(/[][ \t]/, ""); section = $0; next }
        section == want_section {
            split($0, kv, "=")
            key = kv[1]; gsub(/[ \t]/, "", key)
            if (tolower(key) != tolower(want_key)) next
            value = substr($0, index($0, "=") + 1)
            n = split(value, items, ",")
            for (i = 1; i <= n; i++) { gsub(/[ \t\r]/, "", items[i]); if (items[i] != "") print items[i] }
        }'
}

# What `wg syncconf` can change, minus what changes by itself (endpoints roam, handshakes tick).
wg_live_signature() {
    wg show "$wg_if" public-key
    wg show "$wg_if" listen-port
    wg show "$wg_if" allowed-ips | sort
    wg show "$wg_if" persistent-keepalive | sort
}

wg_bring_up() {
    if harbor_has_systemd; then
        systemctl enable --quiet "$wg_unit"
        # The unit may think it is up while its link was deleted by hand: stop it first.
        if systemctl is-active --quiet "$wg_unit"; then
            systemctl stop "$wg_unit" || true
        fi
        systemctl reset-failed "$wg_unit" >/dev/null 2>&1 || true
        systemctl start "$wg_unit" || harbor_fail "systemctl start $wg_unit failed; see journalctl -u $wg_unit"
    else
        wg-quick up "$wg_if" >&2 || harbor_fail "wg-quick up $wg_if failed"
    fi
    harbor_log "interface $wg_if is up"
    harbor_changed=true
}

# The interface is up: change it in place. Never down/up, which would cut every tunnel.
wg_reconcile() {
    local old_text=$1 before after stripped
    before=$(wg_live_signature)
    stripped=$(wg-quick strip "$wg_if") || harbor_fail "wg-quick strip $wg_if failed; is $wg_file valid?"
    wg syncconf "$wg_if" <(printf '%s\n' "$stripped") || harbor_fail "wg syncconf $wg_if failed"
    after=$(wg_live_signature)
    if [ "$before" != "$after" ]; then
        harbor_log "peers of $wg_if updated with wg syncconf"
        harbor_changed=true
    fi
    wg_reconcile_addresses
    wg_reconcile_mtu
    wg_reconcile_routes "$old_text"
}

wg_reconcile_addresses() {
    local want have address
    want=$(wg_values "$HARBOR_WG_CONFIG" Interface Address | sort -u)
    have=$(ip -o addr show dev "$wg_if" | awk '$3 == "inet" || ($3 == "inet6" && $4 !~ /^fe80:/) { print $4 }' | sort -u)
    # Old addresses go first: a new one in the same subnet would otherwise become a secondary
    # address that the kernel deletes together with the old primary.
    while read -r address; do
        [ -n "$address" ] || continue
        ip addr del "$address" dev "$wg_if"
        harbor_log "removed address $address from $wg_if"
        harbor_changed=true
    done < <(comm -13 <(printf '%s\n' "$want") <(printf '%s\n' "$have"))
    while read -r address; do
        [ -n "$address" ] || continue
        ip addr add "$address" dev "$wg_if"
        harbor_log "added address $address to $wg_if"
        harbor_changed=true
    done < <(comm -23 <(printf '%s\n' "$want") <(printf '%s\n' "$have"))
}

wg_reconcile_mtu() {
    local want have
    want=$(wg_values "$HARBOR_WG_CONFIG" Interface MTU | tail -n 1)
    [ -n "$want" ] || return 0 # wg-quick picked one when the link came up; keep it
    have=$(ip -o link show dev "$wg_if" | sed -n 's/.* mtu \([0-9]*\) .*/\1/p')
    if [ "$want" != "$have" ]; then
        ip link set dev "$wg_if" mtu "$want"
        harbor_log "MTU of $wg_if set to $want (was $have)"
        harbor_changed=true
    fi
}

# wg-quick routes each AllowedIPs prefix to the interface unless a route on it already matches.
# Default routes (/0) need wg-quick's policy routing; Space Harbor never renders them.
wg_reconcile_routes() {
    local old_text=$1 prefix family
    while read -r _peer prefixes; do
        for prefix in $prefixes; do
            [ "$prefix" != "(none)" ] || continue
            case "$prefix" in */0) continue ;; esac
            family=-4
            case "$prefix" in *:*) family=-6 ;; esac
            if [ -z "$(ip "$family" route show dev "$wg_if" match "$prefix" 2>/dev/null)" ]; then
                ip "$family" route add "$prefix" dev "$wg_if"
                harbor_log "route $prefix via $wg_if added"
                harbor_changed=true
            fi
        done
    done < <(wg show "$wg_if" allowed-ips)
    # Routes that wg-quick would have made for AllowedIPs that are gone now (exact prefix, never
    # the subnet route that the kernel made for Address, which is `proto kernel`).
    local live
    live=$(wg show "$wg_if" allowed-ips | awk '{ for (i = 2; i <= NF; i++) print $i }')
    while read -r prefix; do
        [ -n "$prefix" ] || continue
        if printf '%s\n' "$live" | grep -qxF "$prefix"; then
            continue
        fi
        family=-4
        case "$prefix" in *:*) family=-6 ;; esac
        if [ -n "$(ip "$family" route show "$prefix" dev "$wg_if" proto boot 2>/dev/null)" ]; then
            ip "$family" route del "$prefix" dev "$wg_if" proto boot
            harbor_log "route $prefix via $wg_if removed"
            harbor_changed=true
        fi
    done < <(wg_values "$old_text" Peer AllowedIPs | sort -u)
}

wg_write_config() {
    harbor_write_if_changed "$wg_file" 600 "$HARBOR_WG_CONFIG"
    if [ "$harbor_wrote" = true ]; then
        harbor_log "$wg_file written"
        harbor_changed=true
    fi
}

wg_apply() {
    [ -n "${HARBOR_WG_CONFIG:-}" ] || harbor_fail "HARBOR_WG_CONFIG is empty"
    # A bash regex, not grep on a here-string: the text holds the private key, and bash before 5.1
    # writes a here-string to a temporary file.
    local interface_line=$'(^|\n)[[:space:]]*\\[Interface\\]'
    [[ $HARBOR_WG_CONFIG =~ $interface_line ]] ||
        harbor_fail "HARBOR_WG_CONFIG has no [Interface] section"
    wg_ensure_tools

    local old_text=""
    if [ -f "$wg_file" ]; then
        old_text=$(cat "$wg_file")
    fi
    wg_write_config

    if wg_link_exists; then
        # Also when the file was unchanged: a previous run may have written it and then failed
        # before applying it. syncconf with identical content changes nothing.
        wg_reconcile "$old_text"
    else
        wg_bring_up
    fi

    if harbor_has_systemd && ! systemctl is-enabled --quiet "$wg_unit" 2>/dev/null; then
        systemctl enable --quiet "$wg_unit"
        harbor_log "$wg_unit enabled at boot"
        harbor_changed=true
    fi
}

wg_remove() {
    if harbor_has_systemd; then
        if systemctl is-enabled --quiet "$wg_unit" 2>/dev/null; then
            systemctl disable --quiet "$wg_unit"
            harbor_changed=true
        fi
        if systemctl is-active --quiet "$wg_unit"; then
            systemctl stop "$wg_unit" || harbor_log "warning: systemctl stop $wg_unit failed"
            harbor_changed=true
        fi
    fi
    # Brought up without systemd (or the stop failed): take it down directly.
    if wg_link_exists; then
        if [ -f "$wg_file" ] && command -v wg-quick >/dev/null 2>&1; then
            wg-quick down "$wg_if" >&2 || ip link delete dev "$wg_if"
        else
            ip link delete dev "$wg_if"
        fi
        harbor_changed=true
    fi
    if [ -e "$wg_file" ]; then
        rm -f "$wg_file"
        harbor_changed=true
    fi
}

if ! [[ "$wg_if" =~ ^[a-zA-Z0-9_=+.-]{1,15}$ ]]; then
    harbor_fail "HARBOR_WG_INTERFACE must be an interface name of 1-15 of a-z A-Z 0-9 _=+.- (got '${wg_if}')"
fi
case "$harbor_action" in
apply) wg_apply ;;
remove) wg_remove ;;
*) harbor_fail "unknown action '${harbor_action}'; use apply or remove" ;;
esac

harbor_finish
