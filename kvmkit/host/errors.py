"""The one error host plumbing raises: a message naming the thing on the host
(a bridge, an nftables table, dnsmasq) and the host's reason, for the layer
above to prefix (the manager turns it into libvirt's "operation failed")."""

from kvmkit.errors import KvmkitError


class HostNetworkError(KvmkitError):
    """A bridge, address, firewall table or DHCP server could not be set up or torn down."""
