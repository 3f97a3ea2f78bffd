# Phoenix: the two commands a newcomer needs are `make demo` and `make test`.
# Everything else here is what those two are made of.

MAKEFLAGS  += --no-print-directory
BUILD      ?= build
BUILD_ASAN ?= build-asan
BUILD_TSAN ?= build-tsan
BUILD_PY   ?= build-py
PYTHON     ?= python3
JOBS       ?= $(shell nproc)
KERNEL     ?= all
DEMO_SIZE  ?= 512M

.PHONY: all deps build demo test unit pytest asan tsan vmtest fuzz install format checkpatch clean

all: build

deps:
	@scripts/install-deps.sh build

$(BUILD)/Makefile:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo

build: deps $(BUILD)/Makefile
	cmake --build $(BUILD) -j $(JOBS)

# The main job on any Linux box: move a generated file into device memory
# and back through libphxfs (the GPU when there is one, host memory
# otherwise) and report throughput and the path that ran.
demo: build
	@scripts/demo.sh $(BUILD) $(DEMO_SIZE)

# Every test CI runs: unit tests, the Python package's tests, the same unit
# tests under ASan/UBSan and under TSan, and the kernel module in QEMU on
# Debian's 6.1 and 6.12 kernels and on a P2PDMA kernel built from Debian's
# 6.12 source (once per machine, cached).
test: unit pytest asan tsan vmtest

unit: build
	cd $(BUILD) && ctest -L unit --output-on-failure -j $(JOBS)

# The Python package (python/): a venv in $(BUILD_PY)/venv, `pip install .`
# into it (the library and the extension built by CMake through
# scikit-build-core, incrementally in $(BUILD_PY)/wheel), then pytest. GPU
# tests (-m gpu) skip themselves without CUDA and torch.
pytest: deps
	@scripts/install-deps.sh python
	@test -x $(BUILD_PY)/venv/bin/python || $(PYTHON) -m venv $(BUILD_PY)/venv
	$(BUILD_PY)/venv/bin/python -m pip install -q --disable-pip-version-check \
		"scikit-build-core>=0.10" "nanobind>=2.0" "pytest>=7" "safetensors>=0.4" numpy
	CMAKE_BUILD_PARALLEL_LEVEL=$(JOBS) $(BUILD_PY)/venv/bin/python -m pip install -q \
		--disable-pip-version-check --no-build-isolation -C build-dir=$(BUILD_PY)/wheel \
		-C build.tool-args=-j$(JOBS) --force-reinstall --no-deps .
	$(BUILD_PY)/venv/bin/python -m pytest -q -p no:cacheprovider python/tests

asan: deps
	cmake -S . -B $(BUILD_ASAN) -DCMAKE_BUILD_TYPE=Debug -DPHXFS_SANITIZE=address,undefined \
		-DPHXFS_BUILD_EXAMPLES=OFF
	cmake --build $(BUILD_ASAN) -j $(JOBS)
	cd $(BUILD_ASAN) && UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
		ASAN_OPTIONS=detect_stack_use_after_return=1 \
		ctest -L unit --output-on-failure -j $(JOBS)

# The unit tests under ThreadSanitizer. RelWithDebInfo, not Debug: it builds
# as fast on 2 cores and the instrumented tests run faster at -O2. The one
# 2.5 GiB test (Large.*) is left out: it took 115 of the 123 s of tests
# under TSan, and what it checks (lengths over 2 GiB) is no threading
# matter; the same workers and chunking run in Fd/*, EdgeCases.* and Workers.*.
# Fork.* is left out too: TSan cannot follow a child of a threaded process
# that starts threads ("not supported"); those tests run in unit and asan.
tsan: deps
	cmake -S . -B $(BUILD_TSAN) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPHXFS_SANITIZE=thread \
		-DPHXFS_BUILD_EXAMPLES=OFF
	cmake --build $(BUILD_TSAN) -j $(JOBS)
	cd $(BUILD_TSAN) && TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
		ctest -L unit -E '^(Large\.ReadAndWriteOverTwoGiBInOneCall|Fork\..*)$$' \
		--output-on-failure -j $(JOBS)

vmtest: build
	@if [ -x tests/vm/run.sh ]; then tests/vm/run.sh --kernel $(KERNEL) --build $(BUILD); \
	else echo "tests/vm/run.sh not present: VM suite skipped"; fi

# The kernel module's fuzzer alone, for DURATION seconds per kernel
# (PHXFS_FUZZ_SEED=N replays a seed).
DURATION ?= 300
fuzz: build
	tests/vm/run.sh --kernel $(KERNEL) --build $(BUILD) --fuzz $(DURATION)

install: build
	cmake --install $(BUILD)
	$(MAKE) -C kmod install

format:
	clang-format -i $$(git ls-files '*.cpp' '*.hpp' '*.cu' | grep -v '^kmod/')

checkpatch:
	$(MAKE) -C kmod checkpatch

clean:
	rm -rf $(BUILD) $(BUILD_ASAN) $(BUILD_TSAN) $(BUILD_PY)
