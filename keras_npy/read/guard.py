"""A SIGBUS guard: reading a memory map of a file that was cut short is an error, not a crash.

Reading a memory map past the end of its file raises SIGBUS, whose default
action kills the process (so does an I/O error under a mapped page). A file
cut short while a batch is copied from its map, by another program or another
thread, would kill the training process without a word.

On Linux this module installs, once per process and on first use, a SIGBUS
handler (through `ctypes`: no compiled code). For a fault inside a region
registered here it marks the region `poisoned`, then maps a page of zeros over
the faulting page, so that the interrupted copy finishes instead of faulting
again. The reader looks at the mark after every copy from a map: a poisoned
map is dropped and the rows are read again with `preadv`, which reports a
short file as an error that names it. Nothing read from a poisoned map is
ever returned. A fault anywhere else is left to the handler that was there
before (Python's `faulthandler`, or the default: the process dies, as it
would have without this module).

The handler runs Python code (a `ctypes` callback) on the faulting thread,
which holds no lock of ours during a copy; it allocates nothing that the
cyclic garbage collector tracks, and any failure in it restores the previous
handler so that a fault can never repeat forever.

`available()` says whether the guard works on this platform; readers use
memory maps only where it does, and `preadv` elsewhere.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import platform
import signal
import sys
import threading

_PAGE = mmap.PAGESIZE
# Linux's values on x86-64 and AArch64 (glibc and musl share the layout of
# `struct sigaction` used below there).
_SA_SIGINFO, _SA_NODEFER = 0x4, 0x40000000
_MAP_FIXED = 0x10
_SI_ADDR = 16  # offset of si_addr in siginfo_t on 64-bit Linux


class _SigAction(ctypes.Structure):
    _fields_ = [("handler", ctypes.c_void_p), ("mask", ctypes.c_ulong * 16),
                ("flags", ctypes.c_int), ("restorer", ctypes.c_void_p)]


_HANDLER_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)


class Region:
    """An address range of a memory map: `poisoned` once a read in it faulted."""

    __slots__ = ("start", "end", "poisoned", "__weakref__")

    def __init__(self, start: int, end: int):
        self.start, self.end, self.poisoned = start, end, False


class _Guard:
    """The process' SIGBUS handler and the regions it covers."""

    def __init__(self):
        self._lock = threading.Lock()
        # Read by the handler without a lock: replaced whole, never changed in place.
        self._regions: tuple[Region, ...] = ()
        self._libc = self._previous = self._callback = self._address = None
        self._usable = _platform_supported()

    def available(self) -> bool:
        """Whether maps are guarded here (installs the handler on first call)."""
        if self._usable and self._address is None:
            with self._lock:
                if self._address is None:
                    self._usable = self._install()
        return self._usable

    def register(self, start: int, end: int) -> Region:
        region = Region(start, end)
        with self._lock:
            self._regions = (*self._regions, region)
        return region

    def unregister(self, region: Region) -> None:
        with self._lock:
            self._regions = tuple(r for r in self._regions if r is not region)

    def installed(self) -> bool:
        """Whether the handler is still ours (another library may have
        replaced it since); reinstalls it, chaining to the newcomer, if not."""
        if not self.available():
            return False
        current = _SigAction()
        if self._libc.sigaction(signal.SIGBUS, None, ctypes.byref(current)) != 0:
            return False
        if current.handler == self._address:
            return True
        with self._lock:
            return self._install()

    def _install(self) -> bool:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.mmap.restype = ctypes.c_void_p
            libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                                  ctypes.c_int, ctypes.c_long]
            libc.sigaction.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
            callback = self._callback or _HANDLER_TYPE(self._on_sigbus)
            action, previous = _SigAction(), _SigAction()
            action.handler = ctypes.cast(callback, ctypes.c_void_p).value
            action.flags = _SA_SIGINFO | _SA_NODEFER
            if libc.sigaction(signal.SIGBUS, ctypes.byref(action), ctypes.byref(previous)):
                return False
        except (OSError, AttributeError, TypeError):
            return False
        self._libc, self._callback, self._previous = libc, callback, previous
        self._address = action.handler
        return True

    def _on_sigbus(self, signum, info, context) -> None:
        # Runs on the faulting thread, inside the interrupted copy.
        try:
            address = ctypes.c_void_p.from_address(info + _SI_ADDR).value or 0
            for region in self._regions:
                if region.start <= address < region.end:
                    region.poisoned = True  # before the zeros can be read
                    page = address - address % _PAGE
                    done = self._libc.mmap(page, _PAGE, mmap.PROT_READ,
                                           mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_FIXED,
                                           -1, 0)
                    if done == page:
                        return
                    break
        except BaseException:  # never leave a fault to repeat: fall through
            pass
        # Not ours (or not mended): the fault recurs under the previous handler.
        self._libc.sigaction(signal.SIGBUS, ctypes.byref(self._previous), None)


def _platform_supported() -> bool:
    return (sys.platform.startswith("linux") and ctypes.sizeof(ctypes.c_void_p) == 8
            and platform.machine() in ("x86_64", "AMD64", "aarch64", "arm64"))


_GUARD = _Guard()


def _after_fork_in_child() -> None:
    _GUARD._lock = threading.Lock()  # a thread of the parent may have held it


os.register_at_fork(after_in_child=_after_fork_in_child)

available = _GUARD.available
register = _GUARD.register
unregister = _GUARD.unregister
installed = _GUARD.installed
