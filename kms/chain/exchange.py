"""Atomic exchange of two file names (Linux ``renameat2(RENAME_EXCHANGE)``).

The state file's durable save swaps a freshly written and fsync'd spare file with the state
file instead of renaming a new temp file over it. Both inodes live on: the next save
overwrites the old one in place, so no save allocates an inode or frees one (whose blocks a
``discard`` mount would then trim), and the fsync of a file whose blocks already exist is
cheaper (figures in benchmarks/README.md).

Where the call or the filesystem does not offer the exchange (no ``renameat2`` in the C
library, ENOSYS, EINVAL, EOPNOTSUPP, a seccomp filter's EPERM), :func:`rename_exchange` says
so and the caller renames over the target as before.
"""

from __future__ import annotations

import ctypes
import errno
import os
from typing import Any

_AT_FDCWD = -100
_RENAME_EXCHANGE = 1 << 1
# EPERM too: a seccomp filter that does not know renameat2 answers so. Falling back is safe
# whatever the reason: a real permission problem makes the plain rename fail as well.
_UNSUPPORTED = {
    errno.ENOSYS,
    errno.EINVAL,
    errno.EOPNOTSUPP,
    errno.ENOTSUP,
    errno.EXDEV,
    errno.EPERM,
}

_renameat2: Any
try:
    _renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
except (OSError, AttributeError):  # not glibc (or too old): no exchange here
    _renameat2 = None
else:
    _renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p)
    _renameat2.argtypes += (ctypes.c_uint,)
    _renameat2.restype = ctypes.c_int


def rename_exchange(src: str, dst: str) -> bool:
    """Atomically swap the names ``src`` and ``dst``; False when that cannot be done here.

    False means nothing changed: the exchange is not supported, or ``dst`` does not exist
    (then a plain rename is what the caller wants). Other failures raise OSError.
    """
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_EXCHANGE):
        code = ctypes.get_errno()
        if code in _UNSUPPORTED or code == errno.ENOENT:
            return False
        raise OSError(code, os.strerror(code), src, None, dst)
    return True
