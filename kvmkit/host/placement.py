"""vCPU threads placed from outside a jail: a jailed VMM has no cgroup
file system, no ``/proc`` of the host and no ``CAP_SYS_NICE``, so its
supervisor applies the VM's resource settings (:mod:`resources`) for it.

The whole-VM part (the cgroup tree and its limits, the emulator pinning) is
applied to the supervisor before it forks the jail, so every jailed process
starts inside it.  A vCPU thread's own group, pinning and real-time
scheduler need its thread id, which exists only once the thread runs: the
thread sends ``INDEX TID`` (its id in the jail's PID namespace) down a pipe
and waits for the supervisor's answer before its first ``KVM_RUN``, so the
guest never runs unplaced — the same promise as an unjailed VMM's.  The
answer is ``ok`` or the error that stops the VM.
"""

from __future__ import annotations

import os
import select
import threading

from kvmkit.errors import HostResourceError, KvmkitError

ENV_PLACEMENT = "KVMKIT_PLACEMENT_FDS"      # "REQUEST_W,ANSWER_R" in the jailed VMM


class RemotePlacement:
    """The jailed VMM's stand-in for :class:`resources.VmResources`."""

    def __init__(self, request_fd: int, answer_fd: int) -> None:
        self._req, self._ans = request_fd, answer_fd
        self._lock = threading.Lock()           # one request and its answer at a time

    @classmethod
    def from_env(cls) -> "RemotePlacement | None":
        value = os.environ.get(ENV_PLACEMENT)
        if not value:
            return None
        req, ans = (int(x) for x in value.split(","))
        return cls(req, ans)

    def place_vcpu(self, index: int, tid: int) -> None:
        with self._lock:
            os.write(self._req, f"{index} {tid}\n".encode())
            answer = b""
            while not answer.endswith(b"\n"):
                chunk = os.read(self._ans, 4096)
                if not chunk:
                    raise HostResourceError(f"vCPU {index}: the supervisor did not place its thread (gone)")
                answer += chunk
        text = answer.decode(errors="replace").strip()
        if text != "ok":
            raise HostResourceError(text)

    def close(self) -> None:
        pass                                     # the supervisor removes what it made


class PlacementServer:
    """The supervisor's side: pipes made before the fork, requests served
    until the VMM ends (``serve`` returns when ``stop_fd`` is readable)."""

    def __init__(self, resources) -> None:
        self.resources = resources               # a VmResources, applied to the supervisor already
        self._req_r, self.req_w = os.pipe()
        self.ans_r, self._ans_w = os.pipe()
        for fd in (self.req_w, self.ans_r):
            os.set_inheritable(fd, True)

    @property
    def env(self) -> str:
        return f"{self.req_w},{self.ans_r}"

    def child_fds(self) -> tuple[int, int]:
        return self.req_w, self.ans_r

    def forked(self) -> None:
        """In the supervisor after the fork: the VMM's ends are its own."""
        for fd in (self.req_w, self.ans_r):
            os.close(fd)

    def serve(self, supervisor_pid: int, stop_fd: int) -> None:
        from kvmkit.host.jail_process import host_tids
        buf = b""
        while True:
            readable, _, _ = select.select([self._req_r, stop_fd], [], [])
            if self._req_r in readable:
                data = os.read(self._req_r, 4096)
                if not data:
                    return
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    index, ns_tid = (int(x) for x in line.split())
                    try:
                        self.resources.place_vcpu(index, host_tids(supervisor_pid, [ns_tid])[0])
                        answer = "ok"
                    except (KvmkitError, OSError) as exc:
                        answer = str(exc).replace("\n", " ") or repr(exc)
                    os.write(self._ans_w, answer.encode() + b"\n")
            if stop_fd in readable:
                return

    def close(self) -> None:
        for fd in (self._req_r, self._ans_w):
            try:
                os.close(fd)
            except OSError:
                pass
