"""`astra-gym view`: a server-rendered browser over eval run folders (trajectories.jsonl, report.json, charts)."""
