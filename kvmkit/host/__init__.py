"""Host plumbing below the manager and usable by ``kvmkit run``: networks
(netlink, bridges, NAT, dnsmasq), resource control (cgroups, pinning),
memory features (KSM, hugepages) and per-VM isolation (namespaces, jail,
seccomp).  One small module per concept; nothing here knows about domains."""
