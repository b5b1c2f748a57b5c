#!/bin/sh
# /init of kvmkit's guest initramfs (busybox). Kept small: on emulating hosts
# even user space start-up is watched by tests, which grep for the marker
# lines printed below ("kvmkit-guest: ...").
#
# Kernel command line:
#   kvmkit.run=b64:<base64>   run this shell command, print its exit status,
#   kvmkit.run=<url-escaped>  then power off (no interactive shell).
# Without kvmkit.run an interactive shell runs on the console; leaving it
# powers the guest off.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
export HOME=/root
umask 022

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts 2>/dev/null
mount -t tmpfs tmpfs /tmp

# The stock guest carries its kernel's virtio modules, listed in load order.
if [ -f /etc/kvmkit/modules ]; then
	while read -r module; do
		[ -n "$module" ] || continue
		insmod "/lib/modules/$module" || echo "kvmkit-guest: insmod $module failed"
	done < /etc/kvmkit/modules
fi

# ACPI power button (QMP system_powerdown) -> clean poweroff.
if [ -d /sys/class/input ] && command -v acpid >/dev/null 2>&1; then
	mkdir -p /etc/acpi/PWRF
	printf '#!/bin/sh\nsync\npoweroff -f\n' > /etc/acpi/PWRF/00000080
	chmod +x /etc/acpi/PWRF/00000080
	acpid
fi

echo "kvmkit-guest: init started"

set -f
run=""
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	kvmkit.run=*) run="${arg#kvmkit.run=}" ;;
	esac
done
set +f

if [ -n "$run" ]; then
	case "$run" in
	b64:*) command="$(echo "${run#b64:}" | base64 -d)" ;;
	*) command="$(httpd -d "$run")" ;;
	esac
	sh -c "$command"
	echo "kvmkit-guest: run exit=$?"
else
	setsid cttyhack sh
fi
sync
poweroff -f
