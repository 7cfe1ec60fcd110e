"""The template: the one long-lived process inside the sandbox. It never runs arena code; it forks the processes
that do.

Started by the gym (`gym_server.sandbox.launch`) inside bubblewrap's namespaces, or in a container, as

    python -I -S -B -c "...; template.main()" --fd N | --connect PATH [--drop UID:GID]

It talks to the gym over one SOCK_SEQPACKET control socket: `init` (limits and the two seccomp programs), then
`spawn` (with the socket of a new process attached), `kill` and `cache` (a code object to compile once, so
that processes forked later inherit it compiled). It answers `ready` (the isolation it finds itself under) and
`exited` (how a process ended, when it did not end by answering).

A forked process, right after the fork: keeps only its own socket, takes its limits (address space, CPU, no
files, no core), opens its SQLite handle, stacks the call filter (an allow-list: no fork, no files, no
sockets, no signal handlers, no signals but to itself), warms up, and serves: the first call binds it to one
arena's code; it serves that episode's later calls to that arena (the gym sends nothing else to it) until the
gym closes its socket or its CPU budget is half spent. Requests without `keep` get a process to themselves.
"""

from __future__ import annotations

import errno
import gc
import mmap
import os
import resource
import select
import signal
import socket
import sys
from typing import Any, NoReturn

from .execute import Executor
from .frames import MAX_CONTROL_BYTES, PREFIX
from .guard import CPULimitExceeded, Guard, preload, safe_builtins
from .kernel import KernelCalls

CALL_FD = 3
"""Every call's process finds its socket here and no other descriptor but /dev/null on 0-2."""
NAMESPACES = ("user", "pid", "net", "mnt", "ipc", "uts")
CODE_CACHE_SIZE = 256
IDLE_GRACE_S = 0.001


def _encode(header: dict[str, Any], payload: bytes = b"") -> bytes:
    import json

    head = json.dumps(header, separators=(",", ":")).encode()
    return PREFIX.pack(len(head), len(payload)) + head + payload


def _decode(message: bytes) -> tuple[dict[str, Any], bytes]:
    import json

    head_len, payload_len = PREFIX.unpack_from(message)
    start = PREFIX.size
    header = json.loads(message[start : start + head_len])
    return header, message[start + head_len : start + head_len + payload_len]


def _on_cpu_limit(signum: int, frame: Any, limit_exceeded: type[BaseException] = CPULimitExceeded) -> None:
    raise limit_exceeded()


def isolation_facts() -> dict[str, Any]:
    """What this process is really under, read from the kernel (not from how the gym meant to start it)."""
    facts: dict[str, Any] = {"uid": os.getuid(), "gid": os.getgid(), "euid": os.geteuid()}
    try:
        with open("/proc/self/status") as fh:
            status = dict(line.rstrip("\n").split(":\t", 1) for line in fh if ":\t" in line)
        facts["cap_eff"] = status.get("CapEff", "").strip()
        facts["cap_prm"] = status.get("CapPrm", "").strip()
        facts["no_new_privs"] = status.get("NoNewPrivs", "").strip() == "1"
        facts["seccomp_mode"] = int(status.get("Seccomp", "0").strip() or 0)
        facts["namespaces"] = {n: os.stat(f"/proc/self/ns/{n}").st_ino for n in NAMESPACES}
        facts["cpus"] = sorted(os.sched_getaffinity(0))
    except OSError as exc:
        facts["proc_error"] = str(exc)
    return facts


def probe() -> dict[str, Any]:
    """Run in a call's process under its filter, before the audit hook is armed: each attempt must reach the
    kernel and be refused there."""
    results: dict[str, str] = {}

    def attempt(name: str, fn: Any) -> None:
        try:
            fn()
            results[name] = "allowed"
        except OSError as exc:
            results[name] = errno.errorcode.get(exc.errno or 0, str(exc.errno))

    def fork() -> None:
        if os.fork() == 0:
            os._exit(0)

    attempt("socket_inet", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close())
    attempt("socket_unix", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close())
    attempt("open_file", lambda: os.close(os.open("/proc/self/status", os.O_RDONLY)))
    attempt("fork", fork)
    attempt("kill_other", lambda: os.kill(1, 0))
    attempt("setuid_root", lambda: os.setuid(0))
    attempt("chroot", lambda: os.chroot("/"))
    attempt("signal_handler", lambda: signal.signal(signal.SIGUSR1, signal.SIG_IGN))
    attempt("exec_memory", lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC).close())
    return {"uid": os.getuid(), "attempts": results}


