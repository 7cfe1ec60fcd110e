"""The few system calls Python's standard library does not wrap: seccomp filters, dumpable, user namespaces.

`KernelCalls()` loads libc through ctypes once, in the template, and keeps only bound C functions; ctypes
itself is then dropped from `sys.modules`, so arena code cannot import it (it could do no harm through it
anyway: seccomp and the namespaces hold below the interpreter).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 1, 4, 38, 22, 2
CLONE_NEWUSER = 0x10000000


class KernelCalls:
    def __init__(self) -> None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        self._prctl, self._unshare, self._errno = libc.prctl, libc.unshare, ctypes.get_errno
        buffer, addressof, byref = ctypes.create_string_buffer, ctypes.addressof, ctypes.byref

        class SockFprog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

        def program(bpf: bytes) -> tuple[object, object]:
            if not bpf or len(bpf) % 8:
                raise ValueError("a BPF program is a non-empty sequence of 8-byte instructions")
            code = buffer(bpf, len(bpf))
            return code, byref(SockFprog(len(bpf) // 8, addressof(code)))

        self._program = program
        for name in [m for m in sys.modules if m == "ctypes" or m.startswith("ctypes.") or m == "_ctypes"]:
            del sys.modules[name]

    def _check(self, result: int, what: str) -> None:
        if result != 0:
            errno = self._errno()
            raise OSError(errno, f"{what}: {os.strerror(errno)}")

    def install_filter(self, bpf: bytes) -> None:
        """Stack a seccomp filter on this process (and every process it forks from now on); irreversible."""
        self.prepared(bpf)()

    def prepared(self, bpf: bytes) -> Callable[[], None]:
        """The installation of `bpf`, with the program built now: a forked process then only makes the calls."""
        code, prog = self._program(bpf)
        prctl, check = self._prctl, self._check

        def install() -> None:
            check(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")
            check(prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, prog, 0, 0), "PR_SET_SECCOMP")
            assert code  # the buffer the program points into lives as long as this closure

        return install

    def die_with_parent(self, signum: int) -> None:
        """A uid change clears the parent-death signal bubblewrap set; set it again."""
        self._check(self._prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0), "PR_SET_PDEATHSIG")

    def become_unprivileged(self, uid: int, gid: int) -> None:
        """From root inside the sandbox's namespaces: become `uid`/`gid` on the host, then enter a new user
        namespace that maps only that id. The caller must exec afterwards, which clears the capabilities the
        new user namespace grants its creator."""
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        # a uid change makes the process non-dumpable, which would make its own /proc/self/*_map unwritable
        self._check(self._prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "PR_SET_DUMPABLE")
        self._check(self._unshare(CLONE_NEWUSER), "unshare(CLONE_NEWUSER)")
        for path, text in (("/proc/self/setgroups", "deny"), ("/proc/self/uid_map", f"{uid} {uid} 1"), ("/proc/self/gid_map", f"{gid} {gid} 1")):
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)
