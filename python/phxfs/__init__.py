"""phxfs: GPU direct storage from Python, over libphxfs.

Files, futures and batches that move data between files and any buffer
(numpy, bytearray, mmap, CuPy/Numba arrays through ``__cuda_array_interface__``,
torch/CuPy/JAX through DLPack), on the GPU or in host memory, through
libphxfs's direct path where the kernel module serves the device and its
pipelined compat path elsewhere; and :mod:`phxfs.safetensors`, which loads
checkpoints with all of a file's reads in flight at once.

>>> import numpy as np, phxfs
>>> with phxfs.File("data.bin", "w+") as f:
...     f.write_from(np.arange(1024, dtype=np.float32))
...     out = np.empty(1024, np.float32)
...     f.read_into(out)
4096
4096
"""

from . import _phxfs
from ._api import (
    Batch,
    Completion,
    Config,
    Device,
    DeviceInfo,
    File,
    Future,
    PathStats,
    Registration,
    Stats,
    device_count,
    device_info,
    get_config,
    inspect_buffer,
    open_device,
    register,
    reset_stats,
    set_config,
    stats,
)

__version__: str = _phxfs.__version__
#: libphxfs's (major, minor, patch), from phxfs.h
library_version = tuple(_phxfs.library_version)

__all__ = [
    "Batch",
    "Completion",
    "Config",
    "Device",
    "DeviceInfo",
    "File",
    "Future",
    "PathStats",
    "Registration",
    "Stats",
    "__version__",
    "device_count",
    "device_info",
    "get_config",
    "inspect_buffer",
    "library_version",
    "open_device",
    "register",
    "reset_stats",
    "set_config",
    "stats",
]
