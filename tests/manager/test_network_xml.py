"""Network XML: what libvirt writes is read, what kvmkit writes libvirt's
own schema accepts (virt-xml-validate), and every wrong value or missing
feature is named."""

from __future__ import annotations

import ipaddress
import subprocess

import pytest

from kvmkit.manager.errors import Unsupported, XmlError
from kvmkit.manager.network_xml import network_xml, parse_network

FULL = """<network>
  <name>default</name>
  <uuid>0b9d8a2e-7f7e-4a44-9a52-3d4b7c8e1f00</uuid>
  <forward mode='nat'/>
  <bridge name='virbr7' stp='off' delay='2'/>
  <mac address='52:54:00:0A:0B:0C'/>
  <domain name='lab.example'/>
  <ip address='192.168.122.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='192.168.122.2' end='192.168.122.254'/>
      <host mac='52:54:00:00:00:01' name='web' ip='192.168.122.10'/>
    </dhcp>
  </ip>
</network>
"""


def _validate(tmp_path, text: str) -> subprocess.CompletedProcess:
    f = tmp_path / "net.xml"
    f.write_text(text)
    return subprocess.run(["virt-xml-validate", str(f), "network"], capture_output=True, text=True)


def test_round_trip_keeps_every_value_and_validates(tmp_path):
    n = parse_network(FULL)
    assert (n.name, n.uuid, n.forward, n.bridge, n.stp, n.delay, n.mac, n.domain) == (
        "default", "0b9d8a2e-7f7e-4a44-9a52-3d4b7c8e1f00", "nat", "virbr7", False, 2, "52:54:00:0a:0b:0c",
        "lab.example")
    assert n.address == ipaddress.IPv4Interface("192.168.122.1/24")
    assert [(str(r.start), str(r.end)) for r in n.ranges] == [("192.168.122.2", "192.168.122.254")]
    assert [(h.mac, str(h.ip), h.name) for h in n.hosts] == [("52:54:00:00:00:01", "192.168.122.10", "web")]
    out = network_xml(n)
    assert parse_network(out) == n
    assert network_xml(parse_network(out)) == out
    res = _validate(tmp_path, out)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("body, forward", [
    ("<ip address='10.0.0.1' prefix='16'/>", "isolated"),
    ("<forward mode='route'/><ip address='10.0.0.1' prefix='16'/>", "route"),
    ("<forward/>", "nat"),
    ("", "isolated"),
])
def test_minimal_documents_are_completed_and_validate(tmp_path, body, forward):
    n = parse_network(f"<network><name>n</name>{body}</network>", taken_bridges=["virbr0", "virbr1"])
    assert n.forward == forward and n.bridge == "virbr2" and len(n.uuid) == 36
    out = network_xml(n)
    assert parse_network(out) == n
    res = _validate(tmp_path, out)
    assert res.returncode == 0, (out, res.stderr)


@pytest.mark.parametrize("ip, message", [
    ("<ip address='10.0.0.1' netmask='255.255.255.0'><dhcp><range start='10.0.0.20' end='10.0.0.10'/></dhcp></ip>",
     "range start 10.0.0.20 is after its end 10.0.0.10"),
    ("<ip address='10.0.0.1' netmask='255.255.255.0'><dhcp><range start='10.0.1.2' end='10.0.1.9'/></dhcp></ip>",
     "range start 10.0.1.2 is not a host address of 10.0.0.0/24"),
    ("<ip address='10.0.0.1' netmask='255.255.255.0'><dhcp><range start='10.0.0.1' end='10.0.0.9'/></dhcp></ip>",
     "contains the network's own address 10.0.0.1"),
    ("<ip address='10.0.0.1' netmask='255.255.255.0'><dhcp><range start='10.0.0.2' end='10.0.0.255'/></dhcp></ip>",
     "range end 10.0.0.255 is not a host address"),
    ("<ip address='10.0.0.1' netmask='255.0.255.0'/>", "is not an IPv4 netmask"),
    ("<ip address='10.0.0.300' prefix='24'/>", "address '10.0.0.300' is not an IPv4 address"),
    ("<ip address='10.0.0.0' prefix='24'/>", "cannot be a gateway address"),
    ("<ip address='10.0.0.1' prefix='24'><dhcp><host mac='52:54:00:00:00:01' ip='10.0.0.9'/>"
     "<host mac='52:54:00:00:00:01' ip='10.0.0.8'/></dhcp></ip>", "two hosts have mac 52:54:00:00:00:01"),
    ("<ip address='10.0.0.1' prefix='24'><dhcp><host mac='nope' ip='10.0.0.9'/></dhcp></ip>",
     "host mac 'nope' is not a MAC address"),
    ("<ip address='10.0.0.1' prefix='24'><dhcp><host mac='52:54:00:00:00:01' ip='10.9.0.9'/></dhcp></ip>",
     "host ip 10.9.0.9 is not a free host address"),
])
def test_wrong_values_name_the_element_and_line(ip, message):
    with pytest.raises(XmlError) as e:
        parse_network(f"<network>\n<name>n</name>\n{ip}</network>", "n.xml")
    assert message in str(e.value) and "n.xml:3: ip" in str(e.value), str(e.value)


@pytest.mark.parametrize("doc, message", [
    ("<network><bridge name='a-very-long-bridge-name'/><name>n</name></network>", "must be 1-15 characters"),
    ("<network><name>a b</name></network>", "may not contain"),
    ("<network/>", "network: a <name> is required"),
    ("<domain><name>x</name></domain>", "the root element is <domain>, not <network>"),
    ("<network><name>n</name><uuid>xyz</uuid></network>", "'xyz' is not a UUID"),
    ("<network><name>n</name>", "no element found"),
])
def test_bad_documents(doc, message):
    with pytest.raises(XmlError) as e:
        parse_network(doc)
    assert message in str(e.value)


def test_unsupported_features_are_all_listed_by_path():
    doc = """<network><name>n</name><forward mode='bridge'/><dns><forwarder addr='8.8.8.8'/></dns>
      <ip family='ipv6' address='fd00::1' prefix='64'/><bandwidth/><portgroup name='x'/></network>"""
    with pytest.raises(Unsupported) as e:
        parse_network(doc)
    assert e.value.items == ["forward@mode=bridge", "ip@family=ipv6", "dns", "bandwidth", "portgroup"]
