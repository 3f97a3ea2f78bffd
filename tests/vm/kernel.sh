#!/usr/bin/env bash
# Debian kernels for the VM suite, cached between runs:
#   kernel.sh resolve 6.1|6.12   print the exact version (e.g. 6.1.0-56-amd64)
#   kernel.sh fetch KVER DIR     headers installed, DIR/vmlinux and DIR/root
#                                (the image's /lib/modules) ready
set -euo pipefail

resolve() {
	case "$1" in
	6.1)
		apt-cache depends linux-headers-amd64 |
			sed -n 's/.*Depends: linux-headers-\(6\.1\.[0-9.-]*-amd64\)$/\1/p' | head -1
		;;
	6.12)
		apt-cache search --names-only '^linux-headers-6\.12\.[0-9]+\+deb12-amd64$' |
			awk '{print $1}' | sed 's/^linux-headers-//' | sort -V | tail -1
		;;
	*) echo "unknown kernel line $1 (6.1 or 6.12)" >&2; return 2 ;;
	esac
}

# The uncompressed kernel inside a bzImage: PVH boots it in a few seconds.
extract_vmlinux() {
	local img=$1 out=$2 off
	for magic in 'fd377a585a00:xz -dc --single-stream' '28b52ffd:zstd -dcq'; do
		off=$(od -An -v -tx1 -w1 "$img" | tr -d ' \n' | grep -bo "${magic%%:*}" | head -1 | cut -d: -f1) || true
		[ -n "$off" ] || continue
		tail -c +$((off / 2 + 1)) "$img" | ${magic#*:} >"$out" 2>/dev/null || true
		if [ -s "$out" ] && head -c 4 "$out" | grep -q ELF; then return 0; fi
	done
	echo "cannot find the kernel inside $img" >&2
	return 1
}

fetch() {
	local kver=$1 dir=$2
	if [ ! -d "/usr/src/linux-headers-$kver" ]; then
		echo "installing linux-headers-$kver"
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			"linux-headers-$kver" >/dev/null
	fi
	[ -s "$dir/vmlinux" ] && [ -s "$dir/root/lib/modules/$kver/modules.dep" ] && return 0
	mkdir -p "$dir"
	(cd "$dir" && rm -f ./*.deb &&
		{ apt-get download -qq "linux-image-$kver-unsigned" 2>/dev/null ||
			apt-get download -qq "linux-image-$kver"; })
	rm -rf "$dir/root"
	dpkg-deb -x "$dir"/linux-image-*.deb "$dir/root"
	depmod -b "$dir/root" "$kver"
	extract_vmlinux "$dir/root/boot/vmlinuz-$kver" "$dir/vmlinux"
	rm -f "$dir"/*.deb
}

case "${1:-}" in
resolve) resolve "$2" ;;
fetch) fetch "$2" "$3" ;;
*) echo "usage: $0 resolve 6.1|6.12 | fetch KVER DIR" >&2; exit 2 ;;
esac
