"""Starting the sandbox's template: under bubblewrap and seccomp (or in a container), initialized with its limits
and filters, asked what isolation it really has, and probed from a call's process. Refuses to hand back a
template without its boundary unless the operator said `--unsafe-sandbox`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any

from gym_server.sandbox import launch as launching
from gym_server.sandbox import policy
from gym_server.sandbox.config import SandboxConfig, SandboxUnavailable
from gym_server.sandbox.inside.frames import MAX_CONTROL_BYTES
from gym_server.sandbox.isolation import isolation_problems
from gym_server.sandbox.processes import TemplateHandle
from gym_server.sandbox.protocol import FrameError, decode_control

logger = logging.getLogger("gym_server.sandbox.pool")

Probe = Callable[[TemplateHandle], Awaitable[dict[str, Any]]]
"""Runs the probe op in a fresh call process of the template; returns what it found."""


async def start_template(config: SandboxConfig, probe: Probe) -> tuple[TemplateHandle, bool]:
    """The template under the strongest boundary this machine offers, probed; and whether arena code would run
    without its full boundary (only ever allowed with `config.unsafe`)."""
    c = config
    try:
        packages = launching.package_dirs(c.packages)
    except ValueError as exc:
        raise SandboxUnavailable(str(exc)) from None
    if c.backend == "docker":
        try:
            launch = await asyncio.to_thread(launching.container, c.docker_engine, c.docker_image, c.memory_mb, c.max_active + c.workers,
                                             c.sandbox_uid, c.sandbox_uid, tempfile.mkdtemp(prefix="astra-sandbox-"), c.docker_runtime,
                                             packages=packages)  # fmt: skip
        except (RuntimeError, OSError) as exc:
            raise SandboxUnavailable(f"sandbox backend 'docker' was asked for, but {exc}") from None
        return await _launch(config, probe, launch, filters=policy.available() is None)
    why = launching.bwrap_available() or policy.available()
    if why is None:
        try:
            return await _launch(config, probe, launching.bwrap(c.sandbox_uid, c.sandbox_uid, packages), filters=True)
        except SandboxUnavailable as exc:
            why = str(exc)
    if not c.unsafe:
        raise SandboxUnavailable(
            f"no kernel sandbox: {why}. Arena code is untrusted and runs only inside one; "
            "to run it without (trusted arenas only), pass --unsafe-sandbox"
        )
    logger.warning("sandbox: running arena code WITHOUT kernel isolation (--unsafe-sandbox): %s", why)
    return await _launch(config, probe, launching.unsafe(packages), filters=policy.available() is None)

async def _launch(config: SandboxConfig, probe: Probe, launch: launching.Launch, filters: bool) -> tuple[TemplateHandle, bool]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0", **launch.env}
    try:
        proc = await asyncio.create_subprocess_exec(
            *launch.argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, pass_fds=launch.pass_fds, env=env, start_new_session=True,
        )  # fmt: skip
    except OSError as exc:
        launch.gym_end.close()
        await launching.remove(launch.teardown, launch.cleanup)
        raise SandboxUnavailable(f"the sandbox did not start: {exc}") from None
    finally:
        for end in launch.close_after_start:
            end.close()
    loop = asyncio.get_running_loop()
    ctl = launch.gym_end
    template: TemplateHandle | None = None
    try:
        async with asyncio.timeout(config.start_timeout_s):
            if launch.listener is not None:
                ctl = await launching.accept(launch, proc)
            ctl.setblocking(False)
            template = TemplateHandle(launch.kind, proc, ctl, launch.cleanup, launch.teardown)
            base, call = (policy.base_filter(), policy.call_filter()) if filters else (b"", b"")
            c = config
            settings = {"cpu_s": c.cpu_s, "memory_mb": c.memory_mb, "max_result_bytes": c.max_result_bytes,
                        "max_state_bytes": c.max_state_bytes, "keep_rss_mb": c.keep_rss_mb,
                        "max_result_depth": c.max_result_depth, "audit_hook": c.audit_hook, "packages": c.packages,
                        "state_diffs": c.state_diffs, "max_owed_diff_bytes": c.max_owed_diff_bytes}  # fmt: skip
            template.send({"op": "init", "settings": settings, "base_bpf_bytes": len(base)}, base + call)
            message = await loop.sock_recv(ctl, MAX_CONTROL_BYTES)
            if not message:
                raise EOFError
            ready, _ = decode_control(message)
            if ready.get("op") != "ready":
                raise FrameError(f"the template answered {ready.get('op')!r} instead of ready")
            template.facts = ready.get("facts") or {}
            template.reader = loop.create_task(template.read_control())
            template.probe = await probe(template)
    except (asyncio.TimeoutError, EOFError, OSError, FrameError, ValueError) as exc:
        stderr = b""
        with contextlib.suppress(Exception):
            proc.kill()
        with contextlib.suppress(Exception):  # also when it had exited already (an engine that refused to run it)
            stderr = await asyncio.wait_for(proc.stderr.read(4096), 2) if proc.stderr else b""
        if template is not None:
            await template.stop()
        else:
            ctl.close()
            await launching.remove(launch.teardown, launch.cleanup)
        detail = stderr.decode(errors="replace").strip() or f"{type(exc).__name__}: {exc}"
        raise SandboxUnavailable(f"the {launch.kind} sandbox did not start: {detail}") from None
    loop.create_task(_drain(proc))
    problems = isolation_problems(template.facts, template.probe)
    unsafe = launch.kind == "unsafe" or bool(problems)
    if problems and not config.unsafe:
        await template.stop()
        raise SandboxUnavailable(f"the {launch.kind} sandbox came up without its boundary: {'; '.join(problems)}")
    if problems:
        logger.warning("sandbox: isolation incomplete (--unsafe-sandbox): %s", "; ".join(problems))
    return template, unsafe

async def _drain(proc: asyncio.subprocess.Process) -> None:
    """Keep reading what bubblewrap or the engine prints, so it never blocks on a full pipe."""
    if proc.stderr is None:
        return
    with contextlib.suppress(Exception):
        while line := await proc.stderr.readline():
            logger.warning("sandbox: %s", line.decode(errors="replace").rstrip())
