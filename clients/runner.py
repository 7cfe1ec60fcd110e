"""The episode runner: the only create -> play -> score -> delete lifecycle. `astra-gym eval`, `synth
trajectories` and GRPO's rollout function all play their episodes through `run_episode`, so an episode is
the same episode whoever plays it: same prompt (the gym's), same system prompt, same tools (the episode's
MCP toolbox), same seed rule, same score."""

from __future__ import annotations

import time
import zlib
from collections.abc import Sequence

from clients.agent import DEFAULT_SYSTEM_PROMPT, AgentResult, ModelEndpointError
from clients.gym_client import EpisodeLost, GymClient, GymError
from clients.policies import EpisodeContext, Policy
from clients.records import TrajectoryRecord
from clients.toolbox import MCPToolbox
from gym_server.models import DistractorRef, EpisodeCreate


class EpisodeNotPlayed(RuntimeError):
    """The gym did not answer some of the episode's tool calls: its score would measure the gym, not the agent."""


def episode_seed(run_seed: int, arena_id: str, attempt: int) -> int:
    """The seed of a run's `attempt`-th episode on an arena (failure injection follows it): distinct per arena
    and attempt, and equal in every command given the same run seed."""
    return zlib.crc32(f"{run_seed}:{arena_id}:{attempt}".encode())


async def run_episode(
    gym: GymClient,
    policy: Policy,
    arena_id: str,
    *,
    repeat: int = 0,
    seed: int = 0,
    failure_rate: float | None = None,
    distractors: Sequence[DistractorRef] = (),
    domain: str | None = None,
    scenario_type: str | None = None,
    prompt: str | None = None,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
) -> TrajectoryRecord:
    """Raises `GymError` / `ModelEndpointError` when the gym or the model is unusable (the run should stop).
    An episode lost with its gym replica or process comes back with `record.replica_lost` (callers replay it).
    An episode that could not be played (its MCP URL refused, a tool call without an answer) is an
    infrastructure error in `record.error`, never a score: it is not scored at all. The toolbox shares the
    gym client's HTTP pool."""
    started = time.perf_counter()
    record = TrajectoryRecord(arena_id=arena_id, repeat=repeat, seed=seed, policy=policy.name, model=policy.model,
                              domain=domain, scenario_type=scenario_type, system_prompt=system_prompt)  # fmt: skip
    request = EpisodeCreate(arena_id=arena_id, seed=seed, failure_rate=failure_rate, distractors=list(distractors))
    created = await gym.create_episode(request)
    if prompt is not None:  # a synthesized task played in an arena that has no question of its own
        created = created.model_copy(update={"prompt": prompt})
    record.episode_id = created.episode_id
    record.gym_url = created.mcp_url.split("?", 1)[0]  # the key opens the episode's tools: it stays out of records
    ended = False
    try:
        async with MCPToolbox.http_endpoint(created.mcp_url, gym.http, discovered=gym.discovered) as toolbox:
            record.tools = toolbox.openai_tools()
            ctx = EpisodeContext(gym, created, arena_id, toolbox, seed, system_prompt)
            result = await policy.play(ctx)
            result = await _later_turns(gym, policy, ctx, result, record)
        record.messages = result.messages
        record.final_answer = result.final_answer
        record.turns, record.stop_reason = result.turns, result.stop_reason
        record.usage, record.timings, record.tokens = result.usage, result.timings, result.tokens
        if toolbox.transport_errors:
            raise EpisodeNotPlayed(f"{len(toolbox.transport_errors)} tool call(s) got no answer from the gym; first: {toolbox.transport_errors[0]}")
        finished = await gym.finish(created.episode_id, result.final_answer)  # scored, its final log, and ended
        record.reward, record.call_log, ended = finished.scored, finished.calls, True
    except EpisodeLost as exc:  # its gym died under it: replayable, and never a score
        record.error, record.replica_lost, record.reward = f"EpisodeLost: {exc}", True, None
    except (GymError, ModelEndpointError):
        raise
    except Exception as exc:  # the episode could not be played; the record says why, and it scores nothing
        record.error = f"{type(exc).__name__}: {exc}"
    finally:
        try:
            if not ended:
                await gym.delete(created.episode_id)
        except EpisodeLost:  # an episode that failed because its gym is gone is lost, not merely failed
            record.replica_lost = record.error is not None
        except GymError:
            pass
    record.timings.total_s = time.perf_counter() - started
    return record


CUT_SHORT = ("max_turns", "length", "gym_unreachable")
"""A user turn that ended so stops the conversation (BFCL's harness: past the step limit it force-quits the
entry); the episode is scored with the turns it reached."""


async def _later_turns(gym: GymClient, policy: Policy, ctx: EpisodeContext, result: AgentResult, record: TrajectoryRecord) -> AgentResult:
    """A multi-turn episode's later user turns, in the same conversation: the gym opens each one (its message,
    and the tools that came with it, which the toolbox lists again)."""
    for turn in range(1, ctx.episode.n_turns):
        if result.stop_reason in CUT_SHORT:
            break
        advanced = await gym.next_turn(ctx.episode.episode_id, result.final_answer)
        if advanced.tools_changed:
            await ctx.toolbox.refresh_tools()
            record.tools = ctx.toolbox.openai_tools()
        usage, timings, turns = result.usage, result.timings, result.turns
        result = await policy.next_turn(ctx, turn, advanced.message, result)
        result.usage.add(usage.model_dump())
        result.turns += turns
        result.timings.model_s += timings.model_s
        result.timings.tools_s += timings.tools_s
    return result
