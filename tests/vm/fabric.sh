#!/bin/sh
# The fabric boot of the VM suite (#15), in the guest: the kernel's NVMe
# target (configfs) exports the raw test disk and the ext4 disk on the
# guest's own loopback, the kernel's fabric host connects to them, and the
# direct-path tests run against the fabric disks, once per transport the
# kernel has (listed in /fabrics by run.sh):
#   tcp   nvmet-tcp and nvme-tcp on 127.0.0.1
#   rdma  nvmet-rdma and nvme-rdma over soft-RoCE (rdma_rxe) on dummy0,
#         10.99.0.1: rxe loops traffic to its own address back inside itself
# Nothing leaves the guest (QEMU runs it with -net none). Every step that
# fails is a RESULT fail; each transport is torn down before the next.
#   fabric.sh RAW_DISK FS_DISK
raw=$1 fsd=$2
cfg=/sys/kernel/config/nvmet
port_id=1

result() { echo "RESULT $1 $2"; }

# Exports $raw and $fsd as namespaces 1 and 2 of subsystem $nqn on a port.
export_disks() {
	local nqn=$1 trtype=$2 traddr=$3 s=$cfg/subsystems/$1 p=$cfg/ports/$port_id i=1 d
	mkdir "$s" && echo 1 >"$s/attr_allow_any_host" || return 1
	for d in "$raw" "$fsd"; do
		mkdir "$s/namespaces/$i" && echo -n "$d" >"$s/namespaces/$i/device_path" &&
			echo 1 >"$s/namespaces/$i/enable" || return 1
		i=$((i + 1))
	done
	mkdir "$p" && echo "$trtype" >"$p/addr_trtype" && echo ipv4 >"$p/addr_adrfam" &&
		echo "$traddr" >"$p/addr_traddr" && echo 4420 >"$p/addr_trsvcid" &&
		ln -s "$s" "$p/subsystems/$nqn"
}

unexport_disks() {
	local nqn=$1 s=$cfg/subsystems/$1 p=$cfg/ports/$port_id i
	rm -f "$p/subsystems/$nqn"
	rmdir "$p" 2>/dev/null
	for i in 1 2; do
		[ -d "$s/namespaces/$i" ] || continue
		echo 0 >"$s/namespaces/$i/enable"
		rmdir "$s/namespaces/$i"
	done
	rmdir "$s" 2>/dev/null
	[ ! -e "$s" ] && [ ! -e "$p" ]
}

# Connects; prints the new controller's name (nvmeN).
connect() {
	local line
	exec 3<>/dev/nvme-fabrics || return 1
	echo "transport=$1,traddr=$2,trsvcid=4420,nqn=$3" >&3 || { exec 3>&-; return 1; }
	read -r line <&3
	exec 3>&-
	line=${line#instance=}
	echo "nvme${line%%,*}"
}

# The block device of each namespace of controller $1 (the multipath head
# where the kernel makes one: nvme<subsys>c<ctrl>n<ns> -> nvme<subsys>n<ns>).
namespaces() {
	local n
	for n in /sys/class/nvme/"$1"/nvme*; do
		n=${n##*/}
		case "$n" in
		*c*n*) echo "${n%%c*}n${n##*n}" ;;
		*n*) echo "$n" ;;
		esac
	done
}

