"""Files the program ships to every node for k3s: the pinned installer and, air-gapped, the binary and images.

Each goes to the node with pulumi-command's `CopyToRemote` (components/remote.py: `node_copy`),
staged under a name that carries its sha256, and k3s.sh takes it from there only after checking
that sha256 on the node. They are staged in a private directory, `STAGING_DIR`: the node's
`shipped` step makes it first (`k3s.sh prepare-staging`), owned by the SSH user with mode 0700
inside a root-owned directory, so no other local account can pre-create a name there, block the
copy or plant a link; k3s.sh refuses a staged path that is a symlink or another account's file.

What the engine does with them, and why that is enough:
- `CopyToRemote` copies on create, and on update only when the file's hash or the remote path
  changed; a connection change alone copies nothing. Its delete removes nothing from the node
  (pulumi-command has no delete for it), so a removed or forgotten node is never dialled for it;
  the `shipped` step's delete (`remove-shipped`) removes the staged files instead, including the
  ones versions before the staging directory left in /var/tmp.
- The staged name changes with the content, so a new version is a new path and the old one stays
  until k3s.sh has installed the new one and pruned it.
- A stack staged by an earlier version in /var/tmp gets the new paths as an update: the `shipped`
  step's update makes the directory, the copies copy again, and the next install step prunes the
  old files.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from components.config.k3s import AIRGAP_IMAGE_SUFFIXES, K3s

# On the node; k3s.sh (k3s_staging_dir) names the same directory.
STAGING_DIR = "/var/lib/space-harbor/staging"
STAGED_PREFIX = "space-harbor-k3s-"
K3S_INSTALLER_KIND = "k3s-installer"

ShippedKind = Literal["installer", "binary", "images"]


@dataclass(frozen=True)
class ShippedFile:
    kind: ShippedKind
    source: Path
    sha256: str

    @property
    def staged_path(self) -> str:
        """Where the copy step puts it on the node; k3s.sh reads the images' archive format from the name."""
        suffix = ".sh" if self.kind == "installer" else ""
        if self.kind == "images":
            suffix = next(s for s in AIRGAP_IMAGE_SUFFIXES if self.source.name.endswith(s))
        return f"{STAGING_DIR}/{STAGED_PREFIX}{self.kind}-{self.sha256[:16]}{suffix}"

    def parameters(self) -> dict[str, str]:
        """The k3s.sh parameters that name the staged file and its sha256."""
        prefix = f"HARBOR_K3S_{self.kind.upper()}"
        return {prefix: self.staged_path, f"{prefix}_SHA256": self.sha256}


def file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def k3s_shipped_files(k3s: K3s, installer: Path, installer_sha256: str) -> tuple[ShippedFile, ...]:
    """The installer (already verified against its pin) and, for `k3s.airgap` as an object, its files.

    The air-gap files are hashed here, on every run: the hash decides whether the copy step copies
    again, and it is what the node checks.
    """
    shipped = [ShippedFile("installer", installer, installer_sha256)]
    files = k3s.airgap_files
    if files is not None:
        shipped.append(ShippedFile("binary", files.binary, file_sha256(files.binary)))
        if files.images is not None:
            shipped.append(ShippedFile("images", files.images, file_sha256(files.images)))
    return tuple(shipped)
