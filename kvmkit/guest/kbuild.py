"""Build the fast guest kernel from Debian's ``linux-source-6.1``.

The kernel is ``make tinyconfig`` plus the fragment kept in the tree
(``fast-guest.config``), because on emulating hosts each initcall costs
seconds: the smaller the kernel, the sooner it reaches ``/init``. Kconfig
silently drops options whose dependencies are unmet, so after
``olddefconfig`` every line of the fragment is checked against the result
and a dropped one fails the build with its name.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
from collections import deque
from pathlib import Path

from kvmkit.guest import debian
from kvmkit.guest.errors import GuestBuildError
from kvmkit.guest.progress import Progress

SOURCE_PACKAGE = "linux-source-6.1"
PACKAGED_TARBALL = "usr/src/linux-source-6.1.tar.xz"  # path inside the .deb
INSTALLED_TARBALL = Path("/") / PACKAGED_TARBALL
FRAGMENT = Path(__file__).with_name("fast-guest.config")

_TOOLS = {"make": "make", "gcc": "gcc", "bison": "bison", "flex": "flex", "bc": "bc",
          "lz4": "lz4", "perl": "perl", "tar": "tar", "xz": "xz-utils"}
_OPTION = re.compile(r"^(CONFIG_\w+)=(.*)$|^# (CONFIG_\w+) is not set$")


def parse_config(text: str) -> dict[str, str]:
    """Kconfig lines as {name: value}; ``# CONFIG_X is not set`` becomes ``n``."""
    options: dict[str, str] = {}
    for line in text.splitlines():
        match = _OPTION.match(line.strip())
        if match:
            if match.group(1):
                options[match.group(1)] = match.group(2)
            else:
                options[match.group(3)] = "n"
    return options


def dropped_options(fragment: dict[str, str], config: dict[str, str]) -> list[str]:
    """Fragment options whose value did not survive into the final config."""
    return [f"{name}={want} (got {config.get(name, 'n')})"
            for name, want in fragment.items() if config.get(name, "n") != want]


def check_tools() -> None:
    """Fail early, naming the apt packages, if a kernel build tool is missing."""
    missing = sorted({pkg for tool, pkg in _TOOLS.items() if shutil.which(tool) is None})
    if not Path("/usr/include/gelf.h").exists():
        missing.append("libelf-dev")
    if missing:
        raise GuestBuildError("building the fast guest kernel needs: apt-get install " + " ".join(missing))


def toolchain_id() -> str:
    """The compiler version, part of the cache key (a new gcc may change code)."""
    proc = subprocess.run(["gcc", "--version"], capture_output=True, text=True)
    return proc.stdout.splitlines()[0] if proc.returncode == 0 and proc.stdout else "gcc-unknown"


def source_version() -> str:
    """The linux-source-6.1 version to build: the installed one, else apt's candidate."""
    installed = debian.installed_version(SOURCE_PACKAGE)
    if installed and INSTALLED_TARBALL.exists():
        return installed
    return debian.candidate_version(SOURCE_PACKAGE)


def _source_tarball(version: str, debs: Path, work: Path) -> Path:
    if INSTALLED_TARBALL.exists() and debian.installed_version(SOURCE_PACKAGE) == version:
        return INSTALLED_TARBALL
    deb = debian.download(SOURCE_PACKAGE, version, debs)
    unpacked = debian.unpack(deb, work / "linux-source-deb")
    return unpacked / PACKAGED_TARBALL


def source_tree(version: str, debs: Path, work: Path, progress: Progress) -> Path:
    """The unpacked kernel source for ``version``, extracted once and reused."""
    tree = work / f"linux-source-{version.replace(':', '_')}"
    if (tree / ".kvmkit-extracted").exists():
        return tree
    tarball = _source_tarball(version, debs, work)
    progress.update(f"unpacking {tarball.name}")
    shutil.rmtree(tree, ignore_errors=True)
    scratch = work / "extract.tmp"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    with tarfile.open(tarball) as tar:
        top = tar.next()
        if top is None:
            raise GuestBuildError(f"{tarball} is empty")
    subprocess.run(["tar", "-xf", str(tarball), "-C", str(scratch)], check=True)
    (scratch / top.name.split("/")[0]).rename(tree)
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.rmtree(work / "linux-source-deb", ignore_errors=True)
    (tree / ".kvmkit-extracted").write_text(version + "\n")
    return tree


def _make(tree: Path, objdir: Path, args: list[str], log: Path, progress: Progress) -> None:
    """Run make with output to ``log``; show its progress; raise with the tail on failure."""
    env = dict(os.environ, KBUILD_BUILD_USER="kvmkit", KBUILD_BUILD_HOST="kvmkit", LC_ALL="C")
    argv = ["make", "-C", str(tree), f"O={objdir}", *args]
    tail: deque[str] = deque(maxlen=15)
    with open(log, "a") as fh:
        fh.write("$ " + " ".join(argv) + "\n")
        fh.flush()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, env=env, errors="replace")
        assert proc.stdout is not None
        for line in proc.stdout:
            fh.write(line)
            fh.flush()  # so `tail -f` on the log follows the build
            tail.append(line.rstrip())
            progress.update(line)
        status = proc.wait()
    if status != 0:
        detail = "\n  ".join(tail)
        raise GuestBuildError(f"`make {' '.join(args)}` failed (exit {status}); full log: {log}\n  {detail}")


def configure(tree: Path, objdir: Path, fragment: Path, log: Path, progress: Progress) -> dict[str, str]:
    """tinyconfig + fragment + olddefconfig in ``objdir``; verify the fragment survived."""
    objdir.mkdir(parents=True, exist_ok=True)
    progress.update("configuring (tinyconfig + fast-guest.config)")
    _make(tree, objdir, ["tinyconfig"], log, progress)
    merge = [str(tree / "scripts/kconfig/merge_config.sh"), "-m", "-O", str(objdir),
             str(objdir / ".config"), str(fragment)]
    with open(log, "a") as fh:
        proc = subprocess.run(merge, cwd=tree, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise GuestBuildError(f"merge_config.sh failed (exit {proc.returncode}); full log: {log}")
    _make(tree, objdir, ["olddefconfig"], log, progress)
    config = parse_config((objdir / ".config").read_text())
    dropped = dropped_options(parse_config(fragment.read_text()), config)
    if dropped:
        raise GuestBuildError(f"Kconfig dropped options of {fragment.name} (unmet dependencies?): "
                              + ", ".join(dropped))
    return config


def build_kernel(tree: Path, objdir: Path, out: Path, log: Path, progress: Progress) -> None:
    """Configure and build ``bzImage`` in ``objdir``; copy bzImage, vmlinux, .config to ``out``."""
    configure(tree, objdir, FRAGMENT, log, progress)
    jobs = str(os.cpu_count() or 1)
    _make(tree, objdir, [f"-j{jobs}", "bzImage"], log, progress)
    shutil.copy2(objdir / "arch/x86/boot/bzImage", out / "bzImage")
    shutil.copy2(objdir / "vmlinux", out / "vmlinux")
    shutil.copy2(objdir / ".config", out / "config")
