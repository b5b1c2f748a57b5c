"""Debian packages as build inputs: resolve versions, download, unpack.

Everything goes through the ordinary apt clients (``apt-cache``, ``apt-get
download``, ``dpkg-deb``) so no root is needed and nothing is installed: the
packages are only raw material. Resolved versions feed the cache keys, which
is why a version is asked of apt before anything is downloaded.

Asking apt costs about 0.3 s a question (``apt-cache`` loads its whole
cache), and ``kvmkit run`` asks three before it can find its cached guest;
so answers are kept in the guest cache, keyed by the state of apt's own
files: an ``apt-get update``, an install or an edited source list asks
again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from kvmkit.atomicfile import atomic_write
from kvmkit.guest.cache import cache_dir
from kvmkit.guest.errors import PackageFetchError

_APT_HINT = "run `apt-get update` (as root) and check the network"

#: What apt's answers depend on: the package lists, what is installed, the sources and pins.
APT_STATE_PATHS = ("/var/lib/apt/lists", "/var/lib/dpkg/status", "/etc/apt/sources.list",
                   "/etc/apt/sources.list.d", "/etc/apt/preferences", "/etc/apt/preferences.d")
ANSWERS_FILE = "apt-answers.json"


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


def _apt_state() -> list[int]:
    """mtimes (ns) of apt's state: of each path and, for a directory, of its entries."""
    stamps = []
    for path in APT_STATE_PATHS:
        try:
            stamps.append(os.stat(path).st_mtime_ns)
            if os.path.isdir(path):
                stamps.extend(sorted(e.stat().st_mtime_ns for e in os.scandir(path)))
        except OSError:
            stamps.append(0)
    return stamps


def _remembered(question: str, ask: Callable[[], str]) -> str:
    """apt's answer to ``question``, from the answers file while apt's state is unchanged."""
    path = cache_dir() / ANSWERS_FILE
    state = _apt_state()
    try:
        saved = json.loads(path.read_text())
        answers = saved["answers"] if saved.get("state") == state else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        answers = {}
    if not isinstance(answers, dict):
        answers = {}
    if isinstance(answers.get(question), str):
        return answers[question]
    answer = ask()
    answers[question] = answer
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps({"state": state, "answers": answers}), mode=0o644)
    except OSError:
        pass                                  # a read-only cache only costs the time
    return answer


def candidate_version(package: str) -> str:
    """The version ``apt-get download`` would fetch for ``package``."""
    return _remembered(f"candidate {package}", lambda: _ask_candidate(package))


def _ask_candidate(package: str) -> str:
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
    return _remembered(f"depends {metapackage} {pattern}", lambda: _ask_dependency(metapackage, pattern))


def _ask_dependency(metapackage: str, pattern: str) -> str:
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
