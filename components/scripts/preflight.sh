#!/usr/bin/env bash
# Space Harbor preflight: read-only checks that every node passes before anything is installed.
#
#   preflight.sh check   run every check that is not skipped. Passes and notes go to stdout,
#                        warnings and problems to stderr, one line each, each line whole:
#                          space-harbor: preflight <node>: <check>: <what is wrong>; <what to do>
#                        exit 0 when no check failed (warnings allowed), else 1
#
# It changes nothing: it reads /etc, /proc and /sys, lists sockets with ss, asks timedatectl,
# chronyc or ntpq, runs `k3s secrets-encrypt status` on an installed server, and opens a TCP
# connection to port 6443 of the other servers (bootstrap). It writes no file, not even in /tmp.
#
# Checks, in order (names as in `preflight.skip` / `nodes[i].preflightSkip`):
#   os                 Debian >= 11 or Ubuntu >= 20.04, with systemd running
#   arch               an architecture k3s publishes a binary for
#   cgroups            the memory controller (cgroup v2) or memory cgroup (v1) is enabled
#   swap               no active swap
#   ports              the ports k3s needs are free or held by k3s; the mesh port is free or ours
#   timeSync           the clock is synchronised (or kept by the container's host)
#   hostname           the hostname is the node's name in the stack
#   mtu                the link towards the peers carries the mesh MTU plus WireGuard's overhead
#   role               k3s installed here runs the role the stack gives the node (not skippable)
#   bootstrap          the bootstrap server does not start a second cluster beside a running one
#   secretsEncryption  a running server has the secrets encryption the stack asks for (not skippable)
#   firewall           where Space Harbor's firewall was applied, its table is loaded: stopping
#                      nftables.service flushes every table, ours included, and nothing reloads it
#
# Parameters (shell variables on stdin; components/render/preflight.py renders them):
#   HARBOR_NODE_NAME               the node's name in the stack
#   HARBOR_K3S_ROLE                server | agent
#   HARBOR_K3S_BOOTSTRAP           true on the server that starts the cluster
#   HARBOR_K3S_VERSION             the pinned k3s version
#   HARBOR_K3S_SECRETS_ENCRYPTION  true | false (k3s.secretsEncryption)
#   HARBOR_K3S_TCP_PORTS           comma list of TCP ports k3s binds on this node
#   HARBOR_K3S_UDP_PORTS           comma list of UDP ports (flannel's backend)
#   HARBOR_MESH_ENABLED            true | false
#   HARBOR_MESH_PORT               the mesh's UDP listen port
#   HARBOR_MESH_INTERFACE          the mesh's interface name
#   HARBOR_MESH_MTU                the mesh's MTU
#   HARBOR_MESH_ENDPOINT           the address peers dial (IP or DNS name)
#   HARBOR_PEER_SERVERS            comma list of the other servers' cluster addresses
#   HARBOR_PREFLIGHT_SKIP          comma list of checks to skip
#   HARBOR_NFT_TABLE               the name of the firewall's `table inet` (firewall.sh)
set -euo pipefail
# The payload brings lib.sh ahead of this body; run by hand from a checkout, load it from beside it.
# shellcheck source-path=SCRIPTDIR source=lib.sh
declare -F harbor_fail >/dev/null || . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

harbor_script=preflight.sh
harbor_action="${1:-}"
pf_node="${HARBOR_NODE_NAME:-}"
pf_role="${HARBOR_K3S_ROLE:-}"
pf_bootstrap="${HARBOR_K3S_BOOTSTRAP:-false}"
pf_version="${HARBOR_K3S_VERSION:-}"
pf_encryption="${HARBOR_K3S_SECRETS_ENCRYPTION:-true}"
pf_tcp_ports="${HARBOR_K3S_TCP_PORTS:-}"
pf_udp_ports="${HARBOR_K3S_UDP_PORTS:-}"
pf_mesh="${HARBOR_MESH_ENABLED:-true}"
pf_mesh_port="${HARBOR_MESH_PORT:-51871}"
pf_mesh_iface="${HARBOR_MESH_INTERFACE:-wg-harbor}"
pf_mesh_mtu="${HARBOR_MESH_MTU:-1420}"
pf_mesh_endpoint="${HARBOR_MESH_ENDPOINT:-}"
pf_peers="${HARBOR_PEER_SERVERS:-}"
pf_skip="${HARBOR_PREFLIGHT_SKIP:-}"
pf_nft_table="${HARBOR_NFT_TABLE:-space_harbor}"

