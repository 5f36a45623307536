#!/usr/bin/env bash
# Space Harbor drift read: what a node runs now, as fingerprints, for `pulumi refresh`. READ-ONLY.
#
#   drift-read.sh read   print one `<fact> <value...>` line per fact below; change nothing
#
# Like the preflight, it only looks: it writes no file, starts or stops nothing and loads nothing.
# It prints no secret: files that hold one (config.yaml, registries.yaml, the WireGuard file) are
# printed as their sha256 only, and of the interface only its public key, port and peers.
#
# Parameters (environment):
#   HARBOR_K3S_ROLE       server | agent (which unit runs k3s)
#   HARBOR_WG_INTERFACE   optional, the mesh interface (e.g. wg-harbor); unset: the mesh is off
#   HARBOR_NFT_TABLE      optional, our `table inet` (e.g. space_harbor); unset: the firewall is off
#
# Facts (components/render/drift.py reads them; `absent` when there is nothing to read):
#   k3s.config <sha256>            /etc/rancher/k3s/config.yaml
#   k3s.registries <sha256> <ours> /etc/rancher/k3s/registries.yaml; ours: yes when we wrote it
#   k3s.version <version>          what /usr/local/bin/k3s --version reports
#   k3s.unit <active> <enabled>    k3s.service or k3s-agent.service
#   wg.file <sha256>               /etc/wireguard/<if>.conf
#   wg.link present|absent
#   wg.public-key <key>            the live interface's own public key
#   wg.listen-port <port>
#   wg.peer <public key> <allowed ips, comma-separated>   one line per live peer
#   wg.unit <active> <enabled>     wg-quick@<if>.service
#   nft.table present|absent
#   nft.rules <count>              rules in our table (0 after `nft flush table`)
#   nft.live <sha256>              of `nft -s list table inet <table>` (stateless: no counters)
#   nft.loaded <sha256>            the same, as firewall.sh recorded it when it loaded the table
#   nft.file <sha256>              /etc/space-harbor/firewall.nft
#   nft.bin <path>                 the nft that the firewall unit runs
#   nft.unit-file <sha256>         /etc/systemd/system/space-harbor-firewall.service
#   nft.unit <active> <enabled>
set -euo pipefail
# The payload brings lib.sh ahead of this body; run by hand from a checkout, load it from beside it.
# shellcheck source-path=SCRIPTDIR source=lib.sh
declare -F harbor_fail >/dev/null || . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

harbor_script=drift-read.sh
harbor_action="${1:-}"
dr_role="${HARBOR_K3S_ROLE:-}"
dr_wg_if="${HARBOR_WG_INTERFACE:-}"
dr_table="${HARBOR_NFT_TABLE:-}"
# Paths are fixed by the scripts that write them (k3s.sh, mesh.sh, firewall.sh); a test points
# HARBOR_DRIFT_ROOT at a fake node's filesystem (never set by the program).
dr_root="${HARBOR_DRIFT_ROOT:-}"
dr_k3s_dir="$dr_root/etc/rancher/k3s"
dr_k3s_bin="$dr_root/usr/local/bin/k3s"
dr_fw_dir="$dr_root/etc/space-harbor"
dr_fw_unit=space-harbor-firewall.service
dr_registries_header="# Managed by Space Harbor (Pulumi) from k3s.registries."

dr_sha() {
    local sum
    if [ -f "$1" ] && sum=$(sha256sum -- "$1" 2>/dev/null); then
        echo "${sum%% *}"
    else
        echo absent
    fi
}

# sd_booted(3), as harbor_has_systemd, under the fake root of a test.
dr_has_systemd() {
    [ -d "$dr_root/run/systemd/system" ] && command -v systemctl >/dev/null 2>&1
}

dr_unit_state() {
    local active="" enabled=""
    if dr_has_systemd; then
        active=$(systemctl is-active "$1" 2>/dev/null || true)
        enabled=$(systemctl is-enabled "$1" 2>/dev/null || true)
    fi
    echo "${active:-unknown} ${enabled:-unknown}"
}

dr_k3s() {
    local unit=k3s ours=no registries version=""
    [ "$dr_role" = agent ] && unit=k3s-agent
    echo "k3s.config $(dr_sha "$dr_k3s_dir/config.yaml")"
    registries=$(dr_sha "$dr_k3s_dir/registries.yaml")
    if [ "$registries" != absent ] && head -n 1 "$dr_k3s_dir/registries.yaml" | grep -qF "$dr_registries_header"; then
        ours=yes
    fi
    echo "k3s.registries $registries $ours"
    if [ -x "$dr_k3s_bin" ]; then
        # The version word of "k3s version v1.31.4+k3s1 (abcdef12)"; the binary only prints it.
        version=$(timeout 20 "$dr_k3s_bin" --version 2>/dev/null | head -n 1 | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^v[0-9]/) { print $i; exit } }' || true)
    fi
    echo "k3s.version ${version:-absent}"
    echo "k3s.unit $(dr_unit_state "$unit.service")"
}

dr_wireguard() {
    [ -n "$dr_wg_if" ] || return 0
    echo "wg.file $(dr_sha "$dr_root/etc/wireguard/$dr_wg_if.conf")"
    if ip link show dev "$dr_wg_if" >/dev/null 2>&1 && command -v wg >/dev/null 2>&1; then
        echo "wg.link present"
        echo "wg.public-key $(wg show "$dr_wg_if" public-key 2>/dev/null || echo absent)"
        echo "wg.listen-port $(wg show "$dr_wg_if" listen-port 2>/dev/null || echo absent)"
        local key ips
        while read -r key ips; do
            [ -n "$key" ] || continue
            echo "wg.peer $key $(tr ' ' ',' <<<"$ips")"
        done < <(wg show "$dr_wg_if" allowed-ips 2>/dev/null || true)
    else
        echo "wg.link absent"
    fi
    echo "wg.unit $(dr_unit_state "wg-quick@$dr_wg_if.service")"
}

dr_nftables() {
    [ -n "$dr_table" ] || return 0
    local listing nft_bin
    nft_bin=$(command -v nft || true)
    if [ -n "$nft_bin" ] && listing=$(nft -s list table inet "$dr_table" 2>/dev/null); then
        echo "nft.table present"
        # A rule line carries a verdict or a statement; chain headers carry `policy`.
        echo "nft.rules $(grep -v 'policy' <<<"$listing" | grep -cE '\b(accept|drop|reject|jump|goto|return|counter)\b' || true)"
        echo "nft.live $(printf '%s\n' "$listing" | sha256sum | cut -d' ' -f1)"
    else
        echo "nft.table absent"
    fi
    if [ -f "$dr_fw_dir/firewall.live" ]; then
        echo "nft.loaded $(head -n 1 "$dr_fw_dir/firewall.live")"
    else
        echo "nft.loaded absent"
    fi
    echo "nft.file $(dr_sha "$dr_fw_dir/firewall.nft")"
    echo "nft.bin ${nft_bin:-absent}"
    echo "nft.unit-file $(dr_sha "$dr_root/etc/systemd/system/$dr_fw_unit")"
    echo "nft.unit $(dr_unit_state "$dr_fw_unit")"
}

case "$harbor_action" in
read)
    case "$dr_role" in
    server | agent) ;;
    *) harbor_fail "HARBOR_K3S_ROLE must be server or agent (got '${dr_role}')" ;;
    esac
    dr_k3s
    dr_wireguard
    dr_nftables
    ;;
*) harbor_fail "unknown action '${harbor_action}'; use read" ;;
esac
