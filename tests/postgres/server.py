"""A throwaway Postgres from Debian's package: initdb into a temporary directory, trust auth,
listening on 127.0.0.1 on a free port (its unix socket in the same directory), stopped and
removed at the end. initdb refuses to run as root, so as root the server runs as the
`postgres` user the package creates.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from services.devrun import free_port


def find_bin_dir() -> Path | None:
    """The directory holding initdb, pg_ctl and psql: the newest /usr/lib/postgresql/*/bin
    (Debian puts only links to some of them on PATH), else the one of pg_ctl on PATH."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("pg_ctl")
    return Path(found).resolve().parent if found else None


@dataclass
class Postgres:
    bin_dir: Path
    root: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def _as_owner(self, *args: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else list(args)

    @classmethod
    def start(cls, bin_dir: Path) -> Postgres:
        root = Path(tempfile.mkdtemp(prefix="comfyfleet-pg-"))
        pg = cls(bin_dir, root, free_port())
        if os.geteuid() == 0:
            shutil.chown(root, "postgres", "postgres")
        subprocess.run(pg._as_owner(str(bin_dir / "initdb"), "-D", str(pg.data), "-A", "trust", "-U", "postgres",
                                    "-E", "UTF8", "--no-sync", "--no-instructions"),
                       check=True, capture_output=True)
        options = (f"-p {pg.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        subprocess.run(pg._as_owner(str(bin_dir / "pg_ctl"), "-D", str(pg.data), "-l", str(pg.log), "-o", options,
                                    "-w", "-t", "30", "start"), check=True, capture_output=True)
        return pg

    def create_database(self) -> str:
        """A new empty database; its name."""
        name = "t_" + uuid.uuid4().hex[:12]
        subprocess.run([str(self.bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                        "-d", "postgres", "-q", "-c", f"CREATE DATABASE {name}"], check=True, capture_output=True)
        return name

    def stop(self) -> None:
        subprocess.run(self._as_owner(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                                      "-w", "stop"), capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)