pf_checks=(os arch cgroups swap ports timeSync hostname mtu role bootstrap secretsEncryption firewall)
pf_checks_csv=$(
    IFS=,
    echo "${pf_checks[*]}"
)
# They refuse what k3s cannot do in place; skipping them would break a running server instead.
pf_required_csv=role,secretsEncryption
# A check that found a problem returns this after printing it; any other exit means it could not run.
pf_reported=3

pf_k3s_dir=/etc/rancher/k3s
pf_k3s_record="$pf_k3s_dir/.space-harbor-installed"
pf_cgroup_fix="enable it on the kernel command line with cgroup_memory=1 cgroup_enable=memory (on a Raspberry Pi: at the end of the one line in /boot/firmware/cmdline.txt, or /boot/cmdline.txt on older images) and reboot"

pf_ok() {
    echo "space-harbor: preflight $pf_node: $1: ok ($2)"
}

pf_fail() {
    echo "space-harbor: preflight $pf_node: $1: $2; $3" >&2
}

pf_warn() {
    echo "space-harbor: preflight $pf_node: $1: warning: $2" >&2
}

pf_in_list() { # WORD COMMA_LIST
    case ",$2," in *",$1,"*) return 0 ;; esac
    return 1
}

pf_version_ge() { # A B: A >= B (dotted numbers)
    [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n 1)" = "$2" ]
}

pf_is_ipv4() {
    [[ "$1" =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]]
}

pf_check_parameters() {
    [[ "$pf_node" =~ ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ ]] || harbor_fail "HARBOR_NODE_NAME must be the node's name (got '${pf_node}')"
    case "$pf_role" in
    server | agent) ;;
    *) harbor_fail "HARBOR_K3S_ROLE must be server or agent (got '${pf_role}')" ;;
    esac
    local list item
    for list in "$pf_tcp_ports" "$pf_udp_ports"; do
        [[ "$list" =~ ^([0-9]+(,[0-9]+)*)?$ ]] || harbor_fail "HARBOR_K3S_TCP_PORTS/UDP_PORTS must be comma lists of ports (got '${list}')"
    done
    [[ "$pf_mesh_port" =~ ^[0-9]+$ && "$pf_mesh_mtu" =~ ^[0-9]+$ ]] || harbor_fail "HARBOR_MESH_PORT and HARBOR_MESH_MTU must be numbers"
    for item in ${pf_skip//,/ }; do
        pf_in_list "$item" "$pf_checks_csv" || harbor_fail "HARBOR_PREFLIGHT_SKIP names '$item', which is not a check"
        if pf_in_list "$item" "$pf_required_csv"; then
            harbor_fail "HARBOR_PREFLIGHT_SKIP names '$item', which cannot be skipped"
        fi
    done
}

# --- what is installed here ------------------------------------------------------------------

# "<role> <source>" of the k3s on this node: from the record k3s.sh writes, else from the units
# the k3s installer writes (an install by hand or by another tool); empty when there is none.
pf_installed_role() {
    local role="" version=""
    if [ -r "$pf_k3s_record" ]; then
        read -r role version <"$pf_k3s_record" || true
        case "$role" in
        server | agent)
            echo "$role $pf_k3s_record"
            return 0
            ;;
        esac
    fi
    if [ -e /etc/systemd/system/k3s.service ]; then
        echo "server /etc/systemd/system/k3s.service"
    elif [ -e /etc/systemd/system/k3s-agent.service ]; then
        echo "agent /etc/systemd/system/k3s-agent.service"
    fi
}

