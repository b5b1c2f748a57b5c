"""Debian packages as build inputs: resolve versions, download, unpack.

Everything goes through the ordinary apt clients (``apt-cache``, ``apt-get
download``, ``dpkg-deb``) so no root is needed and nothing is installed: the
packages are only raw material. Resolved versions feed the cache keys, which
is why a version is asked of apt before anything is downloaded.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from kvmkit.guest.errors import PackageFetchError

_APT_HINT = "run `apt-get update` (as root) and check the network"


def _run(argv: list[str], cwd: Path | None = None) -> str:
    """Run an apt/dpkg tool, turning failure into a one-line PackageFetchError."""
    if shutil.which(argv[0]) is None:
        raise PackageFetchError(f"{argv[0]} not found: building guests needs a Debian-like host with apt")
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        detail = lines[-1] if lines else f"exit status {proc.returncode}"
        raise PackageFetchError(f"`{' '.join(argv)}` failed: {detail}")
    return proc.stdout


def installed_version(package: str) -> str | None:
    """The version of ``package`` if dpkg has it fully installed, else None."""
    try:
        out = _run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev}|${Version}", package])
    except PackageFetchError:
        return None
    status, _, version = out.partition("|")
    return version.strip() if status.startswith("ii") and version.strip() else None


def candidate_version(package: str) -> str:
    """The version ``apt-get download`` would fetch for ``package``."""
    out = _run(["apt-cache", "policy", package])
    match = re.search(r"^\s*Candidate:\s*(\S+)", out, re.MULTILINE)
    if not match or match.group(1) == "(none)":
        raise PackageFetchError(f"apt has no candidate version of {package}: {_APT_HINT}")
    return match.group(1)


def resolve_dependency(metapackage: str, pattern: str) -> str:
    """The dependency of ``metapackage`` whose name matches ``pattern``.

    Used to turn ``linux-image-amd64`` into ``linux-image-6.1.0-NN-amd64``:
    the metapackage itself contains no kernel.
    """
    out = _run(["apt-cache", "depends", metapackage])
    regex = re.compile(pattern)
    for line in out.splitlines():
        kind, _, name = line.strip().partition(":")
        name = name.strip()
        if kind.lstrip("|") == "Depends" and regex.fullmatch(name):
            return name
    raise PackageFetchError(f"{metapackage} depends on no package matching {pattern!r}: {_APT_HINT}")


def deb_field(deb: Path, field: str) -> str:
    """A control field of a .deb file (e.g. Version), as dpkg-deb reports it."""
    return _run(["dpkg-deb", "-f", str(deb), field]).strip()


def download(package: str, version: str, dest: Path) -> Path:
    """``apt-get download package=version`` into ``dest``, reusing a cached .deb."""
    dest.mkdir(parents=True, exist_ok=True)
    for deb in sorted(dest.glob(f"{package}_*.deb")):
        try:
            if deb_field(deb, "Version") == version:
                return deb
        except PackageFetchError:
            deb.unlink(missing_ok=True)  # a truncated download: fetch again
    _run(["apt-get", "download", "-q", f"{package}={version}"], cwd=dest)
    for deb in sorted(dest.glob(f"{package}_*.deb")):
        if deb_field(deb, "Version") == version:
            for stale in dest.glob(f"{package}_*.deb"):
                if stale != deb:
                    stale.unlink(missing_ok=True)
            return deb
    raise PackageFetchError(f"apt-get download {package}={version} left no .deb in {dest}")


def unpack(deb: Path, dest: Path) -> Path:
    """``dpkg-deb -x``: the package's files under ``dest``, without installing."""
    dest.mkdir(parents=True, exist_ok=True)
    _run(["dpkg-deb", "-x", str(deb), str(dest)])
    return dest
