"""ACPI tables as built bytes: checksums, lengths, signatures, the pointer
chain an OS follows, the MADT per CPU, and iasl's opinion of the AML."""

from __future__ import annotations

import shutil
import struct
import subprocess

import pytest

from kvmkit.arch.x86 import acpi, aml
from kvmkit.arch.x86.mptable import MPTABLE_ADDR


def _image(tables):
    """A sparse 'memory' of the low 1 MiB holding every table."""
    mem = bytearray(0x100000)
    for addr, data in tables:
        mem[addr:addr + len(data)] = data
    return mem


def _table(mem, addr):
    length = struct.unpack_from("<I", mem, addr + 4)[0]
    return bytes(mem[addr:addr + length])


def _walk(nr_cpus=2, pci=None):
    mem = _image(acpi.build_acpi_tables(nr_cpus, pci=pci))
    rsdp = bytes(mem[acpi.RSDP_ADDR:acpi.RSDP_ADDR + 36])
    xsdt = _table(mem, struct.unpack_from("<Q", rsdp, 24)[0])
    by_sig = {}
    for (addr,) in struct.iter_unpack("<Q", xsdt[36:]):
        t = _table(mem, addr)
        by_sig[t[:4]] = t
    fadt = by_sig[b"FACP"]
    facs_addr, dsdt_addr = struct.unpack_from("<II", fadt, 36)
    assert struct.unpack_from("<Q", fadt, 140)[0] == dsdt_addr
    by_sig[b"DSDT"] = _table(mem, dsdt_addr)
    by_sig[b"FACS"] = bytes(mem[facs_addr:facs_addr + 64])
    return rsdp, xsdt, by_sig, facs_addr


def test_rsdp_v2_with_both_checksums():
    rsdp, _, _, _ = _walk()
    assert rsdp[:8] == b"RSD PTR " and rsdp[15] == 2
    assert sum(rsdp[:20]) & 0xFF == 0 and sum(rsdp) & 0xFF == 0
    assert struct.unpack_from("<I", rsdp, 20)[0] == 36


@pytest.mark.parametrize("pci", [None, acpi.PciRoot(), acpi.PciRoot(intx=((1, 0, 11), (2, 0, 11)))])
def test_every_table_checksums_and_is_where_the_chain_says(pci):
    _, xsdt, tables, facs_addr = _walk(pci=pci)
    for sig, t in [(b"XSDT", xsdt), *tables.items()]:
        if sig == b"FACS":
            continue
        assert t[:4] == sig
        assert struct.unpack_from("<I", t, 4)[0] == len(t)
        assert sum(t) & 0xFF == 0, sig
        assert t[10:16] == acpi.OEM_ID
    assert set(tables) == {b"FACP", b"APIC", b"DSDT", b"FACS"}
    assert len(tables[b"FACP"]) == 276 and tables[b"FACP"][8] == 6
    assert facs_addr % 64 == 0 and tables[b"FACS"][:4] == b"FACS"
    assert struct.unpack_from("<I", tables[b"FACS"], 4)[0] == 64


def test_tables_fit_the_reserved_region_and_miss_the_mp_table():
    for cpus in (1, 8, 254):
        tables = acpi.build_acpi_tables(cpus, pci=acpi.PciRoot(intx=tuple((s, p, 20 + (s + p) % 4) for s in range(1, 32) for p in range(4))))
        spans = sorted((a, a + len(d)) for a, d in tables)
        assert spans[0][0] == acpi.ACPI_REGION[0] and spans[-1][1] <= acpi.ACPI_REGION[1] <= MPTABLE_ADDR
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))


def test_fadt_describes_the_pm_block():
    _, _, t, _ = _walk()
    fadt = t[b"FACP"]
    sci, smi = struct.unpack_from("<HI", fadt, 46)
    assert (sci, smi) == (acpi.SCI_IRQ, 0)                       # always in ACPI mode
    assert struct.unpack_from("<I", fadt, 56)[0] == acpi.PM1_EVT_PORT
    assert struct.unpack_from("<I", fadt, 64)[0] == acpi.PM1_CNT_PORT
    assert fadt[88:90] == bytes([4, 2])
    flags = struct.unpack_from("<I", fadt, 112)[0]
    assert not flags & (1 << 4)                                  # fixed-feature power button
    assert not flags & (1 << 20)                                 # not hardware-reduced
    for off, port, bits in ((148, acpi.PM1_EVT_PORT, 32), (172, acpi.PM1_CNT_PORT, 16)):
        space, width, _, _, addr = struct.unpack_from("<BBBBQ", fadt, off)
        assert (space, width, addr) == (1, bits, port)           # X_ block agrees with the 32-bit one


