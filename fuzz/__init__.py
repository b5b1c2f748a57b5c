"""Coverage-guided fuzzing of every kvmkit parser of untrusted input.

A target is a function of one byte string that drives one parser the way
its real caller does (a qcow2 file opened and read, a QMP byte stream fed to
the framer, a guest's rings walked by a device...).  It may raise only the
error types it documents (the ones a caller turns into a one-line message
or a failed request); anything else, a hang, or guest memory touched
outside guest RAM is a crash.

``python -m fuzz TARGET --runs N`` runs one target under atheris (libFuzzer)
and prints executions, coverage and crashes; ``python -m fuzz all`` runs
each in turn.  The test suite runs each target for a bounded number of
inputs without libFuzzer (tests/fuzz/test_fuzz_targets.py).
"""
