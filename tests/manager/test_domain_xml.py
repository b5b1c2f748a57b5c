"""Domain XML: what kvmkit reads and writes, checked against libvirt's own
schema (virt-xml-validate from Debian's libvirt-clients) and against a file
libvirt itself writes (with everything kvmkit lacks)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from kvmkit.manager.domain_parse import parse_domain
from kvmkit.manager.domain_xml import domain_xml
from kvmkit.manager.errors import Unsupported, XmlError

from .helpers import DATA

FULL = """<domain type='kvm'>
  <name>full</name>
  <uuid>7a4b8c9d-1e2f-4a5b-8c6d-7e8f9a0b1c2d</uuid>
  <title>every supported element</title>
  <description>round trip</description>
  <metadata><app:info xmlns:app="http://example.org/app">kept verbatim</app:info></metadata>
  <memory unit='GiB'>1</memory>
  <currentMemory unit='MB'>512</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>/boot/vmlinux</kernel>
    <initrd>/boot/initrd.cpio</initrd>
    <cmdline>console=ttyS0 quiet</cmdline>
  </os>
  <features><acpi/><apic/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' cache='none' discard='unmap'/>
      <source file='/var/lib/kvmkit/images/data.raw'/>
      <target dev='vdb' bus='virtio'/>
      <readonly/>
      <serial>DATA1</serial>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='unsafe' error_policy='enospace' rerror_policy='stop'/>
      <source file='/var/lib/kvmkit/images/root.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='ethernet'><mac address='52:54:00:AA:bb:01'/><target dev='tap7'/><model type='virtio'/></interface>
    <interface type='bridge'><mac address='52:54:00:aa:bb:02'/><source bridge='br0'/></interface>
    <interface type='network'><mac address='52:54:00:aa:bb:03'/><source network='default'/></interface>
    <serial type='unix'><source mode='bind' path='/run/full.console'/><target type='isa-serial' port='0'/></serial>
    <console type='unix'><source mode='bind' path='/run/full.console'/><target type='serial' port='0'/></console>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    <memballoon model='virtio' autodeflate='on'/>
    <vsock model='virtio'><cid auto='no' address='42'/></vsock>
  </devices>
