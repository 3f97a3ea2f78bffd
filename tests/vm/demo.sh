#!/usr/bin/env bash
# The direct path end to end for `make demo` on a machine without suitable
# hardware: Debian's 6.12 kernel in QEMU, phxfs.ko over an emulated BAR, a
# file on an emulated NVMe SSD read straight into device memory.
#   tests/vm/demo.sh [--build DIR] [--kernel 6.1|6.12]
exec "$(dirname "$0")/run.sh" --demo --kernel 6.12 "$@"
