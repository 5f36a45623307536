#!/usr/bin/env bash
# Space Harbor node firewall: one nftables table of our own, applied atomically, kept across reboots.
#
#   firewall.sh apply   install nftables (and netbase, for /etc/protocols) if missing, store the
#                       ruleset, validate it, then replace our table (and only it) in one nft
#                       transaction, also when the live table no longer lists as it did right
#                       after the last load (edited or flushed by hand; drift-read.sh reports it);
#                       a oneshot unit reloads it at boot when systemd runs
#   firewall.sh remove  delete our table, its boot unit, its file and the record of its listing
#
# Parameters (environment):
#   HARBOR_NFT_TABLE    name of our `table inet`, e.g. space_harbor
#   HARBOR_NFT_RULESET  the full text `table inet <name> { ... }` (components/render/nftables.py)
#
# The whole ruleset is never flushed and /etc/nftables.conf is never touched: k3s, Docker or the
# admin may own other tables. The last line of output is `space-harbor: firewall.sh <action>: ...`.
set -euo pipefail
# The payload brings lib.sh ahead of this body; run by hand from a checkout, load it from beside it.
# shellcheck source-path=SCRIPTDIR source=lib.sh
declare -F harbor_fail >/dev/null || . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

harbor_script=firewall.sh
harbor_action="${1:-}"
fw_table="${HARBOR_NFT_TABLE:-}"
fw_dir=/etc/space-harbor
fw_file="$fw_dir/firewall.nft"
fw_unit=space-harbor-firewall.service
fw_unit_file="/etc/systemd/system/$fw_unit"
# The sha256 of our table as nft lists it (stateless: no counters) right after this script loaded
# it. A live table that lists otherwise was changed by hand (`nft flush table`, a rule deleted):
# the next apply loads it again, and drift-read.sh reports it.
fw_live_record="$fw_dir/firewall.live"

# nft resolves protocol names (icmp, ipv6-icmp) through /etc/protocols, which netbase ships;
# slim images leave it out. dpkg keeps a conffile that was deleted by hand deleted, even on a
# reinstall, unless told to restore missing ones.
fw_ensure_protocols() {
    [ -e /etc/protocols ] && return 0
    if dpkg-query -W -f='${Status}' netbase 2>/dev/null | grep -q 'ok installed'; then
        harbor_apt_install --reinstall -o Dpkg::Options::=--force-confmiss netbase
    else
        harbor_apt_install netbase
    fi
    [ -e /etc/protocols ] || harbor_fail "/etc/protocols is still missing after installing netbase"
}

fw_table_live() {
    nft list table inet "$fw_table" >/dev/null 2>&1
}

fw_live_fingerprint() {
    nft -s list table inet "$fw_table" 2>/dev/null | sha256sum | cut -d' ' -f1
}

# The live table is the one this script loaded. Without a record (a table loaded before the
# record existed) it cannot tell, so it says no: one more load, atomic, makes the record.
fw_live_as_loaded() {
    [ -f "$fw_live_record" ] && [ "$(head -n 1 "$fw_live_record")" = "$(fw_live_fingerprint)" ]
}

# The stored file is one transaction: create-if-missing, delete, then the new table. So it loads
# the same way on a live system and at boot, and the old table is replaced without a gap.
fw_transaction() {
    printf '# Space Harbor: replaces table inet %s atomically; nothing else.\n' "$fw_table"
    printf 'table inet %s {}\n' "$fw_table"
    printf 'delete table inet %s\n' "$fw_table"
    printf '%s\n' "${HARBOR_NFT_RULESET%$'\n'}"
}

fw_check_ruleset() {
    [ -n "${HARBOR_NFT_RULESET:-}" ] || harbor_fail "HARBOR_NFT_RULESET is empty"
    # Only our table may appear: this script must not be able to replace anybody else's.
    local tables
    tables=$(printf '%s\n' "$HARBOR_NFT_RULESET" | grep -E '^[[:space:]]*table[[:space:]]' || true)
    if [ "$(printf '%s\n' "$tables" | grep -c .)" -ne 1 ] ||
        ! printf '%s\n' "$tables" | grep -Eq "^[[:space:]]*table[[:space:]]+inet[[:space:]]+${fw_table}[[:space:]]*\{"; then
        harbor_fail "HARBOR_NFT_RULESET must declare exactly one table, 'table inet $fw_table { ... }'"
    fi
}