</domain>
"""

MINIMAL = "<domain type='kvm'><name>m</name><memory>65536</memory><os><kernel>/k</kernel></os></domain>"


def validate(tmp_path, text: str) -> None:
    if shutil.which("virt-xml-validate") is None:
        pytest.skip("virt-xml-validate is missing (Debian: apt-get install libvirt-clients libxml2-utils)")
    path = tmp_path / "dump.xml"
    path.write_text(text)
    res = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr + text


def test_every_supported_element_round_trips():
    d = parse_domain(FULL)
    assert d.memory == 1 << 30 and d.current_memory == 512 * 10**6 and d.vcpus == 2
    assert [x.target for x in d.disks] == ["vda", "vdb"]          # in the order the guest sees them
    assert d.disks[1].readonly and d.disks[1].cache == "none" and d.disks[1].discard == "unmap"
    assert (d.disks[0].cache, d.disks[0].error_policy, d.disks[0].rerror_policy) == ("unsafe", "enospace", "stop")
    assert d.interfaces[0].mac == "52:54:00:aa:bb:01" and d.interfaces[0].target == "tap7"
    assert [(i.type, i.source) for i in d.interfaces] == [("ethernet", None), ("bridge", "br0"),
                                                         ("network", "default")]
    assert d.serial.type == "unix" and d.serial.path == "/run/full.console" and d.serial.console
    assert d.rng and d.balloon and d.balloon_autodeflate and d.vsock.cid == 42
    assert d.on_reboot == "destroy" and d.acpi and d.apic and not d.pae
    assert "kept verbatim" in d.metadata
    text = domain_xml(d)
    assert parse_domain(text) == d
    assert domain_xml(parse_domain(text)) == text                 # a fixed point: dumpxml is stable


@pytest.mark.parametrize("doc", [FULL, MINIMAL], ids=["full", "minimal"])
def test_libvirt_schema_accepts_dumpxml(tmp_path, doc):
    d = parse_domain(doc)
    validate(tmp_path, domain_xml(d))
    validate(tmp_path, domain_xml(d, domain_id=7, vsock_cid=9, taps=("vnet7n0",)))   # the live form


def test_defaults_are_filled_in_as_libvirt_fills_them():
    a, b = parse_domain(MINIMAL), parse_domain(MINIMAL)
    assert a.uuid != b.uuid                                       # a new UUID each define
    assert a.current_memory == a.memory == 64 << 20 and a.vcpus == 1
    assert a.balloon and not a.acpi                               # libvirt adds a virtio balloon
    nic = parse_domain(MINIMAL.replace("</os>", "</os><devices><interface type='ethernet'/></devices>"))
    assert nic.interfaces[0].mac.startswith("52:54:00:")


def test_a_libvirt_written_file_gets_the_exact_list_of_what_kvmkit_lacks():
    with pytest.raises(Unsupported) as e:
        parse_domain((DATA / "libvirt-written.xml").read_text())
    assert sorted(e.value.items) == sorted([
        "os/boot", "features/vmport", "cpu", "clock/timer", "pm",
        "devices/emulator", "devices/disk/address",
        "devices/disk@device=cdrom", "devices/interface/address", "devices/memballoon/address",
        "devices/controller", "devices/channel", "devices/input", "devices/graphics", "devices/video"])
    assert str(e.value).startswith("unsupported configuration: kvmkit does not support os/boot, ")


def test_unsupported_attribute_values_are_named():
    doc = FULL.replace("<vcpu placement='static'>", "<vcpu placement='auto' current='1'>") \
              .replace("<on_crash>destroy", "<on_crash>coredump-restart").replace("arch='x86_64'", "arch='aarch64'")
    with pytest.raises(Unsupported) as e:
        parse_domain(doc)
    assert set(e.value.items) == {"vcpu@placement=auto", "vcpu@current", "on_crash=coredump-restart",
                                  "os/type@arch=aarch64"}


def test_invalid_xml_names_the_line():
    doc = "<domain type='kvm'>\n  <name>x</name>\n  <memory>1</memroy>\n</domain>\n"
    with pytest.raises(XmlError) as e:
        parse_domain(doc, "bad.xml")
    assert str(e.value) == "XML error: bad.xml:3: mismatched tag (line 3, column 14)"


@pytest.mark.parametrize("change,message", [
    (("65536", "lots"), "memory: 'lots' KiB is not a size"),
    (("<kernel>/k</kernel>", "<kernel>k</kernel>"), "kernel 'k' must be an absolute path"),
    (("<kernel>/k</kernel>", ""), "a <kernel> is required"),
    (("<name>m</name>", "<name>m</name><uuid>nope</uuid>"), "'nope' is not a UUID"),
    (("<name>m</name>", "<name>a/b</name>"), "may not contain '/'"),
    (("65536", "1024"), "below kvmkit's minimum of 32 MiB"),
    (("</os>", "</os><devices><interface type='ethernet'><mac address='01:00:00:00:00:01'/></interface></devices>"),
     "is not a unicast MAC address"),
    (("</os>", "</os><devices>" + 2 * "<disk><source file='/d'/><target dev='vda'/></disk>" + "</devices>"),
     "disk target vda is used twice"),
    (("<domain type='kvm'>", "<!DOCTYPE domain><domain type='kvm'>"), "DOCTYPE declarations are not accepted"),
])
def test_wrong_values_fail_with_their_element_and_line(change, message):
    with pytest.raises(XmlError) as e:
        parse_domain(MINIMAL.replace(*change))
    assert message in str(e.value) and ":1:" in str(e.value)


def test_disk_cache_and_error_policies_reach_the_vmm(tmp_path):
    """libvirt's words, as ``kvmkit run --disk`` takes them (enospace is QEMU's enospc)."""
    from kvmkit.manager.launch import LiveValues, vmm_argv
    from kvmkit.manager.rundir import RunDir
    d = parse_domain(FULL)
    argv = vmm_argv(d, RunDir(tmp_path), LiveValues(1, None, ("tap7", None, None), (None, "br0", None)))
    disks = [argv[i + 1] for i, a in enumerate(argv) if a == "--disk"]
    assert disks[0] == "path=/var/lib/kvmkit/images/root.qcow2,format=qcow2,cache=unsafe,werror=enospc,rerror=stop"
    assert disks[1].startswith("path=/var/lib/kvmkit/images/data.raw,format=raw,readonly=on,cache=none")
    assert "werror" not in disks[1]                       # unset: the VMM's default, as QEMU's
    default = parse_domain(FULL.replace("cache='none'", "cache='default'"))
    assert default.disks[1].cache is None


def test_bad_error_policy_is_named():
    with pytest.raises(Unsupported) as e:
        parse_domain(FULL.replace("error_policy='enospace'", "error_policy='retry'"))
    assert "devices/disk/driver@error_policy=retry" in e.value.items
