"""The QMP monitor: QEMU's JSON control protocol over a unix or TCP socket,
so existing QMP clients (qemu.qmp, qmp-shell, scripts) steer kvmkit unchanged.

Modules, one concept each (nothing is imported here, to keep ``kvmkit``
start-up light):

- ``server``     sockets, sessions, event fan-out (:class:`QmpServer`)
- ``framing``    cutting the byte stream into JSON messages, parse errors
- ``protocol``   greeting, reply, error and event shapes; envelope checks
- ``schema``     argument types and QEMU's argument error messages
- ``commands``   the command table and dispatch (:class:`CommandTable`)
- ``catalog``    the standard command set (``default_commands()``)
- ``cmd_monitor``, ``cmd_vm``, ``hmp``   the commands themselves
- ``cpu_dump``   ``info registers`` text
- ``address``    ``unix:PATH`` / ``tcp:HOST:PORT`` parsing, loopback rule
- ``client``     a small synchronous client (CLI, benchmarks)

The monitor steers the VM only through :class:`kvmkit.vmm.api.VmControl`.
"""
