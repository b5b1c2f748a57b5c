#!/bin/sh
# Install everything kvmkit needs on a Debian/Ubuntu machine: system packages
# (compiler and kernel build tools for the guest kernel, busybox, qemu-img and
# QEMU as reference peers, iproute2 for test networks, virt-xml-validate from
# libvirt-clients for checking the manager's domain XML, dnsmasq and
# nftables for guest networks, libseccomp for the VMM's syscall filter), then kvmkit itself
# with its test dependencies.  Safe to run again.
set -eu
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends \
    python3 python3-pip python3-venv ca-certificates \
    gcc make perl bison flex bc lz4 libelf-dev libssl-dev cpio xz-utils zstd kmod dpkg-dev binutils \
    busybox-static linux-source-6.1 \
    qemu-utils qemu-system-x86 iproute2 iputils-ping e2fsprogs acpica-tools \
    libvirt-clients libxml2-utils dnsmasq-base nftables libseccomp2
# Use this Python if it lets us install into it; otherwise a venv in .venv
# (Debian's system Python refuses pip installs: PEP 668).
if python3 -m pip install -q -e '.[test]' 2>/dev/null; then
    echo "kvmkit installed for $(command -v python3)"
else
    python3 -m venv .venv
    .venv/bin/pip install -q -e '.[test]'
    echo "kvmkit installed in .venv (activate with: . .venv/bin/activate)"
fi