pf_installed_version() {
    local role="" version=""
    if [ -r "$pf_k3s_record" ]; then
        read -r role version <"$pf_k3s_record" || true
    fi
    echo "$version"
}

# --- the checks --------------------------------------------------------------------------------

pf_os_field() { # KEY FILE
    awk -F= -v key="$1" '$1 == key { value = substr($0, length(key) + 2); gsub(/^["'\'']|["'\'']$/, "", value); print value; exit }' "$2"
}

pf_check_os() {
    local file="" id version pretty
    for file in /etc/os-release /usr/lib/os-release ""; do
        [ -n "$file" ] && [ -r "$file" ] && break
    done
    if [ -z "$file" ]; then
        pf_fail os "neither /etc/os-release nor /usr/lib/os-release is readable, so the distribution is unknown" \
            "Space Harbor supports Debian >= 11 and Ubuntu >= 20.04; add os to preflight.skip only if this node is one of them"
        return "$pf_reported"
    fi
    id=$(pf_os_field ID "$file")
    version=$(pf_os_field VERSION_ID "$file")
    pretty=$(pf_os_field PRETTY_NAME "$file")
    pretty="${pretty:-$id $version}"
    local supported=false
    case "$id" in
    # Raspberry Pi OS (32-bit) calls itself raspbian and numbers its releases as Debian does.
    debian | raspbian)
        if [ -z "$version" ]; then
            pf_warn os "$pretty has no VERSION_ID (Debian testing or unstable); it is treated as newer than Debian 11"
            supported=true
        elif [[ "$version" =~ ^[0-9]+$ ]] && [ "$version" -ge 11 ]; then
            supported=true
        fi
        ;;
    ubuntu)
        if [[ "$version" =~ ^[0-9]+\.[0-9]+$ ]] && pf_version_ge "$version" 20.04; then
            supported=true
        fi
        ;;
    esac
    if [ "$supported" != true ]; then
        pf_fail os "this node runs $pretty (ID=$id, VERSION_ID=${version:-none}), which Space Harbor does not support" \
            "use Debian >= 11 or Ubuntu >= 20.04 (the node scripts rely on their apt packages and systemd), or add os to preflight.skip at your own risk"
        return "$pf_reported"
    fi
    if [ ! -d /run/systemd/system ]; then
        pf_fail os "$pretty runs without systemd as its init (no /run/systemd/system)" \
            "boot the node with systemd: k3s, the mesh and the firewall run as systemd units"
        return "$pf_reported"
    fi
    pf_ok os "$pretty"
}

pf_check_arch() {
    local machine k3s_arch=""
    machine=$(uname -m)
    case "$machine" in
    x86_64 | amd64) k3s_arch=amd64 ;;
    aarch64 | arm64) k3s_arch=arm64 ;;
    armv6* | armv5* | armv4*)
        pf_fail arch "uname -m reports $machine, and k3s's 32-bit ARM binary (armhf) needs ARMv7 or newer" \
            "run this node on ARMv7 or newer (a Raspberry Pi 2 or later), or on amd64, arm64 or s390x"
        return "$pf_reported"
        ;;
    arm*) k3s_arch=armhf ;;
    s390x) k3s_arch=s390x ;;
    *)
        pf_fail arch "uname -m reports $machine, for which k3s publishes no binary (it does for amd64, arm64, armhf and s390x)" \
            "run this node on one of those architectures"
        return "$pf_reported"
        ;;
    esac
    pf_ok arch "$machine: the k3s $k3s_arch binary"
}

