"""The sandbox's two seccomp programs, compiled with libseccomp (through pyseccomp) in the gym.

- The base filter, on the template and everything it forks: the kernel's attack surface that no part of the
  sandbox needs (mounts, namespaces, ptrace, BPF, perf, keyrings, modules, io_uring, exec, sockets other than
  unix ones) answers EPERM (or EAFNOSUPPORT / ENOSYS, which libraries take as "not here").
- The call filter, stacked on each call's process after its setup: an allow-list of what an interpreter
  running SQLite in memory needs. Everything else answers EPERM: no fork or thread, no file, no socket, no
  signal handler or signal, no executable memory, no changing its own limits.

The programs are plain BPF bytes; the template installs them with prctl, so the sandbox itself needs neither
libseccomp nor this module.
"""

from __future__ import annotations

import errno
import functools
import tempfile
from typing import Any

CLONE_NAMESPACE_FLAGS = {
    "CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000, "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000, "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000, "CLONE_NEWTIME": 0x00000080,
}  # fmt: skip
AF_UNIX, PROT_EXEC, F_GETFD, F_GETFL = 1, 0x4, 1, 3

BASE_DENIED = (
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "ptrace", "process_vm_readv",
    "process_vm_writev", "kexec_load", "kexec_file_load", "bpf", "perf_event_open", "keyctl", "add_key",
    "request_key", "init_module", "finit_module", "delete_module", "userfaultfd", "io_uring_setup",
    "io_uring_enter", "io_uring_register", "open_by_handle_at", "name_to_handle_at", "syslog", "acct",
    "swapon", "swapoff", "reboot", "quotactl", "clock_settime", "clock_adjtime", "settimeofday", "adjtimex",
    "mknod", "mknodat", "fanotify_init", "lookup_dcookie", "iopl", "ioperm", "modify_ldt", "vhangup",
    "move_pages", "mbind", "migrate_pages", "personality", "uselib", "fsopen", "fsconfig", "fsmount",
    "fspick", "move_mount", "open_tree", "mount_setattr", "pidfd_getfd", "process_madvise", "execve",
    "execveat", "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setgroups",
    "setfsuid", "setfsgid", "capset", "sethostname", "setdomainname", "seccomp",
)  # fmt: skip
"""`seccomp` itself is denied too: filters are installed with prctl, and only before a process runs arena code."""

CALL_ALLOWED = (
    "read", "write", "readv", "writev", "close", "fstat", "lseek", "munmap", "brk", "mremap", "madvise",
    "futex", "getpid", "gettid", "getuid", "geteuid", "getgid", "getegid", "clock_gettime", "clock_getres",
    "clock_nanosleep", "nanosleep", "gettimeofday", "time", "getrandom", "exit", "exit_group",
    "rt_sigreturn", "rt_sigprocmask", "sigaltstack", "sched_yield", "getrusage", "restart_syscall",
    "select", "pselect6", "poll", "ppoll",
)  # fmt: skip
"""What a call's process may do once its filter is on. mmap and mprotect are allowed without PROT_EXEC and
fcntl only to read descriptor flags (below)."""


class SeccompUnavailable(RuntimeError):
    """libseccomp (or its Python binding) is missing: the sandbox cannot filter system calls."""


def _seccomp() -> Any:
    try:
        import pyseccomp
    except (ImportError, OSError, RuntimeError) as exc:  # the binding loads libseccomp.so.2 at import
        raise SeccompUnavailable(f"libseccomp is not usable here ({type(exc).__name__}: {exc}); install libseccomp2 and pyseccomp") from None
    return pyseccomp


def _export(flt: Any) -> bytes:
    with tempfile.TemporaryFile() as fh:
        flt.export_bpf(fh)
        fh.seek(0)
        return fh.read()


@functools.cache
def base_filter() -> bytes:
    sc = _seccomp()
    eperm = sc.ERRNO(errno.EPERM)
    flt = sc.SyscallFilter(sc.ALLOW)
    for name in BASE_DENIED:
        flt.add_rule(eperm, name)
    for flag in CLONE_NAMESPACE_FLAGS.values():
        flt.add_rule(eperm, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    flt.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")  # its flags sit behind a pointer; glibc falls back to clone
    for call in ("socket", "socketpair"):
        flt.add_rule(sc.ERRNO(errno.EAFNOSUPPORT), call, sc.Arg(0, sc.NE, AF_UNIX))
    flt.add_rule(eperm, "ioctl", sc.Arg(1, sc.EQ, 0x5412))  # TIOCSTI: typing into a terminal
    return _export(flt)


@functools.cache
def call_filter() -> bytes:
    sc = _seccomp()
    flt = sc.SyscallFilter(sc.ERRNO(errno.EPERM))
    for name in CALL_ALLOWED:
        flt.add_rule(sc.ALLOW, name)
    for name in ("mmap", "mprotect"):
        flt.add_rule(sc.ALLOW, name, sc.Arg(2, sc.MASKED_EQ, PROT_EXEC, 0))
    for cmd in (F_GETFD, F_GETFL):
        flt.add_rule(sc.ALLOW, "fcntl", sc.Arg(1, sc.EQ, cmd))
    return _export(flt)


def available() -> str | None:
    """None when both programs compile here, else why not."""
    try:
        base_filter()
        call_filter()
    except SeccompUnavailable as exc:
        return str(exc)
    return None
