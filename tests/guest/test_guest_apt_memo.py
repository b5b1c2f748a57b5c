"""apt's answers (candidate versions, a metapackage's kernel) are kept in
the guest cache while apt's own files are unchanged, so ``kvmkit run`` does
not spend ~1 s asking apt-cache before it can find its cached guest; any
change to apt's state (an update, an install, a new source) asks apt again.
Against the real apt-cache of this host."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from kvmkit.guest import debian

PACKAGE = "busybox-static"


@pytest.fixture
def answers(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    stamp = tmp_path / "apt-stamp"               # stands for one more file of apt's state
    stamp.write_text("")
    monkeypatch.setattr(debian, "APT_STATE_PATHS", debian.APT_STATE_PATHS + (str(stamp),))
    return tmp_path / "cache" / "kvmkit" / "guests" / debian.ANSWERS_FILE, stamp


def _apt_candidate() -> str:
    out = subprocess.run(["apt-cache", "policy", PACKAGE], capture_output=True, text=True, check=True).stdout
    return re.search(r"Candidate:\s*(\S+)", out).group(1)


def test_an_answer_is_kept_until_apt_state_changes(answers):
    path, stamp = answers
    real = _apt_candidate()
    assert debian.candidate_version(PACKAGE) == real
    saved = json.loads(path.read_text())
    assert saved["answers"][f"candidate {PACKAGE}"] == real
    saved["answers"][f"candidate {PACKAGE}"] = "9:planted"        # the file, not apt, answers now
    path.write_text(json.dumps(saved))
    assert debian.candidate_version(PACKAGE) == "9:planted"
    st = os.stat(stamp)
    os.utime(stamp, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))   # apt's state moved on
    assert debian.candidate_version(PACKAGE) == real


def test_a_damaged_answers_file_is_asked_again(answers):
    path, _ = answers
    path.parent.mkdir(parents=True)
    for junk in ("{", "[]", '{"state": 1, "answers": 2}', '{"state": null}'):
        path.write_text(junk)
        assert debian.candidate_version(PACKAGE) == _apt_candidate()


def test_the_kernel_of_a_metapackage_is_kept_too(answers):
    path, _ = answers
    name = debian.resolve_dependency("linux-image-amd64", r"linux-image-[0-9.]+-[0-9]+-amd64")
    assert name.startswith("linux-image-")
    assert name in json.loads(path.read_text())["answers"].values()