class Template:
    def __init__(self, ctl: socket.socket, settings: dict[str, Any], base_bpf: bytes, call_bpf: bytes) -> None:
        self.ctl = ctl
        self.settings = settings
        self.call_bpf = call_bpf
        self.arm_guard = bool(settings.get("audit_hook", True))
        packages = [str(p) for p in settings.get("packages") or []]
        preload(packages)
        self.guard = Guard()
        self.builtins = safe_builtins(packages)
        self.kernel = KernelCalls()
        self.kernel.die_with_parent(signal.SIGKILL)
        if base_bpf:
            self.kernel.install_filter(base_bpf)
        self.install_call_filter = self.kernel.prepared(call_bpf) if call_bpf else (lambda: None)
        self.code_cache: dict[str, Any] = {}
        self.executor: Executor | None = None
        self.code: Any = None
        self.code_id: str | None = None
        """In a forked process: the arena code it serves (bound by its first call)."""
        self.children: dict[int, int] = {}
        """pid -> the gym's id for that call's process."""
        self.pids: dict[int, int] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(self._wake_w.fileno())

    def send(self, header: dict[str, Any]) -> None:
        self.ctl.send(_encode(header))

    # -- the loop ------------------------------------------------------------------------------------------------
    def serve(self) -> None:
        # Run a call-shaped piece of our own code once here: SQLite's library initialization, the encoder's and
        # the interpreter's lazily built caches then happen once, before any fork, instead of in every process.
        s = self.settings
        self.executor = Executor(
            self.guard, self.builtins, self.code_cache, cpu_s=float(s["cpu_s"]), memory_mb=int(s["memory_mb"]),
            max_result_bytes=int(s["max_result_bytes"]), max_result_depth=int(s["max_result_depth"]),
            max_state_bytes=int(s["max_state_bytes"]), state_diffs=bool(s.get("state_diffs", False)),
            max_owed_bytes=int(s.get("max_owed_diff_bytes", 8 * 1024 * 1024)),
        )  # fmt: skip
        self.executor.warm_up()
        gc.collect()
        gc.freeze()  # forked processes then never touch (and copy) the template's objects to collect them
        self.send({"op": "ready", "pid": os.getpid(), "facts": isolation_facts()})
        while True:
            readable, _, _ = select.select([self.ctl, self._wake_r], [], [])
            if self._wake_r in readable:
                try:
                    while self._wake_r.recv(256):
                        pass
                except BlockingIOError:
                    pass
            self.reap()
            if self.ctl in readable:
                message, fds, _, _ = socket.recv_fds(self.ctl, MAX_CONTROL_BYTES, 4)
                if not message:
                    return  # the gym closed the control socket
                try:
                    self.handle(*_decode(message), fds)
                finally:
                    for fd in fds:
                        os.close(fd)

    def handle(self, header: dict[str, Any], payload: bytes, fds: list[int]) -> None:
        op = header.get("op")
        if op == "spawn" and len(fds) == 1:
            self.spawn(int(header["id"]), fds[0])
        elif op == "kill":
            pid = self.pids.get(int(header["id"]))
            if pid is not None:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        elif op == "cache":
            self.cache(str(header["code_id"]), payload.decode())

    def cache(self, code_id: str, source: str) -> None:
        """Compile code a call's process already compiled and ran: the parser cannot be a way in, since the same
        source went through it in a disposable process first."""
        if code_id in self.code_cache:
            return
        try:
            code = compile(source, f"<arena {code_id[:12]}>", "exec")
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            return
        if len(self.code_cache) >= CODE_CACHE_SIZE:
            del self.code_cache[next(iter(self.code_cache))]
        self.code_cache[code_id] = code
        gc.freeze()

    def spawn(self, call_id: int, fd: int) -> None:
        try:
            pid = os.fork()
        except OSError:
            self.send({"op": "exited", "id": call_id, "code": None, "signal": None, "error": "fork failed"})
            return
        if pid == 0:
            self.become_call(fd)
        self.children[pid] = call_id
        self.pids[call_id] = pid

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            call_id = self.children.pop(pid, None)
            if call_id is None:
                continue
            self.pids.pop(call_id, None)
            sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
            code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
            if sig is None and code == 0:
                continue  # answered and exited: the gym only asks how a process ended when it did not answer
            self.send({"op": "exited", "id": call_id, "code": code, "signal": sig})

    # -- a call's process ----------------------------------------------------------------------------------------
    def become_call(self, fd: int) -> NoReturn:
        status = 70
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGXCPU, _on_cpu_limit)
            if fd != CALL_FD:
                os.dup2(fd, CALL_FD)
            os.closerange(CALL_FD + 1, 1 << 16)
            s = self.settings
            memory = int(s["memory_mb"]) * 1024 * 1024
            # The CPU limit is the process's, for all its calls: 2 x cpu_s, and a process that has used cpu_s
            # retires after its reply, so every call has at least cpu_s and at most 2 x cpu_s.
            cpu = max(1, int(2 * float(s["cpu_s"]) + 0.999))
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
            resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            resource.setrlimit(resource.RLIMIT_NOFILE, (CALL_FD + 1, CALL_FD + 1))
            sys.setrecursionlimit(400)
            executor = self.executor  # built (and its references captured) once, in the template
            assert executor is not None
            executor.open()
            self.install_call_filter()
            status = 0
            self.serve_calls(executor)
        except BaseException:
            status = status or 71
        finally:
            os._exit(status)

    def serve_calls(self, executor: Executor) -> None:
        """Serve requests until the gym closes the socket or a reply says `retire`. A process runs one arena's
        code (the first call binds it) for one episode; the gym sends other episodes and arenas elsewhere.
        Between calls it loads, into a fresh SQLite handle, the state its episode now holds (what the last call
        left), so the next call usually needs neither the image sent nor a handle opened."""
        cpu_s, process_time, wait = float(self.settings["cpu_s"]), executor._process_time, select.select
        keep_kb = int(self.settings["keep_rss_mb"]) * 1024
        while True:
            try:
                req, blob = executor.read_request(CALL_FD)
            except (EOFError, ValueError, UnicodeDecodeError):
                return
            op = req.get("op")
            if op == "call":
                header, out = self.call(executor, req, blob)
                if header.get("kind") in ("need_source", "need_state"):
                    header["retire"] = False  # the gym resends on this same socket
                else:
                    header["retire"] = (
                        self.code is None or not req.get("keep") or header.get("kind") == "need_fresh"
                        or process_time() > cpu_s or executor.grown(keep_kb)
                    )  # fmt: skip
            elif op == "diffs":  # the gym reads the log: every diff owed so far, in one reply
                header, out = {"ok": True}, executor.owed_diffs()
                header["retire"] = process_time() > cpu_s or executor.grown(keep_kb)
            elif op == "bind" and self.code is None:
                header, out = self.bind(executor, req, blob), b""
                header["retire"] = header.get("kind") != "need_source" and not header.get("ok")
            elif op == "build_state" and self.code is None:
                if self.arm_guard:
                    self.guard.arm()
                header, out = executor.build_state(req)
                header["retire"] = True
            elif op == "probe" and self.code is None:
                header, out = {"ok": True, "probe": probe(), "retire": True}, b""
            else:
                header, out = {"ok": False, "kind": "sandbox_error", "error": f"unexpected op {op!r}", "retire": True}, b""
            header["seq"] = req.get("seq")
            owed = header["retire"] and bool(executor.owed or executor.ready)
            if owed:
                header["diffs_follow"] = True  # retiring: what it owes goes now, in a frame after the reply
            executor.write_reply(CALL_FD, header, out)
            if owed:
                executor.write_reply(CALL_FD, {"seq": req.get("seq")}, executor.owed_diffs())
            if header["retire"]:
                return
            if op == "call" and self.code is not None:
                # Let the gym run first: a unix-socket write wakes the reader with a hint that the writer is about
                # to sleep, so the gym is often queued on this CPU; preparing right away made it wait (measured
                # in session 3: 0.5 ms of a 1.2 ms round trip). Wait up to IDLE_GRACE_S or the next request.
                wait([CALL_FD], [], [], IDLE_GRACE_S)
                executor.prepare()
                executor.keep_owed_within_bound()

    def bind(self, executor: Executor, req: dict[str, Any], blob: bytes) -> dict[str, Any]:
        """Before an episode's first call (the gym forks its process when the episode is created): take the arena's
        code and the episode's initial state, so the first call is served like any later one. Nothing runs."""
        n = int(req.get("source_bytes") or 0)
        source, image = (blob[:n].decode(), blob[n:]) if n else (None, blob)
        try:
            code, _ = executor.compiled(str(req["code_id"]), source)
        except KeyError:
            return {"ok": False, "kind": "need_source"}
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            return {"ok": False, "kind": "tool_error"}
        self.code, self.code_id = code, str(req["code_id"])
        executor.held = image
        executor.prepare()
        return {"ok": True}

    def call(self, executor: Executor, req: dict[str, Any], blob: bytes) -> tuple[dict[str, Any], bytes]:
        code_id = str(req["code_id"])
        if self.code_id is not None and code_id != self.code_id:
            return {"ok": False, "kind": "need_fresh"}, b""
        n = int(req.get("source_bytes") or 0)
        source, image = (blob[:n].decode(), blob[n:]) if n else (None, blob)
        fresh = False
        if self.code is None:  # the first call: compile (or take the template's code) before anything is armed
            try:
                code, fresh = executor.compiled(code_id, source)
            except KeyError:
                return {"ok": False, "kind": "need_source"}, b""
            except (SyntaxError, ValueError) as exc:
                return {"ok": False, "kind": "tool_error", "error": f"arena code does not compile: {exc}"}, b""
            self.code, self.code_id = code, code_id
            executor.load(image)
        elif req.get("same_state"):
            if not executor.prepared:
                return {"ok": False, "kind": "need_state"}, b""
            image = executor.held
        else:
            executor.reload(image)
        executor.prepared = False
        if self.arm_guard and (req.get("guard") is not False or req.get("keep")):
            self.guard.arm()  # unguarded only on the gym's word, for a single-use process (see SandboxPool.call)
        header, out = executor.call(req, self.code, image)
        executor.held = out[header["result_bytes"] :] if header.get("ok") and header.get("changed") else image
        header["compiled"] = fresh
        return header, out