@pytest.mark.parametrize("cpus", [1, 2, 4, 64])
def test_madt_one_lapic_per_cpu_ioapic_and_sci_override(cpus):
    _, _, t, _ = _walk(cpus)
    madt = t[b"APIC"]
    assert struct.unpack_from("<II", madt, 36) == (0xFEE00000, 1)
    entries, off = [], 44
    while off < len(madt):
        kind, length = madt[off], madt[off + 1]
        entries.append((kind, madt[off:off + length]))
        off += length
    assert off == len(madt)
    lapics = [e for k, e in entries if k == 0]
    assert [(e[2], e[3], struct.unpack_from("<I", e, 4)[0]) for e in lapics] == \
        [(i, i, 1) for i in range(cpus)]
    (ioapic,) = [e for k, e in entries if k == 1]
    assert ioapic[2] == cpus and struct.unpack_from("<II", ioapic, 4) == (0xFEC00000, 0)
    isos = [e for k, e in entries if k == 2]
    assert [(e[3], struct.unpack_from("<IH", e, 4)) for e in isos] == [(9, (9, 0xD))]  # identity, level, high


def test_dsdt_s5_matches_soft_off_type():
    _, _, t, _ = _walk()
    dsdt = t[b"DSDT"]
    i = dsdt.index(b"_S5_")
    assert dsdt[i + 4:i + 13] == bytes([0x12, 8, 4, 0x0A, acpi.SLP_TYP_S5, 0x0A, acpi.SLP_TYP_S5, 0, 0])
    assert b"PCI0" not in dsdt


def test_aml_encodings():
    assert aml.pkg_length(0x3E) == bytes([0x3F])
    assert aml.pkg_length(0x3F) == bytes([0x41, 0x04])          # 0x41 = 2 bytes, 0x41 total
    assert aml.pkg_length(0x1000) == bytes([0x83, 0x00, 0x01])   # 3 bytes, 0x1003 total
    assert aml.integer(0) == b"\0" and aml.integer(0x1234) == b"\x0b\x34\x12"
    assert aml.eisa_id("PNP0A03") == b"\x0c\x41\xd0\x0a\x03"
    assert aml.name_string("\\_SB.PCI0") == b"\\.\x5fSB_PCI0"
    with pytest.raises(ValueError):
        aml.name_seg("abcde")


@pytest.mark.skipif(shutil.which("iasl") is None, reason="iasl (acpica-tools) not installed")
@pytest.mark.parametrize("pci", [None, acpi.PciRoot(intx=tuple((s, p, 11) for s in (1, 3) for p in range(4)))])
def test_iasl_decompiles_the_tables(tmp_path, pci):
    _, xsdt, t, _ = _walk(pci=pci)
    for sig, data in [(b"XSDT", xsdt), *t.items()]:
        (tmp_path / f"{sig.decode()}.dat").write_bytes(data)
    names = [f"{s}.dat" for s in ("DSDT", "FACP", "APIC", "XSDT", "FACS")]
    for n in names:
        r = subprocess.run(["iasl", "-d", n], cwd=tmp_path, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "Error" not in r.stdout + r.stderr and "Warning" not in r.stdout + r.stderr, r.stdout
    dsl = (tmp_path / "DSDT.dsl").read_text()
    assert "Name (\\_S5, Package (0x04)" in dsl and "0x05" in dsl
    if pci is not None:
        assert 'EisaId ("PNP0A03")' in dsl and "_BBN" in dsl
        assert "0xD0000000" in dsl and "0xFDFFFFFF" in dsl and "0x0CF7" in dsl
        assert dsl.count("0x0003FFFF") == 4 and "0x0B" in dsl
    fadt = (tmp_path / "FACP.dsl").read_text()
    assert "PM1A Control Block Address : 00000604" in fadt
    # Recompile the decompiled DSDT: it must be valid ASL, not just decodable bytes.
    r = subprocess.run(["iasl", "-p", "re", "DSDT.dsl"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_rejects_bad_layouts():
    with pytest.raises(ValueError):
        acpi.build_acpi_tables(0)
    with pytest.raises(ValueError):
        acpi.build_acpi_tables(2, rsdp_addr=0xD0000)
    with pytest.raises(ValueError):
        acpi.build_acpi_tables(2, base=acpi.RSDP_ADDR + 16)