pf_check_cgroups() {
    local fstype controllers enabled
    fstype=$(stat -fc %T /sys/fs/cgroup 2>/dev/null || echo unknown)
    if [ "$fstype" = cgroup2fs ]; then
        controllers=$(cat /sys/fs/cgroup/cgroup.controllers 2>/dev/null || true)
        if [[ " $controllers " == *" memory "* ]]; then
            pf_ok cgroups "cgroup v2 with the memory controller"
            return 0
        fi
        pf_fail cgroups "cgroup v2 is mounted but its memory controller is missing (/sys/fs/cgroup/cgroup.controllers: ${controllers:-empty}), and k3s needs it" \
            "$pf_cgroup_fix"
        return "$pf_reported"
    fi
    # cgroup v1 or hybrid: the kernel's table says whether the memory cgroup is enabled.
    enabled=$(awk '$1 == "memory" { print $4; exit }' /proc/cgroups 2>/dev/null || true)
    if [ "$enabled" = 1 ]; then
        pf_ok cgroups "cgroup v1 with the memory cgroup enabled"
        return 0
    fi
    if [ -z "$enabled" ]; then
        pf_fail cgroups "the kernel has no memory cgroup (no memory line in /proc/cgroups), and k3s needs it" \
            "use a kernel built with CONFIG_MEMCG, and $pf_cgroup_fix"
    else
        pf_fail cgroups "the memory cgroup is disabled (/proc/cgroups: memory enabled=$enabled), and k3s needs it" "$pf_cgroup_fix"
    fi
    return "$pf_reported"
}

pf_check_swap() {
    local active
    active=$(awk 'NR > 1 && NF >= 3 { printf "%s%s (%s KiB)", sep, $1, $3; sep = ", " }' /proc/swaps 2>/dev/null || true)
    if [ -z "$active" ]; then
        pf_ok swap "no active swap"
        return 0
    fi
    pf_fail swap "swap is active: $active, and the kubelet expects none" \
        "run swapoff -a and remove or comment out the swap lines in /etc/fstab (and disable zram or dphys-swapfile if present) so it stays off after a reboot, or add swap to preflight.skip"
    return "$pf_reported"
}

pf_port_purpose() { # PROTO PORT
    case "$1/$2" in
    tcp/6443) echo "the k3s API" ;;
    tcp/6444) echo "k3s's local API load balancer" ;;
    tcp/10010) echo "containerd's streaming server" ;;
    tcp/10248) echo "the kubelet's health endpoint" ;;
    tcp/10249) echo "kube-proxy's metrics" ;;
    tcp/10250) echo "the kubelet" ;;
    tcp/10256) echo "kube-proxy's health endpoint" ;;
    tcp/10257) echo "the controller-manager" ;;
    tcp/10258) echo "the cloud-controller-manager" ;;
    tcp/10259) echo "the scheduler" ;;
    tcp/2379) echo "etcd's clients" ;;
    tcp/2380) echo "etcd's peers" ;;
    tcp/2381) echo "etcd's metrics" ;;
    udp/8472) echo "flannel's VXLAN" ;;
    udp/51820) echo "flannel's WireGuard" ;;
    *) echo "k3s" ;;
    esac
}

# Whether a process belongs to k3s: its systemd unit (the stand-in and every child of real k3s,
# containerd included, live in it) or its binary.
pf_pid_is_k3s() {
    local pid=$1 exe
    if grep -Eq '/(k3s|k3s-agent)\.service(/|$)' "/proc/$pid/cgroup" 2>/dev/null; then
        return 0
    fi
    exe=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
    case "$exe" in
    /usr/local/bin/k3s | /var/lib/rancher/k3s/data/*) return 0 ;;
    esac
    return 1
}

pf_describe_pid() {
    local pid=$1 comm unit
    comm=$(cat "/proc/$pid/comm" 2>/dev/null || echo "?")
    unit=$(sed -n 's#^.*/\([^/]*\.\(service\|scope\)\)$#\1#p' "/proc/$pid/cgroup" 2>/dev/null | head -n 1)
    if [ -n "$unit" ]; then
        echo "$comm (pid $pid, $unit)"
    else
        echo "$comm (pid $pid)"
    fi
}

