"""GRPO provably learns through the real gym, and its control unlearns: a tiny model SFT'd (through `run_sft`)
on trajectories that call the right and the wrong tool equally often sits near 50% held-out success; GRPO
through `run_grpo` (a real gym on loopback, the MCP rollout, TRL's trainer) must lift it to >= 90% on 100
held-out arenas, and the same run with the reward negated must push it below 10%. A flipped advantage sign or
an inverted env_mask fails it (`bench/learning_breaks.py` patches each in and shows the numbers)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from gym_server.config import ServeConfig
from gym_server.serve import GymThread
from tests.fixtures.choice_learning import HELDOUT, build_world, coin_trajectories, grpo, heldout_success, sft

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

GRPO_STEPS = 40


@pytest.fixture(scope="module")
def learning(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small runs faster on one thread than on two contended ones
    try:
        world = build_world(tmp_path_factory.mktemp("choice"))
        with GymThread.private(ServeConfig(port=0, arenas=[str(world.train), str(world.heldout)])) as gym:
            url, token = gym.url, gym.config.token
            policy = sft(world, coin_trajectories(world, url, token))
            yield SimpleNamespace(world=world, url=url, token=token, sft=policy, before=heldout_success(world, policy, url, token, "sft"))
    finally:
        torch.set_num_threads(threads)


def negated(prompts, completions, gym_reward, **fields):
    return [-r for r in gym_reward]


@pytest.mark.timeout(300)
def test_the_sft_policy_picks_the_right_tool_about_half_the_time(learning):
    assert learning.before["scored"] == HELDOUT >= 100 and learning.before["errors"] == 0
    assert 0.35 <= learning.before["success_rate"] <= 0.65, learning.before


@pytest.mark.timeout(300)
@pytest.mark.parametrize("sign", [1, -1], ids=["reward", "negated-reward"])
def test_grpo_moves_held_out_success_the_way_the_reward_points(learning, sign):
    trained = grpo(learning.world, learning.sft, f"grpo-{sign}", learning.url, learning.token, steps=GRPO_STEPS,
                   reward=None if sign > 0 else negated)  # fmt: skip
    after = heldout_success(learning.world, trained, learning.url, learning.token, f"grpo-{sign}")
    assert after["scored"] == HELDOUT and after["errors"] == 0
    if sign > 0:
        assert after["success_rate"] >= 0.9, (learning.before, after)
    else:
        assert after["success_rate"] < 0.1, (learning.before, after)
