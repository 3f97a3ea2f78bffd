#!/usr/bin/env bash
# Installs the Debian packages Phoenix builds and tests with, when missing.
# Usage: scripts/install-deps.sh [build|vm|python]   (default: build)
set -euo pipefail

build_pkgs=(cmake g++ make pkg-config libgtest-dev liburing-dev libcli11-dev nlohmann-json3-dev python3)
# The Python package's build and venv (make pytest). Where python3 is not
# Debian's (pyenv), these are unused but harmless.
python_pkgs=(python3 python3-dev python3-venv python3-pip ninja-build)
vm_pkgs=(qemu-system-x86 busybox-static cpio xz-utils zstd e2fsprogs kmod iproute2 linux-headers-amd64)

case "${1:-build}" in
build) want=("${build_pkgs[@]}") ;;
vm) want=("${vm_pkgs[@]}") ;;
python) want=("${python_pkgs[@]}") ;;
*) echo "usage: $0 [build|vm|python]" >&2; exit 2 ;;
esac

missing=()
for p in "${want[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing: ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
