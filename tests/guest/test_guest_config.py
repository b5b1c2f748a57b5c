"""The fast-guest config fragment kept in the tree, and the checks applied to it."""

from __future__ import annotations

import re

from kvmkit.guest import kbuild

REQUIRED = """64BIT SMP X86_MPPARSE ACPI PCI PCI_MSI PRINTK PRINTK_TIME TTY SERIAL_8250
SERIAL_8250_CONSOLE BLK_DEV_INITRD DEVTMPFS DEVTMPFS_MOUNT PROC_FS SYSFS TMPFS BINFMT_ELF
BINFMT_SCRIPT EXT4_FS BLOCK KVM_GUEST PARAVIRT HYPERVISOR_GUEST VIRTIO VIRTIO_PCI VIRTIO_MMIO
VIRTIO_MMIO_CMDLINE_DEVICES VIRTIO_BLK NET INET UNIX PACKET IP_PNP NETDEVICES VIRTIO_NET
VIRTIO_CONSOLE HW_RANDOM HW_RANDOM_VIRTIO VIRTIO_BALLOON MEMORY_BALLOON VSOCKETS VIRTIO_VSOCKETS
SERIO_I8042 KEYBOARD_ATKBD INPUT RTC_CLASS RTC_DRV_CMOS FUTEX EPOLL SHMEM MULTIUSER
POSIX_TIMERS""".split()


def _lines() -> list[str]:
    return [ln.strip() for ln in kbuild.FRAGMENT.read_text().splitlines() if ln.strip()]


def test_every_line_is_an_option_or_a_comment() -> None:
    for line in _lines():
        assert (re.fullmatch(r"CONFIG_[A-Z0-9_]+=(y|n|m|-?\d+|0x[0-9a-f]+|\".*\")", line)
                or re.fullmatch(r"# CONFIG_[A-Z0-9_]+ is not set", line)
                or (line.startswith("# ") and "CONFIG_" not in line.split()[1])
                or line == "#"), f"malformed line: {line!r}"


def test_no_option_is_set_twice() -> None:
    names = [m.group(1) for ln in _lines() if (m := re.search(r"(CONFIG_\w+)(=| is not set)", ln))]
    assert len(names) == len(set(names))


def test_required_options_are_built_in_and_the_rest_off() -> None:
    options = kbuild.parse_config(kbuild.FRAGMENT.read_text())
    assert [o for o in REQUIRED if options.get(f"CONFIG_{o}") != "y"] == []
    assert options["CONFIG_NR_CPUS"] == "64"
    assert options["CONFIG_SERIAL_8250_NR_UARTS"] == "4"
    assert options["CONFIG_MODULES"] == "n" and options["CONFIG_RANDOMIZE_BASE"] == "n"


def test_dropped_options_are_named() -> None:
    fragment = kbuild.parse_config("CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=64\nCONFIG_D=y\n")
    final = kbuild.parse_config("CONFIG_A=y\nCONFIG_B=y\nCONFIG_C=32\n# CONFIG_D is not set\n")
    assert kbuild.dropped_options(fragment, final) == ["CONFIG_B=n (got y)", "CONFIG_C=64 (got 32)",
                                                        "CONFIG_D=y (got n)"]
    assert kbuild.dropped_options(fragment, fragment) == []
