"""What the sandbox must be under, checked against what its processes report from inside."""

from __future__ import annotations

import os
from typing import Any

NAMESPACES = ("user", "pid", "net", "mnt", "ipc", "uts")


def own_namespaces() -> dict[str, int]:
    return {n: os.stat(f"/proc/self/ns/{n}").st_ino for n in NAMESPACES}


def isolation_problems(facts: dict[str, Any], probe: dict[str, Any]) -> list[str]:
    """What the template and a call's process report that falls short of the boundary; [] when it all holds."""
    problems = []
    if "proc_error" in facts:
        problems.append(f"the sandbox cannot read its own status ({facts['proc_error']})")
    if facts.get("uid") == 0 or facts.get("euid") == 0 or probe.get("uid") == 0:
        problems.append("arena code would run as root")
    if facts.get("cap_eff", "").strip("0") or facts.get("cap_prm", "").strip("0"):
        problems.append(f"the sandbox holds capabilities (CapEff {facts.get('cap_eff')})")
    if not facts.get("no_new_privs"):
        problems.append("no_new_privs is not set")
    if facts.get("seccomp_mode") != 2:
        problems.append("no seccomp filter is in force")
    ours = own_namespaces()
    shared = [n for n in NAMESPACES if facts.get("namespaces", {}).get(n) in (None, ours[n])]
    if shared:
        problems.append(f"the sandbox shares the gym's {', '.join(shared)} namespace(s)")
    allowed = [name for name, result in probe.get("attempts", {}).items() if result == "allowed"]
    if allowed or not probe.get("attempts"):
        problems.append(f"a call's process was allowed: {', '.join(allowed) or 'nothing was probed'}")
    return problems
