"""The cached Debian bookworm root filesystem that every testbed node boots from.

Built once with debootstrap (the only network use of the testbed: the Debian mirror), under a
temporary name, then renamed into place so a half-built tree is never used. The cache key is the
package list, so adding a package builds a new tree beside the old one.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SUITE = "bookworm"
MIRROR = os.environ.get("TESTBED_DEBIAN_MIRROR", "http://deb.debian.org/debian")
CACHE_ROOT = Path(os.environ.get("TESTBED_CACHE", "/var/cache/space-harbor-testbed"))
# Everything the node scripts and the k3s stand-in use, baked in: nodes have no network at test
# time, so an `apt-get install` on a node would fail. python3 serves the stand-in's listeners.
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "iproute2",
    "nftables",
    "wireguard-tools",
    "wireguard-go",
    "iputils-ping",
    "git",
    "ca-certificates",
    "procps",
    "kmod",
    "sudo",
    "python3",
    "netcat-openbsd",
    # /etc/protocols and /etc/services: every real Debian server has them (nft resolves names there).
    "netbase",
)


def cache_dir() -> Path:
    digest = hashlib.sha256(f"{SUITE}|{MIRROR}|{','.join(sorted(PACKAGES))}|v1".encode()).hexdigest()[:12]
    return CACHE_ROOT / f"rootfs-{SUITE}-{digest}"


def _prepare(root: Path) -> None:
    """Settings every node shares: no apt network, sshd keys made per node at boot."""
    (root / "etc/apt/apt.conf.d/99-testbed-offline").write_text(
        '// space-harbor testbed: nodes have no network; every tool is baked in.\nAcquire::Retries "0";\n'
    )
    # Per-node host keys: remove the debootstrap ones; nodes generate theirs before first boot.
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    # A per-node machine id is passed on the nspawn command line; leave it empty here.
    (root / "etc/machine-id").write_text("")
    (root / "etc/hostname").write_text("testbed\n")
    # Units that make no sense in a container and slow the boot.
    wants = root / "etc/systemd/system"
    for unit in (
        "systemd-timesyncd.service",
        "apt-daily.timer",
        "apt-daily-upgrade.timer",
        "e2scrub_all.timer",
        "fstrim.timer",
        "man-db.timer",
        "dpkg-db-backup.timer",
        "logrotate.timer",
    ):
        (wants / unit).unlink(missing_ok=True)
        link = wants / unit
        link.symlink_to("/dev/null")
    sshd = root / "etc/ssh/sshd_config.d"
    sshd.mkdir(parents=True, exist_ok=True)
    (sshd / "testbed.conf").write_text(
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\nMaxStartups 100:30:200\n"
        "MaxSessions 50\n"
    )
    (root / "etc/systemd/system/multi-user.target.wants").mkdir(parents=True, exist_ok=True)
    # ssh.service is enabled by the package's postinst already; make sure.
    ssh_link = root / "etc/systemd/system/multi-user.target.wants/ssh.service"
    if not ssh_link.exists() and not ssh_link.is_symlink():
        ssh_link.symlink_to("/lib/systemd/system/ssh.service")


def ensure_rootfs() -> Path:
    """The cached tree, built now if missing. Safe against parallel callers (file lock)."""
    target = cache_dir()
    if (target / ".complete").exists():
        return target
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    with open(CACHE_ROOT / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / ".complete").exists():
            return target
        if shutil.which("debootstrap") is None:
            raise RuntimeError("debootstrap is not installed")
        build = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=CACHE_ROOT))
        try:
            subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(build), MIRROR],
                check=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            _prepare(build)
            (build / ".complete").write_text("ok\n")
            if target.exists():
                shutil.rmtree(target)
            build.rename(target)
        except subprocess.CalledProcessError as error:
            shutil.rmtree(build, ignore_errors=True)
            tail = error.stdout.decode(errors="replace")[-3000:] if error.stdout else ""
            raise RuntimeError(f"debootstrap failed:\n{tail}") from error
        except BaseException:
            shutil.rmtree(build, ignore_errors=True)
            raise
    return target


if __name__ == "__main__":
    print(ensure_rootfs())
