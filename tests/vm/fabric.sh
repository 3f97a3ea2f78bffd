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

result() { echo "RESULT $1 $2"; }

# Exports $raw and $fsd as namespaces 1 and 2 of subsystem $nqn on port $4.
export_disks() {
	local nqn=$1 trtype=$2 traddr=$3 s=$cfg/subsystems/$1 p=$cfg/ports/$4 i=1 d
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
	local nqn=$1 s=$cfg/subsystems/$1 p=$cfg/ports/$2 i
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

# Connects (in a subshell of its own: a failed redirection ends it); prints
# the new controller's name (nvmeN), nothing when the connect failed.
connect() {
	(
		exec 3<>/dev/nvme-fabrics
		echo "transport=$1,traddr=$2,trsvcid=4420,nqn=$3" >&3 || exit 1
		read -r line <&3
		line=${line#instance=}
		case "$line" in [0-9]*) echo "nvme${line%%,*}" ;; esac
	)
}

# The block device of each namespace of controller $1 (the multipath head
# where the kernel makes one: nvme<subsys>c<ctrl>n<ns> -> nvme<subsys>n<ns>).
namespaces() {
	local n
	for n in /sys/class/nvme/"$1"/nvme[0-9]*n[0-9]*; do
		n=${n##*/}
		case "$n" in
		nvme[0-9]*c[0-9]*n[0-9]*) echo "${n%%c*}n${n##*n}" ;;
		nvme[0-9]*n[0-9]*) echo "$n" ;;
		esac
	done
}

# Whether every namespace of controller $1 is a block device yet (a
# multipath head appears a little after its path).
namespaces_ready() {
	local ns n=0
	for ns in $(namespaces "$1"); do
		[ -n "$(cat "/sys/block/$ns/size" 2>/dev/null)" ] && [ -b "/dev/$ns" ] || return 1
		n=$((n + 1))
	done
	[ "$n" = 2 ]
}

# Runs the tests over transport $1 (target address $2), the transport's
# counter $3, BAR and disk ranges from $4 and $5, on port $6.
run_transport() {
	local t=$1 traddr=$2 counter=$3 port=$6 nqn=nqn.2026-12.io.phxfs:fabric-$1 ctrl ns fabraw= fabfs= i
	if ! export_disks "$nqn" "$t" "$traddr" "$port"; then
		result "fabric_${t}_export" fail
		unexport_disks "$nqn" "$port"
		return
	fi
	result "fabric_${t}_export" pass
	ctrl=$(connect "$t" "$traddr" "$nqn")
	if [ -z "$ctrl" ]; then
		result "fabric_${t}_connect" fail
		unexport_disks "$nqn" "$port"
		return
	fi
	for i in $(seq 100); do
		[ "$(cat "/sys/class/nvme/$ctrl/state" 2>/dev/null)" = live ] &&
			namespaces_ready "$ctrl" && break
		sleep 0.2
	done
	# Namespace 1 is the raw disk, 2 the ext4 one (export_disks).
	for ns in $(namespaces "$ctrl"); do
		case $(cat "/sys/block/$ns/nsid" 2>/dev/null) in
		1) fabraw=/dev/$ns ;;
		2) fabfs=/dev/$ns ;;
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
		result "fabric_${t}_ext4_mount" pass
	else
		unset PHXFS_GUEST_FS
		result "fabric_${t}_ext4_mount" fail
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
	if [ ! -e "/sys/class/nvme/$ctrl" ] && unexport_disks "$nqn" "$port"; then
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
echo "FABRICS $(cat /fabrics)"
for t in $(cat /fabrics); do
	case $t in
	tcp) run_transport tcp 127.0.0.1 /sys/class/net/lo/statistics/rx_bytes 0 0 1 ;;
	rdma)
		# MTU 9000: rxe's 4 KiB IB MTU, a quarter of the packets of 1500's.
		ip link set dummy0 mtu 9000 && ip link set dummy0 up &&
			ip addr add 10.99.0.1/24 dev dummy0 && rdma link add rxe0 type rxe netdev dummy0
		if [ -d /sys/class/infiniband/rxe0 ]; then
			result fabric_rdma_soft_roce pass
			run_transport rdma 10.99.0.1 \
				/sys/class/infiniband/rxe0/ports/1/hw_counters/rcvd_pkts \
				$((256 << 20)) $((512 << 20)) 2
			rdma link delete rxe0
		else
			result fabric_rdma_soft_roce fail
		fi
		;;
	esac
done
