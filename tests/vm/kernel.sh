#!/usr/bin/env bash
# Kernels for the VM suite, cached between runs:
#   kernel.sh resolve 6.1|6.12|p2pdma   print the exact version (e.g. 6.1.0-56-amd64)
#   kernel.sh fetch KVER DIR     DIR/vmlinux, DIR/root (the image's /lib/modules)
#                                and headers ready; kernel.sh headers KVER DIR
#                                prints where the headers are
# 6.1 and 6.12 are Debian's packages. p2pdma is Debian's linux-source-6.12
# built here with p2pdma/p2pdma.config (CONFIG_PCI_P2PDMA, KASAN, lockdep,
# kmemleak): about 12 minutes on 2 cores, once per machine and config.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
p2p_release=6.12-phxfs-p2pdma

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
	p2pdma) echo "$p2p_release" ;;
	*) echo "unknown kernel line $1 (6.1, 6.12 or p2pdma)" >&2; return 2 ;;
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

# The P2PDMA kernel, rebuilt when the source package or the config changes.
build_p2pdma() {
	local dir=$1 tarball=/usr/src/linux-source-6.12.tar.xz stamp want o opt
	if [ ! -f "$tarball" ]; then
		echo "installing linux-source-6.12"
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			linux-source-6.12 bc bison flex libelf-dev libssl-dev >/dev/null
	fi
	want="$(dpkg-query -W -f='${Version}' linux-source-6.12) $(sha256sum <"$here/p2pdma/p2pdma.config")"
	stamp=$dir/stamp
	if [ -s "$dir/vmlinux" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
		return 0
	fi
	echo "building the P2PDMA kernel ($p2p_release) in $dir: about 12 minutes"
	rm -rf "$dir" && mkdir -p "$dir/obj"
	tar -xf "$tarball" -C "$dir"
	local src=$dir/linux-source-6.12 t0=$(date +%s)
	o=(-C "$src" O="$dir/obj" ARCH=x86_64 KERNELRELEASE="$p2p_release")
	make -s "${o[@]}" tinyconfig
	"$src/scripts/kconfig/merge_config.sh" -m -O "$dir/obj" "$dir/obj/.config" \
		"$here/p2pdma/p2pdma.config" >/dev/null
	make -s "${o[@]}" olddefconfig
	# Every option asked for must have stuck (a dependency may drop one).
	local lost=0
	while read -r opt; do
		grep -qx "$opt" "$dir/obj/.config" || { echo "p2pdma kernel: $opt did not stick" >&2; lost=1; }
	done < <(grep '^CONFIG_' "$here/p2pdma/p2pdma.config")
	[ "$lost" = 0 ] || return 1
	make -s "${o[@]}" -j"$(nproc)" vmlinux modules
	make -s "${o[@]}" INSTALL_MOD_PATH="$dir/root" modules_install
	make -s "${o[@]}" run-command \
		KBUILD_RUN_COMMAND="\${srctree}/scripts/package/install-extmod-build $dir/headers"
	cp "$dir/obj/.config" "$dir/headers/.config"
	cp "$dir/obj/vmlinux" "$dir/vmlinux"
	rm -rf "$src" "$dir/obj"
	echo "$want" >"$stamp"
	echo "P2PDMA kernel built in $(($(date +%s) - t0)) s"
}

headers() {
	local kver=$1 dir=$2
	if [ "$kver" = "$p2p_release" ]; then echo "$dir/headers"; else echo "/usr/src/linux-headers-$kver"; fi
}

fetch() {
	local kver=$1 dir=$2
	if [ "$kver" = "$p2p_release" ]; then
		build_p2pdma "$dir"
		return
	fi
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
headers) headers "$2" "$3" ;;
*) echo "usage: $0 resolve 6.1|6.12|p2pdma | fetch KVER DIR | headers KVER DIR" >&2; exit 2 ;;
esac