def _control_socket(argv: list[str]) -> socket.socket:
    if "--fd" in argv:
        fd = int(argv[argv.index("--fd") + 1])
        return socket.socket(fileno=fd)
    path = argv[argv.index("--connect") + 1]
    ctl = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ctl.connect(path)
    return ctl


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if os.getuid() == 0 and "--drop" in argv:
        # Root inside the namespaces (the gym runs as root): become the unprivileged id on the host, in a new
        # user namespace of our own, and start again so the exec clears the capabilities that namespace grants.
        uid, gid = (int(x) for x in argv[argv.index("--drop") + 1].split(":"))
        if "--fd" in argv:
            os.set_inheritable(int(argv[argv.index("--fd") + 1]), True)
        KernelCalls().become_unprivileged(uid, gid)
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
    ctl = _control_socket(argv)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(devnull, fd)
    message = ctl.recv(MAX_CONTROL_BYTES)
    header, payload = _decode(message)
    if header.get("op") != "init":
        raise SystemExit("the first control message must be init")
    base_len = int(header["base_bpf_bytes"])
    template = Template(ctl, header["settings"], payload[:base_len], payload[base_len:])
    os.dup2(devnull, 2)  # until here a failure's traceback reaches the gym, which names it in its error
    os.close(devnull)
    template.serve()


if __name__ == "__main__":
    main()
