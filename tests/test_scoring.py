"""The F1 reward and answer normalization, on hand-made call logs."""

from __future__ import annotations

from gym_server.answers import answers_equal, result_contains_answer
from gym_server.builtin import builtin_arenas
from gym_server.models import CallLogEntry, CallStatus
from gym_server.scoring import score_episode

ARENA = next(a for a in builtin_arenas() if a.id == "clinic-book-d02")


GOLD_ARGS = {s.gold_call.tool: s.gold_call.arguments for s in ARENA.subtasks}


def call(i: int, tool: str, result, status=CallStatus.ok, source=None, arguments=None) -> CallLogEntry:
    """A logged call, with the arena's gold arguments for its tool unless told otherwise."""
    return CallLogEntry(index=i, tool=tool, arguments=GOLD_ARGS.get(tool, {}) if arguments is None else arguments, status=status,
                        result=result, started_at=0.0, latency_ms=1.0, source_arena=source)  # fmt: skip


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


def test_a_call_must_name_the_entity_the_question_names():
    """Asked for doctor D02's first open slot, a call for another doctor whose slot happens to be the same
    one scores nothing; the booking's slot id, found by the earlier call, is not named, so it is free."""
    from gym_server.scoring import named_arguments

    s1, s2 = ARENA.subtasks[0], ARENA.subtasks[1]
    assert named_arguments(ARENA, s1) == {"doctor_id": "D02", "date": "2026-12-05"}
    assert named_arguments(ARENA, s2) == {"patient_id": "PT7"}  # SL2 is the first call's answer, not the user's word
    right = {"slot_id": "SL2", "time": "10:30"}
    other_doctor = call(0, "get_first_open_slot", right, arguments={"doctor_id": "D03", "date": "2026-12-05"})
    assert score_episode(ARENA, [other_doctor]).solved == 0
    spelled = call(0, "get_first_open_slot", right, arguments={"doctor_id": "d02 ", "date": "2026-12-05"})
    assert score_episode(ARENA, [spelled]).solved == 1  # the same normalization as answers
    not_a_dict = call(0, "get_first_open_slot", right, arguments=["D02", "2026-12-05"])
    assert score_episode(ARENA, [not_a_dict]).solved == 0
    other_slot = call(0, "book_appointment", {"time": "10:30"}, arguments={"patient_id": "PT7", "slot_id": "SL9"})
    assert score_episode(ARENA, [other_slot]).solved_subtasks == ["s2"]


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
