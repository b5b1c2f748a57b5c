"""``kvmkit img`` end to end, checked with qemu-img."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kvmkit.cli import img as cli

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None,
                                reason="qemu-utils is not installed")


def run(capsys, *argv: str | Path) -> tuple[int, str, str]:
    code = cli.main(["img", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def qimg(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-img", *map(str, args)], capture_output=True, text=True)


def test_create_info_check_map(capsys, tmp_path: Path) -> None:
    img = tmp_path / "d.qcow2"
    code, out, _ = run(capsys, "create", "-f", "qcow2", "-o", "cluster_size=4k", img, "10G")
    assert code == 0 and "fmt=qcow2" in out
    assert img.stat().st_size < 1 << 20                 # thin: a few hundred KiB at most
    code, out, _ = run(capsys, "info", "--output", "json", img)
    ours = json.loads(out)
    theirs = json.loads(qimg("info", "--output", "json", img).stdout)
    for key in ("virtual-size", "format", "cluster-size", "dirty-flag", "format-specific"):
        assert ours[key] == theirs[key], key
    code, out, _ = run(capsys, "check", img)
    assert code == 0 and "No errors" in out
    subprocess.run(["qemu-io", "-c", "write -P 7 1M 8k", str(img)], capture_output=True)
    code, out, _ = run(capsys, "map", "--output", "json", img)
    assert json.loads(out) == json.loads(qimg("map", "--output", "json", img).stdout)


def test_create_with_backing_and_raw(capsys, tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    assert run(capsys, "create", "-f", "raw", base, "1M")[0] == 0
    top = tmp_path / "top.qcow2"
    assert run(capsys, "create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", top)[0] == 0
    info = json.loads(qimg("info", "--output", "json", top).stdout)
    assert info["backing-filename"] == "base.raw" and info["virtual-size"] == 1 << 20


def test_convert_progress_and_compress(capsys, tmp_path: Path) -> None:
    src = tmp_path / "s.qcow2"
    qimg("create", "-f", "qcow2", src, "8M")
    subprocess.run(["qemu-io", "-c", "write -P 0x3c 0 3M", str(src)], capture_output=True)
    raw, comp = tmp_path / "s.raw", tmp_path / "c.qcow2"
    code, _, err = run(capsys, "convert", "-p", "-f", "qcow2", "-O", "raw", src, raw)
    assert code == 0 and "100%" in err
    code, _, _ = run(capsys, "convert", "-c", "-O", "qcow2", raw, comp)
    assert code == 0
    assert qimg("compare", src, comp).returncode == 0
    assert qimg("check", comp).returncode == 0
    assert comp.stat().st_size < 1 << 20


def test_check_exit_codes(capsys, tmp_path: Path) -> None:
    from kvmkit.block.qcow2.image import Qcow2Image
    img = tmp_path / "l.qcow2"
    qimg("create", "-f", "qcow2", img, "4M")
    with Qcow2Image.open(str(img)) as q:
        off = q.refs.allocate(1)
        import os
        os.pwrite(q.fd, b"x" * q.cs, off)
    code, out, _ = run(capsys, "check", img)
    assert code == 3 and "1 leaked clusters" in out
    code, out, _ = run(capsys, "check", "--output", "json", img)
    assert code == 3 and json.loads(out)["leaks"] == 1
    code, out, _ = run(capsys, "check", "-r", "all", img)
    assert code == 0 and "repaired" in out
    assert qimg("check", img).returncode == 0


def test_snapshot_resize_rebase_commit(capsys, tmp_path: Path) -> None:
    base, top = tmp_path / "b.qcow2", tmp_path / "t.qcow2"
    qimg("create", "-f", "qcow2", base, "4M")
    subprocess.run(["qemu-io", "-c", "write -P 1 0 1M", str(base)], capture_output=True)
    assert run(capsys, "snapshot", "-c", "first", base)[0] == 0
    code, out, _ = run(capsys, "snapshot", "-l", base)
    assert "first" in out and "first" in qimg("snapshot", "-l", base).stdout
    assert run(capsys, "resize", base, "+4M")[0] == 0
    assert json.loads(qimg("info", "--output", "json", base).stdout)["virtual-size"] == 8 << 20
    assert run(capsys, "snapshot", "-a", "first", base)[0] == 0
    assert run(capsys, "snapshot", "-d", "first", base)[0] == 0
    assert qimg("check", base).returncode == 0
    # linked clone, then move it onto a copy of its base with different data
    qimg("create", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", top)
    subprocess.run(["qemu-io", "-c", "write -P 2 512k 4k", str(top)], capture_output=True)
    expected = tmp_path / "expected.raw"
    qimg("convert", "-O", "raw", top, expected)
    other = tmp_path / "o.qcow2"
    qimg("create", "-f", "qcow2", other, "4M")
    assert run(capsys, "rebase", "-b", "o.qcow2", "-F", "qcow2", top)[0] == 0
    assert qimg("compare", top, expected).returncode == 0
    assert qimg("check", top).returncode == 0
    assert run(capsys, "rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", top)[0] == 0
    assert json.loads(qimg("info", "--output", "json", top).stdout)["backing-filename"] \
        == "b.qcow2"
    code, out, _ = run(capsys, "commit", top)
    assert code == 0
    assert qimg("compare", base, expected).returncode == 0
    assert qimg("check", base).returncode == 0 and qimg("check", top).returncode == 0


def test_errors_are_one_line(capsys, tmp_path: Path) -> None:
    code, out, err = run(capsys, "info", tmp_path / "missing.qcow2")
    assert code == 1 and err.startswith("kvmkit img: error: ") and err.count("\n") == 1
    bad = tmp_path / "bad.qcow2"
    bad.write_bytes(b"QFI\xfb" + b"\0" * 100)
    code, _, err = run(capsys, "info", bad)
    assert code == 1 and "Traceback" not in err and err.startswith("kvmkit img: error:")
    code, _, err = run(capsys, "create", "-f", "qcow2", tmp_path / "x.qcow2", "lots")
    assert code == 1 and "invalid size" in err


def test_module_entry_point(tmp_path: Path) -> None:
    img = tmp_path / "m.qcow2"
    proc = subprocess.run([sys.executable, "-m", "kvmkit.cli.img", "create", "-f", "qcow2",
                           str(img), "1M"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr
    assert qimg("check", img).returncode == 0
