"""The F1 reward and answer normalization, on hand-made call logs."""

from __future__ import annotations

from gym_server.answers import answers_equal, result_contains_answer
from gym_server.builtin import builtin_arenas
from gym_server.models import CallLogEntry, CallStatus
from gym_server.scoring import score_episode

ARENA = next(a for a in builtin_arenas() if a.id == "clinic-book-d02")


def call(i: int, tool: str, result, status=CallStatus.ok, source=None) -> CallLogEntry:
    return CallLogEntry(index=i, tool=tool, arguments={}, status=status, result=result, started_at=0.0, latency_ms=1.0, source_arena=source)


def test_f1_reward_matches_the_formula():
    calls = [
        call(0, "get_first_open_slot", {"slot_id": "SL2", "time": "10:30"}),
        call(1, "get_doctor", {"id": "D02"}),
        call(2, "book_appointment", {"appointment_id": "AP002", "time": "10:30"}),
    ]
    s = score_episode(ARENA, calls)
    assert (s.solved, s.n_subtasks, s.tool_calls) == (2, 3, 3)
    r, p = 2 / 3, 2 / 3
    assert abs(s.reward - 2 * p * r / (p + r)) < 1e-12 and s.solved_subtasks == ["s1", "s2"]


def test_one_call_solves_at_most_one_subtask_and_failed_calls_solve_nothing():
    same = {"slot_id": "SL2", "time": "11:15"}  # contains both s1's and s3's answer
    s = score_episode(ARENA, [call(0, "get_first_open_slot", same)])
    assert s.solved == 1 and s.precision == 1.0
    failed = call(0, "get_first_open_slot", {"slot_id": "SL2"}, status=CallStatus.injected_failure)
    assert score_episode(ARENA, [failed]).reward == 0.0
    distractor = call(0, "get_first_open_slot", {"slot_id": "SL2"}, source="other-arena")
    assert score_episode(ARENA, [distractor]).solved == 0
    assert score_episode(ARENA, []).reward == 0.0 and score_episode(ARENA, []).precision == 0.0


def test_answer_normalization():
    assert answers_equal("Delta", " delta ")
    assert answers_equal(17.98, "$17.98") and answers_equal("1,200", 1200) and answers_equal(4, "4.0")
    assert answers_equal(["RX12", "RX15"], ["rx12", "RX15"])
    assert not answers_equal("10:30", "10:31") and not answers_equal(True, 1) and not answers_equal(4, "4 5")


def test_result_contains_answer_rules():
    assert result_contains_answer("SKU-300", {"items": [{"sku": "SKU-300"}]})
    assert not result_contains_answer("SKU-300", {"items": [{"sku": "SKU-300"}, {"sku": "SKU-100"}]})
    assert result_contains_answer(4, {"flight": {"seats_left": 4}})
    assert not result_contains_answer("B6400", "flights: AA100, B6400")  # not a substring of text
