#!/bin/sh
# k3s install script STAND-IN for the Space Harbor testbed. This is NOT get.k3s.io.
#
# It mimics the air-gap path of the real installer: with INSTALL_K3S_SKIP_DOWNLOAD=true it uses
# the binary already at /usr/local/bin/k3s, writes the systemd unit (k3s.service for a server,
# k3s-agent.service for an agent), its env file, k3s-killall.sh and an uninstall script that
# removes everything this script made, then enables and (re)starts the service, as the real
# installer does on every run.
#
# A real install takes a while (download, verify and unpack the binary and its images); the
# stand-in sleeps K3S_STANDIN_INSTALL_SECONDS (default 0) instead, read from the environment or
# from /etc/default/k3s-install-standin, which the testbed writes, so that a benchmark of the
# install order measures that order and not a no-op.
set -e

echo "[INFO]  k3s install stand-in (not get.k3s.io)"
if [ -z "${K3S_STANDIN_INSTALL_SECONDS:-}" ] && [ -r /etc/default/k3s-install-standin ]; then
    # shellcheck source=/dev/null
    . /etc/default/k3s-install-standin
fi
INSTALL_SECONDS=${K3S_STANDIN_INSTALL_SECONDS:-0}
case "$INSTALL_SECONDS" in
    ''|*[!0-9.]*|*.*.*) echo "[ERROR] k3s install stand-in: K3S_STANDIN_INSTALL_SECONDS must be a number of seconds, not '$INSTALL_SECONDS'" >&2; exit 1 ;;
esac
if [ "${INSTALL_K3S_SKIP_DOWNLOAD:-}" != "true" ]; then
    echo "[ERROR] k3s install stand-in: only the air-gap path (INSTALL_K3S_SKIP_DOWNLOAD=true) exists here" >&2
    exit 1
fi
BIN_DIR=${INSTALL_K3S_BIN_DIR:-/usr/local/bin}
SYSTEMD_DIR=${INSTALL_K3S_SYSTEMD_DIR:-/etc/systemd/system}
if [ ! -x "$BIN_DIR/k3s" ]; then
    echo "[ERROR] k3s install stand-in: $BIN_DIR/k3s is missing; air-gap installs need it pre-placed" >&2
    exit 1
fi

# The command: the first word of INSTALL_K3S_EXEC or of the arguments, else agent when K3S_URL is set.
# Word splitting is the point: INSTALL_K3S_EXEC holds a command and its flags, as upstream.
# shellcheck disable=SC2086
set -- ${INSTALL_K3S_EXEC:-} "$@"
case "${1:-}" in
    server|agent) CMD_K3S=$1; shift ;;
    *) if [ -n "${K3S_URL:-}" ]; then CMD_K3S=agent; else CMD_K3S=server; fi ;;
esac
EXEC_ARGS="$*"
if [ "$CMD_K3S" = server ]; then
    SYSTEM_NAME=k3s
    UNINSTALL=$BIN_DIR/k3s-uninstall.sh
else
    SYSTEM_NAME=k3s-agent
    UNINSTALL=$BIN_DIR/k3s-agent-uninstall.sh
fi
UNIT=$SYSTEMD_DIR/$SYSTEM_NAME.service
ENV_FILE=$SYSTEMD_DIR/$SYSTEM_NAME.service.env

echo "[INFO]  Skipping k3s download and verify (stand-in)"
if [ "$INSTALL_SECONDS" != 0 ]; then
    echo "[INFO]  k3s install stand-in: taking ${INSTALL_SECONDS}s, as a real install does (K3S_STANDIN_INSTALL_SECONDS)"
    sleep "$INSTALL_SECONDS"
fi
for cmd in kubectl crictl ctr; do
    if [ ! -e "$BIN_DIR/$cmd" ] && ! command -v "$cmd" >/dev/null 2>&1; then
        echo "[INFO]  Creating $BIN_DIR/$cmd symlink to k3s"
        ln -sf k3s "$BIN_DIR/$cmd"
    fi
done

echo "[INFO]  Creating killall script $BIN_DIR/k3s-killall.sh"
cat > "$BIN_DIR/k3s-killall.sh" <<'KILLALL'
#!/bin/sh
# k3s stand-in killall: stops the stand-in services.
[ "$(id -u)" -eq 0 ] || exec sudo "$0" "$@"
for service in /etc/systemd/system/k3s*.service; do
    [ -s "$service" ] && systemctl stop "$(basename "$service")"
done
exit 0
KILLALL
chmod 755 "$BIN_DIR/k3s-killall.sh"

echo "[INFO]  Creating uninstall script $UNINSTALL"
cat > "$UNINSTALL" <<UNINSTALL_EOF
#!/bin/sh
# k3s stand-in uninstall: removes what the stand-in installer made.
set -x
[ "\$(id -u)" -eq 0 ] || exec sudo "\$0" "\$@"
systemctl stop $SYSTEM_NAME || true
systemctl disable $SYSTEM_NAME || true
systemctl reset-failed $SYSTEM_NAME 2>/dev/null || true
rm -f "$UNIT" "$ENV_FILE"
systemctl daemon-reload
if (ls $SYSTEMD_DIR/k3s*.service) >/dev/null 2>&1; then
    set +x
    echo 'Additional k3s services installed, skipping uninstall of k3s'
    rm -f "$UNINSTALL"
    exit 0
fi
for cmd in kubectl crictl ctr; do
    if [ -L "$BIN_DIR/\$cmd" ]; then rm -f "$BIN_DIR/\$cmd"; fi
done
rm -rf /etc/rancher/k3s /run/k3s /var/lib/rancher/k3s /var/lib/kubelet
rmdir /etc/rancher /var/lib/rancher 2>/dev/null || true
rm -f "$BIN_DIR/k3s" "$BIN_DIR/k3s-killall.sh"
rm -f "$UNINSTALL"
UNINSTALL_EOF
chmod 755 "$UNINSTALL"

echo "[INFO]  env: Creating environment file $ENV_FILE"
umask 077
: > "$ENV_FILE"
[ -n "${K3S_URL:-}" ] && echo "K3S_URL='$K3S_URL'" >> "$ENV_FILE"
[ -n "${K3S_TOKEN:-}" ] && echo "K3S_TOKEN='$K3S_TOKEN'" >> "$ENV_FILE"
umask 022

echo "[INFO]  systemd: Creating service file $UNIT"
cat > "$UNIT" <<UNIT_EOF
[Unit]
Description=Lightweight Kubernetes (k3s STAND-IN for the Space Harbor testbed, not real k3s)
Documentation=https://k3s.io
Wants=network-online.target
After=network-online.target

[Install]
WantedBy=multi-user.target

[Service]
Type=notify
NotifyAccess=all
EnvironmentFile=-/etc/default/%N
EnvironmentFile=-/etc/sysconfig/%N
EnvironmentFile=-$ENV_FILE
KillMode=process
Delegate=yes
LimitNOFILE=1048576
TimeoutStartSec=120
Restart=always
RestartSec=5s
ExecStart=$BIN_DIR/k3s $CMD_K3S $EXEC_ARGS
UNIT_EOF

if [ "${INSTALL_K3S_SKIP_ENABLE:-}" != "true" ]; then
    echo "[INFO]  systemd: Enabling $SYSTEM_NAME unit"
    systemctl enable "$SYSTEM_NAME" >/dev/null 2>&1
    systemctl daemon-reload >/dev/null
    if [ "${INSTALL_K3S_SKIP_START:-}" != "true" ]; then
        echo "[INFO]  systemd: Starting $SYSTEM_NAME"
        systemctl restart "$SYSTEM_NAME"
    fi
fi