run_transport() {
	local t=$1 traddr=$2 counter=$3 nqn=nqn.2026-12.io.phxfs:fabric-$1 ctrl ns d fabraw= fabfs= i
	if ! export_disks "$nqn" "$t" "$traddr"; then
		result "fabric_${t}_export" fail
		unexport_disks "$nqn"
		return
	fi
	result "fabric_${t}_export" pass
	ctrl=$(connect "$t" "$traddr" "$nqn")
	for i in $(seq 50); do
		[ "$(cat "/sys/class/nvme/$ctrl/state" 2>/dev/null)" = live ] &&
			[ "$(namespaces "$ctrl" | wc -l)" = 2 ] && break
		sleep 0.2
	done
	for ns in $(namespaces "$ctrl"); do
		case $(cat "/sys/block/$ns/size" 2>/dev/null) in
		2097152) fabraw=/dev/$ns ;;
		524288) fabfs=/dev/$ns ;;
		esac
	done
	echo "FABRIC $t controller $ctrl ($(cat "/sys/class/nvme/$ctrl/transport" 2>/dev/null)" \
		"$(cat "/sys/class/nvme/$ctrl/address" 2>/dev/null)) raw ${fabraw:-none} ext4 ${fabfs:-none}"
	if [ -n "$fabraw" ] && [ -n "$fabfs" ] &&
		[ "$(cat "/sys/class/nvme/$ctrl/transport")" = "$t" ]; then
		result "fabric_${t}_connect" pass
	else
		result "fabric_${t}_connect" fail
	fi
	mkdir -p /mnt/fabric
	if [ -n "$fabfs" ] && mount -t ext4 "$fabfs" /mnt/fabric; then
		export PHXFS_GUEST_FS=/mnt/fabric
	else
		unset PHXFS_GUEST_FS
	fi
	if [ -n "$fabraw" ]; then
		# GENERIC pages: the direct-path tests of test_direct.cpp as well,
		# against the fabric disks; P2PDMA pages: those expect DMA the
		# fabric queue refuses, so only Fabric.* (which expect the refusal).
		filter='Fabric.*'
		[ "$(cat /pagetype)" = generic ] && filter="$filter:Guest.DiskToBarUnaligned:Guest.BarToDisk:Guest.DirectModeRefusesToBounce:Guest.ConcurrentThreads:GuestFs.*"
		echo "RUN phxfs_guest_tests@$t"
		PHXFS_GUEST_FABRIC=$t PHXFS_GUEST_DISK=$fabraw PHXFS_GUEST_FABRIC_COUNTER=$counter \
			PHXFS_GUEST_BAR_OFF=$4 PHXFS_GUEST_DISK_OFF=$5 \
			/tests/phxfs_guest_tests --gtest_filter="$filter" </dev/null
		echo "EXIT phxfs_guest_tests@$t $?"
	fi
	umount /mnt/fabric 2>/dev/null
	[ -n "$ctrl" ] && echo 1 >"/sys/class/nvme/$ctrl/delete_controller"
	for i in $(seq 50); do [ -e "/sys/class/nvme/$ctrl" ] || break; sleep 0.2; done
	if [ ! -e "/sys/class/nvme/$ctrl" ] && unexport_disks "$nqn"; then
		result "fabric_${t}_teardown" pass
	else
		result "fabric_${t}_teardown" fail
	fi
}

mount -t configfs configfs /sys/kernel/config 2>/dev/null
ip link set lo up
# Which pages the device has decides which tests apply (fabric queues take
# no P2PDMA pages): the P2PDMA kernel's, as Guest.InfoReportsThePageType
# checks against the module.
case "$(uname -r)" in *p2pdma*) echo p2pdma >/pagetype ;; *) echo generic >/pagetype ;; esac
for t in $(cat /fabrics); do
	case $t in
	tcp) run_transport tcp 127.0.0.1 /sys/class/net/lo/statistics/rx_bytes 0 0 ;;
	rdma)
		ip link set dummy0 up && ip addr add 10.99.0.1/24 dev dummy0 &&
			rdma link add rxe0 type rxe netdev dummy0
		if [ -d /sys/class/infiniband/rxe0 ]; then
			result fabric_rdma_soft_roce pass
			run_transport rdma 10.99.0.1 \
				/sys/class/infiniband/rxe0/ports/1/hw_counters/rcvd_pkts \
				$((256 << 20)) $((512 << 20))
			rdma link delete rxe0
		else
			result fabric_rdma_soft_roce fail
		fi
		;;
	esac
done
