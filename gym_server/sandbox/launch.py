"""How the template process is started: inside bubblewrap (the kernel boundary), in a container, or, only when
the operator says `--unsafe-sandbox`, as a plain process.

Bubblewrap gives the template new pid, network, ipc, uts, mount and cgroup namespaces and a filesystem that
holds only the interpreter, its standard library, the system's shared libraries and the `inside` package, all
read-only, plus a private 16 MiB tmpfs. As an ordinary user the gym asks bubblewrap for a user namespace too
(the sandbox's uid maps to the gym's own). As root, bubblewrap runs privileged (it has to see files an
unprivileged id cannot) and keeps only CAP_SETUID/CAP_SETGID, with which the template becomes `sandbox_uid` on
the host, enters a user namespace of its own and re-executes itself, which clears every capability.

A container (docker or podman, the image of `gym_server.sandbox.image`) gives the same namespaces, a read-only
root and no capabilities from the engine; the template cannot inherit its control socket there, so it connects
to one the gym listens on, and the container is removed by name when the pool closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

INSIDE = Path(__file__).resolve().parent / "inside"
SANDBOX_ROOT = "/astra"
Kind = Literal["bwrap", "docker", "unsafe"]
NPROC = 4096
"""A container's RLIMIT_NPROC. It counts every process of the container's host id, in every container and gym
that shares the id (all of them under docker without a user namespace: host uid 65534 is also bubblewrap's),
so it is only a loose backstop; the container's own bound is its cgroup's pids limit. The engine must set it
(runc cannot inherit the host's), and runc refuses values above the kernel's pid_max."""
CONTAINER_UID_BASE = 1_500_000_000
"""Where a podman container's ids start on the host (as root): far above any real user's or the usual
subordinate ranges."""


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
    env: dict[str, str] = field(default_factory=dict)
    """What the launcher (a container engine's CLI) needs from the gym's environment."""
    teardown: list[str] = field(default_factory=list)
    """A command that removes what outlives the launcher when it is killed (a container; its name comes last)."""


def interpreter() -> tuple[str, str]:
    """The real interpreter behind this one (a venv's python is a link to it) and its installation prefix."""
    return os.path.realpath(sys.executable), os.path.realpath(sys.base_prefix)


def _template_code(root: str, lib: str | None = None) -> str:
    extra = f"sys.path.append({lib!r}); " if lib else ""
    return f"import sys; sys.path.insert(0, {root!r}); {extra}from inside.template import main; main()"


def package_dirs(modules: list[str]) -> dict[str, str]:
    """The directory of each module's top-level package (what the sandbox binds read-only at `/astra/lib/NAME`);
    raises ValueError for a module that is not installed or is not a package directory."""
    import importlib.util

    found: dict[str, str] = {}
    for name in modules:
        top = name.split(".", 1)[0]
        if top in found:
            continue
        spec = importlib.util.find_spec(top)
        if spec is None or not spec.submodule_search_locations:
            raise ValueError(f"the sandbox was asked to offer {name!r}, but {top!r} is not an installed package")
        found[top] = os.path.realpath(list(spec.submodule_search_locations)[0])
    return found


def _pair() -> tuple[socket.socket, socket.socket]:
    gym_end, template_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    template_end.set_inheritable(True)
    return gym_end, template_end


def bwrap_available() -> str | None:
    """None when bubblewrap is installed, else why not."""
    return None if shutil.which("bwrap") else "bubblewrap (bwrap) is not installed; on Debian: apt-get install bubblewrap"


def bwrap(uid: int, gid: int, packages: dict[str, str] | None = None) -> Launch:
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
        "--perms", "0755", "--dir", SANDBOX_ROOT, "--ro-bind", str(INSIDE), f"{SANDBOX_ROOT}/inside",
    ]  # fmt: skip
    if packages:
        argv += ["--perms", "0755", "--dir", f"{SANDBOX_ROOT}/lib"]  # made 0700 otherwise: the sandbox's id could not enter it
    for top, path in (packages or {}).items():
        argv += ["--ro-bind", path, f"{SANDBOX_ROOT}/lib/{top}"]
    lib = f"{SANDBOX_ROOT}/lib" if packages else None
    argv += [
        "--dev", "/dev", "--proc", "/proc", "--size", str(16 * 1024 * 1024), "--tmpfs", "/tmp", "--remount-ro", "/", "--chdir", "/",
        "--", python, "-I", "-S", "-B", "-c", _template_code(SANDBOX_ROOT, lib), "--fd", str(template_end.fileno()),
    ]  # fmt: skip
    if as_root:
        argv += ["--drop", f"{uid}:{gid}"]
    return Launch("bwrap", argv, gym_end, [template_end.fileno()], [template_end])


def unsafe(packages: dict[str, str] | None = None) -> Launch:
    """The template as a plain child process: seccomp where libseccomp is present, no namespaces. Offered
    packages are found where they are installed (their whole directory of packages is on the path)."""
    python, _ = interpreter()
    gym_end, template_end = _pair()
    dirs = sorted({os.path.dirname(p) for p in (packages or {}).values()})
    code = _template_code(str(INSIDE.parent)) if not dirs else _template_code(str(INSIDE.parent), dirs[0])
    for extra in dirs[1:]:
        code = code.replace("from inside", f"sys.path.append({extra!r}); from inside", 1)
    argv = [python, "-I", "-S", "-B", "-c", code, "--fd", str(template_end.fileno())]
    return Launch("unsafe", argv, gym_end, [template_end.fileno()], [template_end])


def container_engine(engine: str, timeout_s: float = 5.0) -> tuple[str, str]:
    """The engine's executable and flavour ('podman' or 'docker'); raises RuntimeError saying why it cannot run
    containers. podman's docker-compatible CLI (podman-docker's `docker`) counts as podman: its flags are."""
    path = shutil.which(engine)
    if path is None:
        raise RuntimeError(f"the container engine `{engine}` is not installed")
    try:
        done = subprocess.run([path, "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True, timeout=timeout_s, env=_engine_env())
        flavour = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=timeout_s, env=_engine_env()).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"`{engine} version` does not answer ({exc})") from None
    if done.returncode != 0 or not done.stdout.strip():
        raise RuntimeError(f"`{engine} version` does not answer: {(done.stderr or done.stdout).strip()[:500]}")
    return path, "podman" if flavour.lower().startswith("podman") else "docker"


def _engine_env() -> dict[str, str]:
    """What a container engine's CLI reads from the environment to find its daemon, storage and runtime dir."""
    keep = ("HOME", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_CONFIG",
            "DOCKER_CERT_PATH", "DOCKER_TLS_VERIFY", "CONTAINER_HOST", "CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF")  # fmt: skip
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **{k: os.environ[k] for k in keep if k in os.environ}}


def container(
    engine: str, image: str, memory_mb: int, max_processes: int, uid: int, gid: int, socket_dir: str,
    runtime: str | None = None, uid_base: int = CONTAINER_UID_BASE, packages: dict[str, str] | None = None,
) -> Launch:  # fmt: skip
    """The template in a container (docker, or podman). A container cannot inherit a descriptor, so the
    template connects to a unix socket in a directory mounted (read-only) into it.

    With podman as root the container gets a user namespace of its own: ids 0-65535 inside are
    `uid_base`... on the host, so arena code runs as an id no one else on the host has (rootless podman always
    maps the container's ids). Docker's user namespace is the daemon's choice (`userns-remap`); without one the
    template reports the host's user namespace and the gym refuses to start (unless told `--unsafe-sandbox`)."""
    try:
        path, flavour = container_engine(engine)
    except RuntimeError:
        shutil.rmtree(socket_dir, ignore_errors=True)
        raise
    name = f"astra-sandbox-{secrets.token_hex(6)}"
    as_root = os.geteuid() == 0
    mounted = os.path.join(socket_dir, "run")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        os.chmod(socket_dir, 0o700)  # only the gym's own id (and root) can reach the socket from the host...
        os.mkdir(mounted, 0o755)
        listener.bind(os.path.join(mounted, "ctl"))
        os.chmod(os.path.join(mounted, "ctl"), 0o777)  # ...and whatever id the engine maps the container to, from inside
        listener.listen(1)
    except OSError:
        listener.close()
        shutil.rmtree(socket_dir, ignore_errors=True)
        raise
    processes = max_processes + 8
    argv = [
        path, "run", "--rm", f"--name={name}", "--pull=never", "--network=none", "--cgroupns=private", "--ipc=private", "--read-only", "--cap-drop=ALL",
        "--security-opt=no-new-privileges", f"--user={uid}:{gid}", f"--memory={memory_mb * (max_processes + 1)}m",
        f"--pids-limit={processes}", "--ulimit", "nofile=1024:1024", "--ulimit", f"nproc={NPROC}:{NPROC}",
        "--tmpfs", "/tmp:size=16m", "-e", "PYTHONHASHSEED=0",
        "-v", f"{INSIDE}:{SANDBOX_ROOT}/inside:ro", "-v", f"{mounted}:/run/astra:ro",
    ]  # fmt: skip
    for top, path in (packages or {}).items():
        argv += ["-v", f"{path}:{SANDBOX_ROOT}/lib/{top}:ro"]
    if runtime:
        argv.append(f"--runtime={runtime}")
    if flavour == "podman" and as_root:
        size = max(65536, uid + 1, gid + 1)
        argv += [f"--uidmap=0:{uid_base}:{size}", f"--gidmap=0:{uid_base}:{size}"]
    argv += [image, "python3", "-I", "-S", "-B", "-c", _template_code(SANDBOX_ROOT, f"{SANDBOX_ROOT}/lib" if packages else None), "--connect", "/run/astra/ctl"]
    teardown = [path, "rm", "--force", *(["--time=0"] if flavour == "podman" else []), name]
    return Launch("docker", argv, listener, listener=listener, cleanup=[socket_dir], env=_engine_env(), teardown=teardown)


async def accept(launch: Launch, launcher: asyncio.subprocess.Process) -> socket.socket:
    """The template's connection, or EOFError as soon as its launcher (a container engine's CLI) exits without it.
    The listening socket and its directory go at once: nobody else can connect later, and a gym that is killed
    leaves nothing behind on the host."""
    assert launch.listener is not None
    loop = asyncio.get_running_loop()
    launch.listener.setblocking(False)
    accepting, exited = loop.create_task(loop.sock_accept(launch.listener)), loop.create_task(launcher.wait())
    try:
        await asyncio.wait((accepting, exited), return_when=asyncio.FIRST_COMPLETED)
        if not accepting.done():
            raise EOFError
        return accepting.result()[0]
    finally:
        accepting.cancel()
        exited.cancel()
        launch.listener.close()
        for path in launch.cleanup:
            shutil.rmtree(path, ignore_errors=True)


async def remove(teardown: list[str], cleanup: list[str]) -> None:
    """Remove what outlives a killed launcher: a container (by name), the directories it used."""
    if teardown:
        with contextlib.suppress(Exception):
            proc = await asyncio.create_subprocess_exec(*teardown, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                                                        stderr=asyncio.subprocess.DEVNULL, start_new_session=True)  # fmt: skip
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except asyncio.TimeoutError:
                proc.kill()
    for path in cleanup:
        shutil.rmtree(path, ignore_errors=True)
