"""One target under atheris/libFuzzer, in a process of its own (libFuzzer
exits the process when done).  Crashes are recorded, not raised, so one
run counts every distinct crash instead of stopping at the first."""

from __future__ import annotations

import json
import logging
import os
import sys

import atheris


def main() -> None:
    name, runs, crash_dir, corpus_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    max_time = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    logging.disable(logging.CRITICAL)            # devices log every hostile ring they refuse
    with atheris.instrument_imports(include=["kvmkit"]):
        from fuzz.harness import load_all, run_one
        t = load_all()[name]
    os.makedirs(corpus_dir, exist_ok=True)
    for i, seed in enumerate(t.seeds()):
        with open(os.path.join(corpus_dir, f"seed-{i}"), "wb") as f:
            f.write(seed)
    seen: set[str] = set()

    def one(data: bytes) -> None:
        crash = run_one(t, data)
        if crash is not None and crash.signature not in seen:
            seen.add(crash.signature)
            base = os.path.join(crash_dir, f"crash-{len(seen)}")
            with open(base + ".bin", "wb") as f:
                f.write(data)
            with open(base + ".json", "w") as f:
                json.dump({"signature": crash.signature, "error": crash.error, "trace": crash.trace}, f)

    flags = [f"-runs={runs}", "-timeout=10", "-rss_limit_mb=4096", f"-artifact_prefix={crash_dir}/",
             "-max_len=16384", "-print_final_stats=1"] + ([f"-max_total_time={max_time}"] if max_time else [])
    atheris.Setup([sys.argv[0], *flags, corpus_dir], one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
