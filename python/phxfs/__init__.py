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
from ._api import *  # noqa: F401,F403 (the API; its __all__ says what)
from ._api import __all__ as _api_all

__version__: str = _phxfs.__version__
#: libphxfs's (major, minor, patch), from phxfs.h
library_version = tuple(_phxfs.library_version)

__all__ = [*_api_all, "__version__", "library_version"]