fw_unit_text() {
    local nft_bin
    nft_bin=$(command -v nft)
    cat <<EOF
# Managed by Space Harbor. Loads table inet $fw_table at boot, and again after nftables.service
# (whose /etc/nftables.conf usually starts with "flush ruleset") starts, restarts or reloads.
[Unit]
Description=Space Harbor node firewall (nftables table inet $fw_table)
DefaultDependencies=no
Wants=network-pre.target
Before=network-pre.target shutdown.target
After=nftables.service
PartOf=nftables.service
ReloadPropagatedFrom=nftables.service
Conflicts=shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=$nft_bin -f $fw_file
ExecReload=$nft_bin -f $fw_file

[Install]
WantedBy=sysinit.target
EOF
}

fw_apply() {
    fw_check_ruleset
    command -v nft >/dev/null 2>&1 || harbor_apt_install nftables
    fw_ensure_protocols

    umask 077
    mkdir -p "$fw_dir"
    chmod 700 "$fw_dir"
    rm -f -- "$fw_dir"/.candidate.?????? # left by a run killed before its EXIT trap

    # Validate before anything is stored or live: a bad ruleset must leave the old one in force.
    local candidate
    harbor_mktemp candidate "$fw_dir/.candidate.XXXXXX"
    fw_transaction >"$candidate"
    if ! nft -c -f "$candidate" >&2; then
        harbor_fail "nft rejected the ruleset for table inet $fw_table; the live firewall is unchanged"
    fi

    # Load first, then store: a run cut in between leaves a stored file that differs from the
    # candidate, so the next run loads again. Stored first, a run cut before the load would leave
    # the new file beside the old live table, and the next run would find nothing to do.
    if ! { [ -f "$fw_file" ] && cmp -s "$candidate" "$fw_file" && fw_table_live && fw_live_as_loaded; }; then
        nft -f "$candidate" >&2 || harbor_fail "loading the ruleset failed; table inet $fw_table is unchanged"
        harbor_log "table inet $fw_table loaded"
        harbor_changed=true
    fi
    harbor_write_if_changed "$fw_file" 600 <"$candidate"
    harbor_write_if_changed "$fw_live_record" 600 "$(fw_live_fingerprint)"

    if harbor_has_systemd; then
        harbor_write_if_changed "$fw_unit_file" 644 <<<"$(fw_unit_text)"
        if [ "$harbor_wrote" = true ]; then
            systemctl daemon-reload
            harbor_changed=true
        fi
        if ! systemctl is-enabled --quiet "$fw_unit" 2>/dev/null; then
            systemctl enable --quiet "$fw_unit"
            harbor_changed=true
        fi
        # Active, so that a restart of nftables.service re-applies our table (PartOf).
        if ! systemctl is-active --quiet "$fw_unit"; then
            systemctl start "$fw_unit"
            harbor_changed=true
        fi
    else
        harbor_log "systemd is not running: table inet $fw_table is live but not reloaded at boot"
    fi
}

fw_remove() {
    if command -v nft >/dev/null 2>&1 && fw_table_live; then
        nft delete table inet "$fw_table"
        harbor_changed=true
    fi
    if harbor_has_systemd; then
        if systemctl is-enabled --quiet "$fw_unit" 2>/dev/null; then
            systemctl disable --quiet "$fw_unit"
            harbor_changed=true
        fi
        # The unit has no ExecStop: stopping it only marks it inactive; the table is gone above.
        if systemctl is-active --quiet "$fw_unit"; then
            systemctl stop "$fw_unit"
            harbor_changed=true
        fi
    fi
    if [ -e "$fw_unit_file" ]; then
        rm -f "$fw_unit_file"
        if harbor_has_systemd; then
            systemctl daemon-reload
        fi
        harbor_changed=true
    fi
    if [ -e "$fw_file" ]; then
        rm -f "$fw_file"
        harbor_changed=true
    fi
    rm -f "$fw_live_record"
    if [ -d "$fw_dir" ]; then
        rmdir "$fw_dir" 2>/dev/null || true
    fi
}

if ! [[ "$fw_table" =~ ^[A-Za-z][A-Za-z0-9_]{0,63}$ ]]; then
    harbor_fail "HARBOR_NFT_TABLE must be a table name like space_harbor (got '${fw_table}')"
fi
case "$harbor_action" in
apply) fw_apply ;;
remove) fw_remove ;;
*) harbor_fail "unknown action '${harbor_action}'; use apply or remove" ;;
esac

harbor_finish
