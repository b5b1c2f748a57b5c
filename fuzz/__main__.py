"""``python -m fuzz TARGET|all [--runs N]``: run targets under atheris and
print, per target, executions, libFuzzer's coverage figure (``cov``: edges
of kvmkit code reached), and crashes (distinct exceptions outside the
documented ones, plus libFuzzer's timeouts/hangs), with where they are."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_target(name: str, runs: int, workdir: Path, max_time: int) -> dict:
    crash_dir, corpus = workdir / name / "crashes", workdir / name / "corpus"
    crash_dir.mkdir(parents=True, exist_ok=True)
    # libFuzzer ends the worker with exit(), past Python's atexit: its
    # targets' scratch files go in a directory removed here.
    scratch = Path(tempfile.mkdtemp(prefix=f"scratch-{name}-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               TMPDIR=str(scratch), KVMKIT_FUZZ_SCRATCH=str(scratch))
    log_path = workdir / name / "libfuzzer.log"
    try:
        with open(log_path, "w") as log_file:          # written as it runs: tail it to watch
            rc = subprocess.run([sys.executable, "-m", "fuzz.worker", name, str(runs), str(crash_dir), str(corpus),
                                 str(max_time)], cwd=ROOT, env=env, stdout=log_file,
                                stderr=subprocess.STDOUT).returncode
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log = log_path.read_text(errors="replace")
    execs = re.findall(r"^#(\d+)\s", log, re.M)
    done = re.search(r"Done (\d+) runs", log)
    cov = re.findall(r"cov: (\d+) ft: (\d+)", log)
    crashes = [json.loads(p.read_text()) for p in sorted(crash_dir.glob("crash-*.json"))]
    hangs = [p.name for p in crash_dir.iterdir() if p.name.startswith(("timeout-", "oom-", "crash-"))
             and not p.name.endswith((".json", ".bin"))]
    return {"target": name, "executions": int(done.group(1)) if done else int(execs[-1]) if execs else 0,
            "cov": int(cov[-1][0]) if cov else 0, "ft": int(cov[-1][1]) if cov else 0,
            "crashes": crashes, "hangs": hangs, "rc": rc, "log": str(log_path)}


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(ROOT))
    from fuzz.harness import load_all, names
    targets = load_all()
    ap = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target", help=f"all, an area prefix (qcow2, virtio, qmp) or one of: {', '.join(targets)}")
    ap.add_argument("--runs", type=int, default=100_000, help="inputs per target (default 100000)")
    ap.add_argument("--workdir", help="corpus, crashes and logs (default: a new temporary directory)")
    ap.add_argument("--max-time", type=int, default=0,
                    help="stop a target after this many seconds even if --runs is not reached (0: no limit)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    a = ap.parse_args(argv)
    chosen = names(a.target)
    if not chosen:
        print(f"python -m fuzz: no target {a.target!r} (try: all, {', '.join(targets)})", file=sys.stderr)
        return 2
    if a.runs < 1 or a.max_time < 0:
        print("python -m fuzz: --runs must be at least 1 and --max-time not negative", file=sys.stderr)
        return 2
    workdir = Path(a.workdir or tempfile.mkdtemp(prefix="kvmkit-fuzz-"))
    results, bad = [], 0
    print(f"{'target':<16} {'executions':>10} {'cov':>6} {'ft':>6} {'crashes':>7}  (work: {workdir})")
    for name in chosen:
        r = run_target(name, a.runs, workdir, a.max_time)
        n = len(r["crashes"]) + len(r["hangs"])
        bad += n
        results.append(r)
        print(f"{name:<16} {r['executions']:>10} {r['cov']:>6} {r['ft']:>6} {n:>7}", flush=True)
        for c in r["crashes"]:
            print(f"    crash: {c['signature']}: {c['error'][:160]}")
        for h in r["hangs"]:
            print(f"    libFuzzer artifact (hang/oom/abort): {workdir / name / 'crashes' / h}")
    if a.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "log"} for r in results], indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
