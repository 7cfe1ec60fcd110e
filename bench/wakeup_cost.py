"""What one cross-process hop costs on this machine: a request/reply ping-pong between two processes over a
Unix socketpair (the gym <-> sandbox process channel's transport), with both on one CPU, on two CPUs, and
where the scheduler puts them. Every gym call of an episode makes two such hops (request, reply) that a bare
MCP server does not, plus one more when a state diff follows the reply; this is the floor under the sandbox's
share of a call's latency at one episode, whatever the gym's own code costs.

On a virtual machine, waking a process on another virtual CPU that sleeps goes through the hypervisor (an
inter-processor interrupt and an idle exit), so the two-CPU figure can be several times the one-CPU one.

    python bench/wakeup_cost.py [--rounds 20000]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time


def ping_pong(rounds: int, cpus: tuple[int, int] | None) -> tuple[float, float]:
    """(round trip, CPU the initiating side spent per round trip), in microseconds."""
    ours, theirs = socket.socketpair()
    allowed = os.sched_getaffinity(0)
    pid = os.fork()
    if pid == 0:
        ours.close()
        if cpus is not None:
            os.sched_setaffinity(0, {cpus[1]})
        while data := theirs.recv(64):
            theirs.send(data)
        os._exit(0)
    theirs.close()
    try:
        if cpus is not None:
            os.sched_setaffinity(0, {cpus[0]})
        for _ in range(200):  # warm-up
            ours.send(b"x")
            ours.recv(64)
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(rounds):
            ours.send(b"x")
            ours.recv(64)
        return (time.perf_counter() - t0) / rounds * 1e6, (time.process_time() - c0) / rounds * 1e6
    finally:
        os.sched_setaffinity(0, allowed)
        ours.close()
        os.waitpid(pid, 0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    layouts: dict[str, tuple[int, int] | None] = {"one CPU": (cpus[0], cpus[0]), "scheduler's choice": None}
    if len(cpus) > 1:
        layouts["two CPUs"] = (cpus[0], cpus[1])
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in layouts}
    for _ in range(args.repeats):  # interleaved: the machine's speed drifts
        for name, layout in layouts.items():
            figures[name].append(ping_pong(args.rounds, layout))
    base = statistics.median(rt for rt, _ in figures["one CPU"])
    print(f"request/reply over a Unix socketpair, {args.rounds} round trips x {args.repeats} interleaved runs, medians:")
    for name, runs in figures.items():
        rt, cpu = statistics.median(r for r, _ in runs), statistics.median(c for _, c in runs)
        print(f"  {name:>20}: round trip {rt:7.1f} us ({rt / base:4.1f}x one CPU), initiator CPU {cpu:6.1f} us")


if __name__ == "__main__":
    main()
