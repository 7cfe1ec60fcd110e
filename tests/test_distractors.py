"""Irrelevant-tool mixing: three similarity bands that respect their thresholds, served as real tools."""

from __future__ import annotations

from gym_server.builtin import builtin_arenas
from gym_server.models import Arena
from clients.distractors import BANDS, DistractorSampler, TfidfEmbedder, cosine, tool_text
from trainer.rollout import MCPRollout


def _variant(arena: Arena, new_id: str, renames: dict[str, str], descriptions: dict[str, str]) -> Arena:
    data = arena.model_dump(mode="json", by_alias=True)
    data["id"] = new_id
    for tool in data["tools"]:
        tool["description"] = descriptions.get(tool["name"], tool["description"])
        tool["name"] = renames.get(tool["name"], tool["name"])
    for sub in data["subtasks"]:
        sub["gold_call"]["tool"] = renames.get(sub["gold_call"]["tool"], sub["gold_call"]["tool"])
    return Arena.model_validate(data)


def test_bands_respect_their_thresholds():
    arenas = builtin_arenas()
    airline = next(a for a in arenas if a.id == "airline-seats-aa100")
    # a near-duplicate of get_flight under another name lands in the high band
    twin = _variant(airline, "airline-twin", {"get_flight": "lookup_flight"}, {})
    # kin: the same jobs described in other words land in the medium band
    kin = _variant(airline, "airline-kin", {"get_flight": "flight_status", "book_flight": "reserve_seat"},
                   {"get_flight": "Departure time and delay status of one flight.", "book_flight": "Reserve a seat for a traveller on a flight."})  # fmt: skip
    sampler = DistractorSampler([*arenas, twin, kin], counts={"high": 1, "medium": 2, "low": 2}, seed=3)
    bands = sampler.candidates(airline.id)
    assert any(c.tool == "lookup_flight" for c in bands["high"])
    assert {c.tool for c in bands["medium"]} >= {"flight_status", "reserve_seat"}
    for band, (lo, hi) in BANDS.items():
        assert all(lo <= c.similarity < hi for c in bands[band]), band
    assert bands["low"] and bands["medium"]
    chosen = sampler.sample(airline.id)
    own = {t.name for t in airline.tools}
    assert len(chosen) == 5 and not own & {c.tool for c in chosen} and len({c.tool for c in chosen}) == len(chosen)
    embed = TfidfEmbedder([tool_text(t) for a in arenas for t in a.tools])
    v = embed(["get flight flight id", "refill prescription id"])
    assert cosine(v[0], v[0]) > 0.99 and cosine(v[0], v[1]) < 0.5


def test_distractors_are_served_in_rollout_episodes(gym):
    from clients.gym_session import GymSession

    arenas = builtin_arenas()
    offered = []

    class Tok:  # the smallest tokenizer the rollout needs, recording the tools it was shown
        eos_token, eos_token_id = "<e>", 0

        def apply_chat_template(self, messages, tools, tokenize, add_generation_prompt):
            offered.append({t["function"]["name"] for t in tools})
            return "x"

        def __call__(self, text, add_special_tokens):
            return {"input_ids": [1]}

        def decode(self, ids, skip_special_tokens):
            return "done"

    with GymSession(gym.url) as session:
        sampler = DistractorSampler(arenas, counts={"low": 3}, seed=1)
        rollout = MCPRollout(session, Tok(), sampler=lambda ids, n: ([0], [0.0]), max_turns=1, failure_rate=0.0, distractors=sampler.sample)
        prompt = [{"role": "user", "content": "q", "arena_id": "clinic-refills-rx12"}]
        [episode] = rollout.play([prompt])
    clinic = {t.name for t in next(a for a in arenas if a.id == "clinic-refills-rx12").tools}
    extra = offered[0] - clinic
    assert len(extra) == 3 and clinic <= offered[0]
    assert episode.reward["tool_calls"] == 0
