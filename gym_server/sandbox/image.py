"""The image the container backend runs: this host's own interpreter, its standard library and the shared
libraries they load, and nothing else (no shell, no package manager, no third-party packages).

It is built locally, without a registry, from the same files bubblewrap binds read-only: a tar stream of them
goes to `ENGINE import`. The image carries a label naming the interpreter it was made from, so a stale image
(another Python on the host) is rebuilt rather than run.

    python -m gym_server.sandbox.image build --engine podman [--tag astra-gym-sandbox:latest] [--force]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import re
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

from gym_server.sandbox.launch import interpreter

DEFAULT_TAG = "astra-gym-sandbox:latest"
LABEL = "astra.gym.python"
SKIPPED = {"site-packages", "dist-packages", "test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "__phello__"}
"""Parts of the standard library arena code never needs; the `config-*` directory (a static libpython) too."""
SKIPPED_EXTENSIONS = ("_tkinter", "_test", "xxlimited", "_ctypes_test", "_xxtestfuzz")
LIBRARY_LINE = re.compile(r"^\s*(?:\S+\s+=>\s+)?(/\S+)\s+\(0x[0-9a-f]+\)\s*$")


class ImageError(RuntimeError):
    pass


def fingerprint() -> str:
    """Which interpreter (and which recipe) an image holds: a rebuild is due when this differs from its label."""
    python, prefix = interpreter()
    recipe = Path(__file__).read_bytes()  # what goes into an image changes with this module
    return hashlib.sha256(f"{python}\n{prefix}\n{sys.version}\n{os.stat(python).st_mtime_ns}\n".encode() + recipe).hexdigest()[:24]


def _stdlib_files(prefix: str) -> Iterator[str]:
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    root = os.path.join(prefix, "lib", version)
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == root:
            dirnames[:] = [d for d in dirnames if d not in SKIPPED and not d.startswith("config-")]
        for name in filenames:
            if name.endswith(".so") and name.startswith(SKIPPED_EXTENSIONS) or ".opt-" in name:
                continue  # optimized bytecode: the interpreter runs without -O
            yield os.path.join(dirpath, name)


def shared_libraries(binaries: list[str]) -> set[str]:
    """Every shared library (and the dynamic loader) the binaries load, as the host's loader resolves them."""
    found: set[str] = set()
    for start in range(0, len(binaries), 64):
        try:
            done = subprocess.run(["ldd", *binaries[start : start + 64]], capture_output=True, text=True, timeout=60)
        except FileNotFoundError:
            raise ImageError("ldd is not installed (Debian: libc-bin); it finds the shared libraries Python needs") from None
        for line in done.stdout.splitlines():
            match = LIBRARY_LINE.match(line)
            if match:
                found.add(match.group(1))
    return found


def _canonical(path: str) -> str:
    """The library where it really lives, under its own name (the name its users ask the loader for)."""
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def _entry(name: str, kind: bytes, mode: int, size: int = 0, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name.lstrip("/"))
    info.type, info.mode, info.size, info.linkname, info.mtime = kind, mode, size, target, 0
    return info


def write_rootfs(out: io.BufferedIOBase) -> int:
    """Write the image's filesystem as a tar stream to `out`; returns the number of files."""
    python, prefix = interpreter()
    files = [python, *(os.path.join(prefix, "lib", n) for n in os.listdir(os.path.join(prefix, "lib")) if n.startswith("libpython") and ".so" in n)]
    files += list(_stdlib_files(prefix))
    libraries = {_canonical(p) for p in shared_libraries([python, *(f for f in files if f.endswith(".so") or ".so." in f)])}
    wanted = sorted({*files, *libraries})
    directories = {"/tmp", "/run", "/proc", "/dev", "/etc", "/astra", "/usr/local/bin"}
    for path in wanted:
        directories.update(str(p) for p in Path(path).parents if str(p) != "/")
    links = {top: os.readlink(top) for top in ("/lib", "/lib64", "/lib32", "/bin", "/sbin") if os.path.islink(top)}
    with tarfile.open(fileobj=out, mode="w|") as tar:
        for directory in sorted(directories - links.keys()):
            tar.addfile(_entry(directory, tarfile.DIRTYPE, 0o1777 if directory == "/tmp" else 0o755))
        for link, target in links.items():
            tar.addfile(_entry(link, tarfile.SYMTYPE, 0o777, target=target))
        for path in wanted:
            with open(path, "rb") as fh:  # dereferenced: a library stands under the name its users ask for
                tar.addfile(_entry(path, tarfile.REGTYPE, os.stat(path).st_mode & 0o755, os.fstat(fh.fileno()).st_size), fh)
        tar.addfile(_entry("/usr/local/bin/python3", tarfile.SYMTYPE, 0o777, target=python))
    return len(wanted)


def image_label(engine: str, tag: str) -> str | None:
    """The image's interpreter label, or None when the engine has no such image."""
    done = subprocess.run([engine, "image", "inspect", "--format", f'{{{{index .Config.Labels "{LABEL}"}}}}', tag], capture_output=True, text=True, timeout=60)
    return done.stdout.strip() if done.returncode == 0 else None


def is_current(engine: str, tag: str = DEFAULT_TAG) -> bool:
    return image_label(engine, tag) == fingerprint()


def build(engine: str, tag: str = DEFAULT_TAG, force: bool = False) -> bool:
    """Build (import) the image unless a current one exists; True when it built one."""
    if not force and is_current(engine, tag):
        return False
    previous = _image_id(engine, tag)
    argv = [engine, "import", "--change", "ENV PATH=/usr/local/bin:/usr/bin:/bin", "--change", f"LABEL {LABEL}={fingerprint()}", "-", tag]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stderr is not None
    try:
        write_rootfs(proc.stdin)
    except BrokenPipeError:
        pass
    finally:
        proc.stdin.close()
    error = proc.stderr.read().decode(errors="replace").strip()
    if proc.wait(timeout=300) != 0:
        raise ImageError(f"`{engine} import` failed: {error}")
    if not is_current(engine, tag):
        raise ImageError(f"`{engine} import` made {tag} without its label {LABEL}; the engine ignored --change")
    if previous and previous != _image_id(engine, tag):  # the image this one replaces, unless a container still uses it
        subprocess.run([engine, "rmi", previous], capture_output=True, timeout=60)
    return True


def _image_id(engine: str, tag: str) -> str | None:
    done = subprocess.run([engine, "image", "inspect", "--format", "{{.Id}}", tag], capture_output=True, text=True, timeout=60)
    return done.stdout.strip() or None if done.returncode == 0 else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gym_server.sandbox.image", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("build", "build the image unless a current one exists"), ("check", "exit 0 when the image is current")):
        command = sub.add_parser(name, help=text)
        command.add_argument("--engine", default="docker", help="docker or podman")
        command.add_argument("--tag", default=DEFAULT_TAG)
        if name == "build":
            command.add_argument("--force", action="store_true", help="rebuild even when the image is current")
    args = parser.parse_args(argv)
    if args.command == "check":
        current = is_current(args.engine, args.tag)
        print(f"{args.tag}: {'current' if current else 'missing or stale'}")
        return 0 if current else 1
    started = time.perf_counter()
    try:
        built = build(args.engine, args.tag, args.force)
    except (ImageError, OSError, subprocess.TimeoutExpired) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.tag}: {'built' if built else 'already current'} in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
