"""Free and total space of the filesystem holding a path (the console's dashboard and /healthz, the health watch)."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Disk:
    """Free and total bytes of the filesystem holding ``path``."""

    path: str
    free_bytes: int
    total_bytes: int

    @property
    def free_fraction(self) -> float:
        """Free space as a fraction of the total (0..1)."""
        return self.free_bytes / self.total_bytes if self.total_bytes else 0.0


def disk(path: Path) -> Disk:
    """Disk usage of the filesystem holding ``path`` (its nearest existing parent)."""
    p = Path(path).resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    u = shutil.disk_usage(p)
    return Disk(str(path), u.free, u.total)