# A socket of the kernel itself (no process) on a port that one of our interfaces uses.
pf_kernel_socket_is_ours() { # PROTO PORT
    [ "$1" = udp ] || return 1
    if [ "$2" = "$pf_mesh_port" ] && [ "$pf_mesh" = true ] && pf_mesh_iface_holds_port; then
        return 0
    fi
    if ip -d link show flannel.1 2>/dev/null | grep -q "dstport $2 "; then
        return 0
    fi
    if command -v wg >/dev/null 2>&1 && [ "$(wg show flannel-wg listen-port 2>/dev/null || true)" = "$2" ]; then
        return 0
    fi
    return 1
}

pf_mesh_iface_holds_port() {
    command -v wg >/dev/null 2>&1 && [ "$(wg show "$pf_mesh_iface" listen-port 2>/dev/null || true)" = "$pf_mesh_port" ]
}

# The holders of PROTO PORT that are not k3s (or, for the mesh port, not our own interface),
# one description per line; nothing when the port is free or ours.
pf_foreign_holders() { # PROTO PORT KIND
    local proto=$1 port=$2 kind=$3 flag=t lines pids pid cmdline
    [ "$proto" = udp ] && flag=u
    lines=$(ss -Hln${flag}p "sport = :$port" 2>/dev/null || true)
    [ -n "$lines" ] || return 0
    pids=$(grep -o 'pid=[0-9]*' <<<"$lines" | cut -d= -f2 | sort -un || true)
    if [ -z "$pids" ]; then
        pf_kernel_socket_is_ours "$proto" "$port" || echo "a socket of the kernel (no process)"
        return 0
    fi
    for pid in $pids; do
        if [ "$kind" = mesh ]; then
            # wireguard-go serving our interface holds the mesh port; so does the kernel's WireGuard.
            cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)
            if pf_mesh_iface_holds_port || [[ "$cmdline" == *wireguard-go*" $pf_mesh_iface "* ]]; then
                continue
            fi
        elif pf_pid_is_k3s "$pid"; then
            continue
        fi
        pf_describe_pid "$pid"
    done
}

pf_join() { # LINES -> "a and b and c"
    awk 'NR > 1 { printf " and " } { printf "%s", $0 }' <<<"$1"
}

