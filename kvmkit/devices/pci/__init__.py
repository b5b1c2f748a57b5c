"""PCI: the host bridge (configuration mechanism #1), function config space
with BARs and capabilities, and MSI-X."""

from kvmkit.devices.pci.function import Bar, BarKind, PciFunction
from kvmkit.devices.pci.host import PciHostBridge
from kvmkit.devices.pci.msix import MsixCapability

__all__ = ["Bar", "BarKind", "MsixCapability", "PciFunction", "PciHostBridge"]
