"""How the template process is started: inside bubblewrap (the kernel boundary), in a container, or, only when
the operator says `--unsafe-sandbox`, as a plain process.

Bubblewrap gives the template new pid, network, ipc, uts, mount and cgroup namespaces and a filesystem that
holds only the interpreter, its standard library, the system's shared libraries and the `inside` package, all
read-only, plus a private 16 MiB tmpfs. As an ordinary user the gym asks bubblewrap for a user namespace too
(the sandbox's uid maps to the gym's own). As root, bubblewrap runs privileged (it has to see files an
unprivileged id cannot) and keeps only CAP_SETUID/CAP_SETGID, with which the template becomes `sandbox_uid` on
the host, enters a user namespace of its own and re-executes itself, which clears every capability.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

INSIDE = Path(__file__).resolve().parent / "inside"
SANDBOX_ROOT = "/astra"
Kind = Literal["bwrap", "docker", "unsafe"]


@dataclass
class Launch:
    kind: Kind
    argv: list[str]
    gym_end: socket.socket
    """The gym's end of the control socket (SOCK_SEQPACKET)."""
    pass_fds: list[int] = field(default_factory=list)
    close_after_start: list[socket.socket] = field(default_factory=list)
    cleanup: list[str] = field(default_factory=list)
    listener: socket.socket | None = None
    """Containers cannot inherit a descriptor: the template connects to this listening socket instead."""


def interpreter() -> tuple[str, str]:
    """The real interpreter behind this one (a venv's python is a link to it) and its installation prefix."""
    return os.path.realpath(sys.executable), os.path.realpath(sys.base_prefix)


def _template_code(root: str) -> str:
    return f"import sys; sys.path.insert(0, {root!r}); from inside.template import main; main()"


def _pair() -> tuple[socket.socket, socket.socket]:
    gym_end, template_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    template_end.set_inheritable(True)
    return gym_end, template_end


def bwrap_available() -> str | None:
    """None when bubblewrap is installed, else why not."""
    return None if shutil.which("bwrap") else "bubblewrap (bwrap) is not installed; on Debian: apt-get install bubblewrap"


def bwrap(uid: int, gid: int) -> Launch:
    python, prefix = interpreter()
    gym_end, template_end = _pair()
    as_root = os.geteuid() == 0
    argv = [
        shutil.which("bwrap") or "bwrap",
        "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
        "--die-with-parent", "--new-session", "--as-pid-1", "--clearenv", "--setenv", "PYTHONHASHSEED", "0",
    ]  # fmt: skip
    if as_root:
        argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        argv += ["--unshare-user", "--disable-userns", "--uid", str(uid), "--gid", str(gid)]
    argv += ["--ro-bind", "/usr", "/usr"]
    for top in ("/lib", "/lib64", "/lib32", "/libx32", "/bin"):
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    if not prefix.startswith("/usr/"):
        for parent in reversed(Path(prefix).parents[:-1]):  # created 0755: bubblewrap copies the host's modes
            argv += ["--perms", "0755", "--dir", str(parent)]
        argv += ["--ro-bind", prefix, prefix]
    site = os.path.join(prefix, "lib", f"python{sys.version_info.major}.{sys.version_info.minor}", "site-packages")
    if os.path.isdir(site):
        argv += ["--tmpfs", site]  # the interpreter's own third-party packages are not part of the sandbox's world
    argv += [
        "--perms", "0755", "--dir", SANDBOX_ROOT, "--ro-bind", str(INSIDE), f"{SANDBOX_ROOT}/inside", "--dev", "/dev", "--proc", "/proc",
        "--size", str(16 * 1024 * 1024), "--tmpfs", "/tmp", "--remount-ro", "/", "--chdir", "/",
        "--", python, "-I", "-S", "-B", "-c", _template_code(SANDBOX_ROOT), "--fd", str(template_end.fileno()),
    ]  # fmt: skip
    if as_root:
        argv += ["--drop", f"{uid}:{gid}"]
    return Launch("bwrap", argv, gym_end, [template_end.fileno()], [template_end])


def unsafe() -> Launch:
    """The template as a plain child process: seccomp where libseccomp is present, no namespaces."""
    python, _ = interpreter()
    gym_end, template_end = _pair()
    argv = [python, "-I", "-S", "-B", "-c", _template_code(str(INSIDE.parent)), "--fd", str(template_end.fileno())]
    return Launch("unsafe", argv, gym_end, [template_end.fileno()], [template_end])


def container(engine: str, image: str, memory_mb: int, max_processes: int, uid: int, gid: int, socket_dir: str) -> Launch:
    """The template in a container (docker, or podman's docker-compatible CLI). A container cannot inherit a
    descriptor, so the template connects to a unix socket in a directory mounted into it."""
    path = os.path.join(socket_dir, "ctl")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    os.chmod(socket_dir, 0o755)
    os.chmod(path, 0o777)
    listener.listen(1)
    argv = [
        engine, "run", "--rm", "-i", "--network=none", "--read-only", "--cap-drop=ALL",
        "--security-opt=no-new-privileges", f"--user={uid}:{gid}", f"--memory={memory_mb * (max_processes + 1)}m",
        f"--pids-limit={max_processes + 8}", "--ulimit", "nofile=1024:1024", "--ulimit", f"nproc={max_processes + 64}:{max_processes + 64}",
        "--tmpfs", "/tmp:size=16m", "-e", "PYTHONHASHSEED=0",
        "-v", f"{INSIDE}:{SANDBOX_ROOT}/inside:ro", "-v", f"{socket_dir}:/run/astra", image,
        "python3", "-I", "-S", "-B", "-c", _template_code(SANDBOX_ROOT), "--connect", "/run/astra/ctl",
    ]  # fmt: skip
    return Launch("docker", argv, listener, listener=listener, cleanup=[socket_dir])