pf_check_ports() {
    if ! command -v ss >/dev/null 2>&1; then
        pf_warn ports "ss (iproute2) is missing, so the ports were not checked; install iproute2 to have them checked"
        return 0
    fi
    local problems=0 port holders checked=0
    for port in ${pf_tcp_ports//,/ }; do
        holders=$(pf_foreign_holders tcp "$port" k3s)
        checked=$((checked + 1))
        if [ -n "$holders" ]; then
            pf_fail ports "TCP port $port ($(pf_port_purpose tcp "$port")) is in use by $(pf_join "$holders")" \
                "stop or move what holds it, since k3s must bind it, or add ports to preflight.skip if it will be free when k3s starts"
            problems=$((problems + 1))
        fi
    done
    for port in ${pf_udp_ports//,/ }; do
        holders=$(pf_foreign_holders udp "$port" k3s)
        checked=$((checked + 1))
        if [ -n "$holders" ]; then
            pf_fail ports "UDP port $port ($(pf_port_purpose udp "$port")) is in use by $(pf_join "$holders")" \
                "stop or move what holds it, since flannel must bind it, or choose another k3s.flannelBackend"
            problems=$((problems + 1))
        fi
    done
    if [ "$pf_mesh" = true ]; then
        holders=$(pf_foreign_holders udp "$pf_mesh_port" mesh)
        checked=$((checked + 1))
        if [ -n "$holders" ]; then
            pf_fail ports "UDP port $pf_mesh_port (the WireGuard mesh, mesh.listenPort) is in use by $(pf_join "$holders")" \
                "stop what holds it, or set mesh.listenPort to a free port"
            problems=$((problems + 1))
        fi
    fi
    [ "$problems" -eq 0 ] || return "$pf_reported"
    pf_ok ports "$checked ports free or held by k3s or the mesh"
}

pf_check_timeSync() {
    local virt synced="" source=""
    if virt=$(systemd-detect-virt --container 2>/dev/null) && [ -n "$virt" ] && [ "$virt" != none ]; then
        pf_ok timeSync "in a $virt container the host keeps the clock"
        return 0
    fi
    if command -v timedatectl >/dev/null 2>&1; then
        synced=$(timeout 10 timedatectl show -p NTPSynchronized --value 2>/dev/null || true)
        if [ "$synced" = yes ]; then
            pf_ok timeSync "timedatectl: NTPSynchronized=yes"
            return 0
        fi
    fi
    if command -v chronyc >/dev/null 2>&1; then
        source=$(timeout 5 chronyc -n tracking 2>/dev/null || true)
        if grep -Eq '^Leap status[[:space:]]*:[[:space:]]*Normal' <<<"$source"; then
            pf_ok timeSync "chrony is synchronised"
            return 0
        fi
    fi
    if command -v ntpq >/dev/null 2>&1; then
        source=$(timeout 5 ntpq -pn 2>/dev/null || true)
        if grep -q '^\*' <<<"$source"; then
            pf_ok timeSync "ntpd has a system peer"
            return 0
        fi
    fi
    pf_fail timeSync "the clock is not synchronised (timedatectl: NTPSynchronized=${synced:-unknown}; no chrony or ntpd reports sync)" \
        "certificates, tokens and etcd need a correct clock: enable NTP (timedatectl set-ntp true with systemd-timesyncd, or install chrony) and wait until it syncs, or add timeSync to preflight.skip"
    return "$pf_reported"
}

pf_check_hostname() {
    local actual short
    actual=$(cat /proc/sys/kernel/hostname 2>/dev/null || uname -n)
    short="${actual%%.*}"
    # Host names compare without case, as DNS does; a fully qualified one by its first label.
    if [ "${actual,,}" = "$pf_node" ] || [ "${short,,}" = "$pf_node" ]; then
        pf_ok hostname "$actual"
        return 0
    fi
    pf_fail hostname "the hostname of this node is '$actual', but the stack names it '$pf_node'" \
        "run hostnamectl set-hostname $pf_node, or rename the node in nodes, or add hostname to its preflightSkip (k3s registers it as '$pf_node' either way)"
    return "$pf_reported"
}

pf_check_mtu() {
    if [ "$pf_mesh" != true ]; then
        pf_ok mtu "the mesh is off"
        return 0
    fi
    if ! command -v ip >/dev/null 2>&1; then
        pf_warn mtu "ip (iproute2) is missing, so the MTU was not checked"
        return 0
    fi
    local dev="" how="" mtu="" overhead=80 family=IPv6 need
    if pf_is_ipv4 "$pf_mesh_endpoint" || [[ "$pf_mesh_endpoint" == *:* ]]; then
        dev=$(ip -o addr show to "$pf_mesh_endpoint" 2>/dev/null | awk '{ print $2; exit }')
        dev="${dev%%@*}"
        how="holds the endpoint $pf_mesh_endpoint"
    fi
    if [ -z "$dev" ]; then
        dev=$(ip -o route show default 2>/dev/null | awk '{ for (i = 1; i < NF; i++) if ($i == "dev") { print $(i + 1); exit } }')
        [ -n "$dev" ] || dev=$(ip -6 -o route show default 2>/dev/null | awk '{ for (i = 1; i < NF; i++) if ($i == "dev") { print $(i + 1); exit } }')
        how="carries the default route"
    fi
    # From netlink, not /sys/class/net: a container's sysfs may show another network namespace.
    [ -z "$dev" ] || mtu=$(ip -o link show dev "$dev" 2>/dev/null | awk '{ for (i = 1; i < NF; i++) if ($i == "mtu") { print $(i + 1); exit } }')
    if [ -z "$dev" ] || [ -z "${mtu:-}" ]; then
        pf_warn mtu "no interface holds the endpoint ${pf_mesh_endpoint:-?} and there is no default route, so the MTU was not checked"
        return 0
    fi
    # WireGuard adds 60 bytes over IPv4 and 80 over IPv6; a DNS name may resolve to either.
    if pf_is_ipv4 "$pf_mesh_endpoint"; then
        overhead=60
        family=IPv4
    fi
    need=$((pf_mesh_mtu + overhead))
    if [ "$mtu" -lt "$need" ]; then
        pf_fail mtu "$dev ($how) has MTU $mtu, but mesh.mtu $pf_mesh_mtu needs at least $need ($pf_mesh_mtu + $overhead bytes of WireGuard over $family)" \
            "set mesh.mtu to $((mtu - overhead)) or less, or raise the MTU of $dev"
        return "$pf_reported"
    fi
    pf_ok mtu "$dev has MTU $mtu, at least $need"
}

pf_check_role() {
    local installed role source installed_version
    installed=$(pf_installed_role)
    if [ -z "$installed" ]; then
        pf_ok role "no k3s installed yet"
        return 0
    fi
    role=${installed%% *}
    source=${installed#* }
    if [ "$role" != "$pf_role" ]; then
        pf_fail role "the role of node $pf_node is $pf_role in the stack but it runs k3s as $role ($source)" \
            "a role change is not done in place: remove the node from nodes, run pulumi up (it is decommissioned), then add it back with the new role"
        return "$pf_reported"
    fi
    if [ "$source" != "$pf_k3s_record" ]; then
        pf_warn role "k3s was installed here without Space Harbor ($source); its config.yaml will be replaced by the stack's"
    fi
    installed_version=$(pf_installed_version)
    if [ -n "$installed_version" ] && [ -n "$pf_version" ] && [ "$installed_version" != "$pf_version" ] &&
        pf_version_ge "$(sed 's/^v//; s/+k3s/./' <<<"$installed_version")" "$(sed 's/^v//; s/+k3s/./' <<<"$pf_version")"; then
        pf_warn role "k3s $installed_version runs here and k3s.version is the older $pf_version: the install step will refuse the downgrade"
    fi
    pf_ok role "k3s runs here as $role"
}

pf_check_bootstrap() {
    if [ "$pf_bootstrap" != true ]; then
        pf_ok bootstrap "not the bootstrap server"
        return 0
    fi
    if [ -n "$(pf_installed_role)" ]; then
        pf_ok bootstrap "k3s is already installed here"
        return 0
    fi
    if [ -z "$pf_peers" ]; then
        pf_ok bootstrap "no other server"
        return 0
    fi
    if [ "$pf_mesh" = true ] && ! ip link show dev "$pf_mesh_iface" >/dev/null 2>&1; then
        # The other servers answer on 6443 only over the mesh (their firewall), which is not up here yet.
        pf_ok bootstrap "the mesh is not up on this node yet, so the other servers cannot be asked"
        return 0
    fi
    local peer answered=()
    for peer in ${pf_peers//,/ }; do
        # shellcheck disable=SC2016 # $0 is expanded by the inner bash
        if timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/6443"' "$peer" 2>/dev/null; then
            answered+=("$peer")
        fi
    done
    if [ "${#answered[@]}" -gt 0 ]; then
        pf_fail bootstrap "this node is the bootstrap server and has no k3s yet, but the server at ${answered[*]} already answers on port 6443: a cluster runs there, and this node would start a second, separate one" \
            "set k3s.firstServer to a server that is already installed"
        return "$pf_reported"
    fi
    pf_ok bootstrap "no other server answers on port 6443"
}

pf_check_secretsEncryption() {
    if [ "$pf_role" != server ]; then
        pf_ok secretsEncryption "agents hold no secrets of the datastore"
        return 0
    fi
    if [ "$pf_encryption" != true ]; then
        pf_ok secretsEncryption "k3s.secretsEncryption is false"
        return 0
    fi
    local installed
    installed=$(pf_installed_role)
    if [ "${installed%% *}" != server ]; then
        pf_ok secretsEncryption "no k3s server here yet: it starts with secrets encryption"
        return 0
    fi
    local file
    for file in "$pf_k3s_dir/config.yaml" "$pf_k3s_dir"/config.yaml.d/*.yaml; do
        if [ -r "$file" ] && grep -Eq '^secrets-encryption:[[:space:]]*("true"|'\''true'\''|true)[[:space:]]*$' "$file"; then
            pf_ok secretsEncryption "$file has secrets-encryption: true"
            return 0
        fi
    done
    if command -v k3s >/dev/null 2>&1 && timeout 15 k3s secrets-encrypt status 2>/dev/null | grep -q '^Encryption Status: Enabled'; then
        pf_ok secretsEncryption "k3s secrets-encrypt status: Enabled"
        return 0
    fi
    pf_fail secretsEncryption "k3s runs on this server without secrets encryption (no secrets-encryption: true in $pf_k3s_dir/config.yaml, and k3s secrets-encrypt status does not report Enabled), but k3s.secretsEncryption is true, and k3s cannot turn encryption on for a running cluster before its 2026 releases" \
        "set k3s.secretsEncryption to false to keep the cluster as it is, or follow the migration in docs/upgrading.md (Secrets encryption on an existing cluster) and then set it"
    return "$pf_reported"
}

# The file firewall.sh stores and loads: it exists wherever the firewall was applied.
pf_firewall_file=/etc/space-harbor/firewall.nft

pf_check_firewall() {
    if [ ! -e "$pf_firewall_file" ]; then
        pf_ok firewall "no Space Harbor firewall applied here yet"
        return 0
    fi
    if command -v nft >/dev/null 2>&1 && nft list table inet "$pf_nft_table" >/dev/null 2>&1; then
        pf_ok firewall "table inet $pf_nft_table is loaded"
        return 0
    fi
    pf_fail firewall "this node's firewall (table inet $pf_nft_table, stored in $pf_firewall_file) is not loaded, so the k3s API, kubelet and etcd answer every network; stopping nftables.service (systemctl stop nftables, or removing the nftables package) flushes every table, ours included, and nothing loads it again before a reboot" \
        "load it with systemctl restart space-harbor-firewall (nftables installed), and find out who stopped nftables"
    return "$pf_reported"
}

# --- main ----------------------------------------------------------------------------------------

pf_run_checks() {
    local check rc failed=0
    for check in "${pf_checks[@]}"; do
        if pf_in_list "$check" "$pf_skip"; then
            echo "space-harbor: preflight $pf_node: $check: skipped (preflight.skip)"
            continue
        fi
        # Each check runs in a subshell with errexit, so one that breaks cannot end the run silently.
        set +e
        (
            set -e
            "pf_check_$check"
        )
        rc=$?
        set -e
        if [ "$rc" -eq "$pf_reported" ]; then
            failed=$((failed + 1))
        elif [ "$rc" -ne 0 ]; then
            pf_fail "$check" "the check could not run (exit $rc; the lines above say why)" \
                "fix what they report, or add $check to preflight.skip to go on without it"
            failed=$((failed + 1))
        fi
    done
    if [ "$failed" -gt 0 ]; then
        local noun=checks
        [ "$failed" -ne 1 ] || noun=check
        echo "space-harbor: preflight.sh check: $failed $noun failed on $pf_node" >&2
        exit 1
    fi
}

case "$harbor_action" in
check)
    pf_check_parameters
    pf_run_checks
    ;;
*) harbor_fail "unknown action '${harbor_action}'; use check" ;;
esac

echo "space-harbor: preflight.sh $harbor_action: ok"
