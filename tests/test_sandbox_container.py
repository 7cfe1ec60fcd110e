"""The container backend for real: podman (with runc) runs the template in a container built from this host's
own interpreter, and hostile arena code is contained exactly as under bubblewrap.

Skipped, with the reason, where podman is not installed or does not answer; the image is built once (and kept
while the interpreter it holds is current).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytest_asyncio

from gym_server.models import InitialState
from gym_server.sandbox import image, launch
from gym_server.sandbox.pool import SandboxConfig, SandboxPool, SandboxUnavailable
from tests.test_sandbox_containment import ATTACKS_SOURCE, CHECK, CLEAN, LIMITS, WORLD, assert_next_call_is_clean
from tests.test_sandbox_containment import no_host_marks  # noqa: F401  (the autouse fixture: nothing lands on the host)

ENGINE = "podman"


def _podman_missing() -> str | None:
    try:
        launch.container_engine(ENGINE)
    except RuntimeError as exc:
        return f"{exc} (Debian: apt-get install podman runc)"
    return None


CONFIG = dict(LIMITS, backend="docker", docker_engine=ENGINE, docker_runtime="runc" if shutil.which("runc") else None)


def config(**overrides: object) -> SandboxConfig:
    return SandboxConfig(**{**CONFIG, **overrides})


def podman(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ENGINE, *args], capture_output=True, text=True, timeout=60)


def container_exists(name: str) -> bool:
    return podman("container", "exists", name).returncode == 0


def container_of(pool: SandboxPool) -> str:
    assert pool._template is not None
    return pool._template.teardown[-1]


@pytest.fixture(scope="session")
def sandbox_image() -> str:
    """Every test that needs podman asks for this, so where podman is missing they skip, saying why."""
    missing = _podman_missing()
    if missing:
        pytest.skip(missing)
    image.build(ENGINE)  # a no-op while the image holds this interpreter
    return image.DEFAULT_TAG


@pytest_asyncio.fixture(loop_scope="session", scope="module", params=[True, False], ids=["both-layers", "kernel-only"])
async def pool(request, sandbox_image):
    async with SandboxPool(config(docker_image=sandbox_image, audit_hook=request.param)) as pool:
        yield pool


def test_the_image_holds_an_interpreter_and_nothing_to_run_besides(sandbox_image):
    probe = "import os, sys, importlib.util as u; print(sys.prefix, any(os.path.exists(p) for p in ('/bin/sh', '/usr/bin/apt', '/usr/bin/env')), u.find_spec('pip') is not None, u.find_spec('pydantic') is not None)"
    done = podman("run", "--rm", "--network=none", "--ulimit=nofile=1024:1024", "--ulimit=nproc=64:64", *(["--runtime=runc"] if CONFIG["docker_runtime"] else []), sandbox_image, "python3", "-I", "-c", probe)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [launch.interpreter()[1], "False", "False", "False"]


def test_a_stale_image_is_rebuilt_a_current_one_is_not(sandbox_image, monkeypatch):
    assert image.is_current(ENGINE, sandbox_image) and image.build(ENGINE, sandbox_image) is False
    monkeypatch.setattr(image, "fingerprint", lambda: "another-interpreter")
    assert not image.is_current(ENGINE, sandbox_image)


async def test_health_reports_the_container_and_the_isolation_in_force(pool):
    health = pool.health()
    assert health["backend"] == "docker" and not health["unsafe"] and health["alive"]
    isolation = health["isolation"]
    assert isolation["uid"] == 65534 and isolation["capabilities"] == "0000000000000000"
    assert isolation["seccomp"] and isolation["no_new_privs"] and isolation["allowed_in_call"] == []
    assert all(isolation["namespaces"].values()), isolation["namespaces"]  # the user namespace too: its own uid map
    assert {"socket_inet", "socket_unix", "open_file", "fork", "kill_other", "setuid_root", "chroot", "signal_handler"} <= set(isolation["refused_in_call"])


@pytest.mark.skipif(os.geteuid() != 0, reason="the uid map is podman's own choice when rootless")
async def test_the_host_sees_an_unprivileged_id_of_the_containers_own(pool):
    """Checked from the host, not from what the template says: the template is a process of an id no host user
    has, under no_new_privs and seccomp, in namespaces of its own (the cgroup one too), in a cgroup that bounds
    its processes."""
    pid = int(podman("inspect", "--format", "{{.State.Pid}}", container_of(pool)).stdout)
    status = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)
    assert status["Uid"].split() == [str(launch.CONTAINER_UID_BASE + 65534)] * 4
    assert status["CapEff"].strip() == "0000000000000000" and status["NoNewPrivs"].strip() == "1"
    assert status["Seccomp"].strip() == "2" and int(status["Seccomp_filters"]) >= 2  # the engine's profile and the template's own
    groups = dict(line.split(":", 2)[1:] for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines())
    pids = Path("/sys/fs/cgroup/pids", groups["pids"].lstrip("/")) if "pids" in groups else Path("/sys/fs/cgroup", groups[""].lstrip("/"))
    assert (pids / "pids.max").read_text().strip() == str(LIMITS["max_active"] + LIMITS["workers"] + 8)
    shared = [ns for ns in ("user", "pid", "net", "mnt", "ipc", "uts", "cgroup") if os.readlink(f"/proc/{pid}/ns/{ns}") == os.readlink(f"/proc/self/ns/{ns}")]
    assert shared == []


async def test_state_flows_through_the_container(sandbox_image):
    source = "def get(db):\n    return db.execute('SELECT v FROM kv').fetchone()['v']\ndef put(db, v):\n    db.execute('UPDATE kv SET v = ?', (v,))\n    return v\n"
    async with SandboxPool(config(workers=1)) as pool:
        a = await pool.build_state(InitialState(ddl=["CREATE TABLE kv (v TEXT)"], rows={"kv": [{"v": "a"}]}))
        put = await pool.call(source, "put", {"v": "a1"}, a)
        assert put.ok and put.result == "a1" and put.state
        seen = [(await pool.call(source, "get", {}, image)).result for image in (a, put.state, a)]
    assert seen == ["a", "a1", "a"]


@pytest.mark.parametrize(
    "attack, arguments",
    [("host_file", {"path": "/tmp/astra-pwned"}), ("host_file", {"path": "/run/astra/pwned"}), ("host_file", {"path": "/astra/inside/pwned.py"}),
     ("connect", {"port": 9}), ("fork_bomb", {}), ("run_shell", {}), ("frame_walk", {})],
    ids=["host_file-tmp", "host_file-socket_dir", "host_file-inside", "connect", "fork_bomb", "run_shell", "frame_walk"],
)  # fmt: skip
async def test_attack_is_contained_as_an_error(pool, attack, arguments):
    state = await pool.build_state(WORLD)
    started = time.perf_counter()
    outcome = await pool.call(ATTACKS_SOURCE, attack, arguments, state)
    assert not outcome.ok, f"{attack} got through: {outcome.result!r}"[:300]
    assert outcome.kind in ("tool_error", "sandbox_error") and outcome.error and outcome.state is None
    assert time.perf_counter() - started < 2.0, "an attack that is refused is refused at once"
    assert not (launch.INSIDE / "pwned.py").exists()
    await assert_next_call_is_clean(pool, state)


async def test_a_sleeper_is_killed_at_the_wall_clock(pool):
    state = await pool.build_state(WORLD)
    killed = pool.replaced
    started = time.perf_counter()
    sleep = await pool.call(ATTACKS_SOURCE, "sleep_forever", {}, state)
    assert not sleep.ok and sleep.kind == "sandbox_error" and "wall-clock" in sleep.error
    assert pool.replaced == killed + 1 and time.perf_counter() - started < LIMITS["call_timeout_s"] + 1
    await assert_next_call_is_clean(pool, state)


async def test_cpu_spinner_that_swallows_the_limit_is_killed_by_the_kernel(sandbox_image):
    """RLIMIT_CPU holds in the container: the spinner dies of SIGKILL at its hard limit (2 s of CPU). The wall
    clock is generous here so that a loaded machine cannot make the wall clock win the race."""
    async with SandboxPool(config(call_timeout_s=20.0, workers=1, audit_hook=False)) as pool:
        state = await pool.build_state(WORLD)
        spin = await pool.call(ATTACKS_SOURCE, "spin", {}, state)
        assert not spin.ok and spin.kind == "sandbox_error" and "CPU" in spin.error, spin.error
        await assert_next_call_is_clean(pool, state)


async def test_closing_the_pool_removes_its_container(sandbox_image):
    pool = SandboxPool(config(workers=1))
    await pool.start()
    name, socket_dir = container_of(pool), pool._template.cleanup[0]
    assert container_exists(name)
    assert not os.path.exists(socket_dir), "the socket's directory goes once the template is connected"
    await pool.close()
    assert not container_exists(name)


async def test_a_killed_container_is_replaced_and_removed(sandbox_image):
    async with SandboxPool(config(workers=1)) as pool:
        state = await pool.build_state(WORLD)
        first = container_of(pool)
        in_flight = asyncio.create_task(pool.call(ATTACKS_SOURCE, "sleep_forever", {}, state))
        await asyncio.sleep(0.3)
        assert podman("kill", first).returncode == 0
        with pytest.raises(SandboxUnavailable):  # the call the container took down with it is not a result...
            await in_flight
        outcome = await pool.call(CHECK, "check", {}, state)  # ...and the next one runs in a fresh container
        assert outcome.ok and outcome.result == CLEAN and pool.restarts == 1
        assert container_of(pool) != first and not container_exists(first)


def test_a_killed_gym_leaves_no_container_running(sandbox_image):
    """The gym dies without closing anything: the template sees its control socket end and exits, and the
    engine removes the container (`--rm`)."""
    script = (
        "import asyncio, sys\n"
        "from gym_server.sandbox.pool import SandboxConfig, SandboxPool\n"
        f"async def main():\n    pool = SandboxPool(SandboxConfig(**{dict(CONFIG, workers=1)!r}))\n    await pool.start()\n"
        "    print(pool._template.teardown[-1], pool._template.cleanup[0], flush=True)\n    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    gym = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent)
    try:
        name, socket_dir = gym.stdout.readline().split()
        assert name.startswith("astra-sandbox-") and container_exists(name)
    finally:
        gym.send_signal(signal.SIGKILL)
        gym.wait()
    deadline = time.monotonic() + 15
    while container_exists(name) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not container_exists(name) and not os.path.exists(socket_dir)


async def test_a_container_in_the_hosts_user_namespace_is_refused_not_trusted(sandbox_image, monkeypatch):
    """What docker without `userns-remap` gives: the template reports the shared user namespace from inside, the
    gym refuses to start, and nothing is left running."""
    real = launch.container
    started: list[str] = []

    def without_uid_map(*args, **kwargs):
        spec = real(*args, **kwargs)
        spec.argv = [a for a in spec.argv if not a.startswith(("--uidmap=", "--gidmap="))]
        started.append(spec.teardown[-1])
        return spec

    monkeypatch.setattr(launch, "container", without_uid_map)
    with pytest.raises(SandboxUnavailable, match="shares the gym's user namespace"):
        async with SandboxPool(config(workers=1)):
            pass
    assert started and not container_exists(started[0])


async def test_a_missing_image_is_a_clear_error_at_once(sandbox_image):
    started = time.perf_counter()
    with pytest.raises(SandboxUnavailable, match="astra-gym-sandbox:missing"):
        async with SandboxPool(config(docker_image="astra-gym-sandbox:missing", workers=1)):
            pass
    assert time.perf_counter() - started < 10, "the engine's exit is noticed, not waited out"


@pytest.mark.parametrize("name", ["--privileged", "-v/:/host", "image --privileged", ""])
def test_a_configured_name_is_never_an_engine_flag(name):
    with pytest.raises(ValueError, match="docker_image"):
        SandboxConfig(docker_image=name)
    with pytest.raises(ValueError, match="docker_runtime"):
        SandboxConfig(docker_runtime=name)


async def test_an_engine_that_is_not_there_is_a_clear_error_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # where the pool makes the socket's directory
    with pytest.raises(SandboxUnavailable, match="`no-such-engine` is not installed"):
        async with SandboxPool(config(docker_engine="no-such-engine", workers=1)):
            pass
    assert list(tmp_path.iterdir()) == []
