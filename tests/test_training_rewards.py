"""GRPO's reward choices (the paper's ablations): F1, recall alone, precision alone, all from the gym's breakdown."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from trainer.configs import GRPORunConfig
from trainer.rollout import gym_reward, training_reward

FIELDS = {"gym_reward": [0.5, 0.0], "recall": [1.0, 0.0], "precision": [1 / 3, 0.0], "solved": [1, 0], "tool_calls": [3, 0]}


def test_each_kind_returns_its_field_and_logs_the_whole_breakdown():
    assert training_reward("f1") is gym_reward
    for kind, expected in (("f1", [0.5, 0.0]), ("recall", [1.0, 0.0]), ("precision", [1 / 3, 0.0])):
        logged: dict[str, float] = {}
        assert training_reward(kind)(["p", "p"], [None, None], log_metric=logged.__setitem__, **FIELDS) == expected
        assert logged["gym/tool_calls"] == 1.5 and logged["gym/recall"] == 0.5
    assert training_reward("recall").__name__ == "gym_recall"


def test_unknown_rewards_and_bands_are_refused():
    with pytest.raises(ValueError):
        training_reward("accuracy")
    with pytest.raises(ValidationError):
        GRPORunConfig(model="tiny", reward="accuracy")
    with pytest.raises(ValidationError):
        GRPORunConfig(model="tiny", distractors={"highest": 1})
    with pytest.raises(ValidationError):
        GRPORunConfig(model="tiny", distractors={"low": -1})
