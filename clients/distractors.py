"""Irrelevant-tool mixing (ASTRA): each training episode also serves tools of other arenas, drawn from three
bands of cosine similarity to the episode's own tools (high > 0.85, medium 0.4..0.85, low < 0.4), so the
policy learns to ignore near-misses as well as obvious noise. Distractors are real tools the gym serves in
the episode: calling one costs precision.

Embeddings come from a sentence-transformers model when one is named, else from a TF-IDF embedding of the
tool docs built here (no download).
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator

from gym_server.models import Arena, DistractorRef

BANDS = {"high": (0.85, 1.01), "medium": (0.4, 0.85), "low": (-1.0, 0.4)}
_WORD = re.compile(r"[a-z0-9]+")


def check_band_counts(counts: dict[str, int]) -> dict[str, int]:
    unknown = set(counts) - set(BANDS)
    if unknown or any(n < 0 for n in counts.values()):
        raise ValueError(f"distractor counts take the bands {sorted(BANDS)} with counts >= 0, got {counts}")
    return counts


BandCounts = Annotated[dict[str, int], AfterValidator(check_band_counts)]
"""Distractor tools per similarity band, as run configs (eval, GRPO) take them."""


def parse_band_counts(text: str) -> dict[str, int]:
    """`HIGH,MEDIUM,LOW` (a flag's text, e.g. `1,1,1`) -> distractor tools per band."""
    parts = text.split(",")
    if len(parts) != len(BANDS) or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"{text!r}: expected three counts HIGH,MEDIUM,LOW, e.g. 1,1,1")
    return dict(zip(BANDS, (int(p) for p in parts)))


def tool_text(tool: Any) -> str:
    props = " ".join((tool.input_schema or {}).get("properties", {}))
    return f"{tool.name.replace('_', ' ')} {tool.description} {props}"


class TfidfEmbedder:
    def __init__(self, corpus: list[str]) -> None:
        docs = [Counter(_WORD.findall(t.lower())) for t in corpus]
        df = Counter(w for d in docs for w in d)
        self.idf = {w: math.log((1 + len(docs)) / (1 + n)) + 1.0 for w, n in df.items()}

    def __call__(self, texts: list[str]) -> list[dict[str, float]]:
        out = []
        for text in texts:
            counts = Counter(_WORD.findall(text.lower()))
            vec = {w: c * self.idf.get(w, 1.0) for w, c in counts.items()}
            norm = math.sqrt(sum(v * v for v in vec.values())) or 1.0
            out.append({w: v / norm for w, v in vec.items()})
        return out


def cosine(a: Any, b: Any) -> float:
    if isinstance(a, dict):
        return sum(v * b.get(w, 0.0) for w, v in a.items())
    return float(sum(x * y for x, y in zip(a, b)))


@dataclass
class Candidate:
    arena_id: str
    tool: str
    similarity: float


class DistractorSampler:
    """Per arena, candidates from every other arena's tools (names that clash with the arena's own are left
    out), each with its highest similarity to any of the arena's tools, sorted into the bands."""

    def __init__(self, arenas: list[Arena], counts: dict[str, int] | None = None, model_name: str | None = None, seed: int = 0) -> None:
        self.counts = counts or {"high": 1, "medium": 1, "low": 1}
        unknown = set(self.counts) - set(BANDS)
        if unknown:
            raise ValueError(f"unknown bands {sorted(unknown)}; use {sorted(BANDS)}")
        self.rng = random.Random(seed)
        self.arenas = {a.id: a for a in arenas}
        catalogue: dict[tuple[str, ...], tuple[str, str, str]] = {}
        for arena in arenas:
            for tool in arena.tools:
                # one entry per distinct tool doc: arenas of one world share their tools
                catalogue.setdefault((tool.name, tool.description), (arena.id, tool.name, tool_text(tool)))
        self.catalogue = list(catalogue.values())
        texts = [t for _, _, t in self.catalogue]
        if model_name:
            from sentence_transformers import SentenceTransformer

            encoder = SentenceTransformer(model_name)
            self._embed = lambda xs: [list(map(float, v)) for v in encoder.encode(xs, normalize_embeddings=True)]
        else:
            self._embed = TfidfEmbedder(texts)
        self.vectors = self._embed(texts)

    def candidates(self, arena_id: str) -> dict[str, list[Candidate]]:
        arena = self.arenas[arena_id]
        own_names = {t.name for t in arena.tools}
        own = self._embed([tool_text(t) for t in arena.tools])
        bands: dict[str, list[Candidate]] = {b: [] for b in BANDS}
        for (source, name, _), vec in zip(self.catalogue, self.vectors):
            if name in own_names:
                continue
            sim = max(cosine(vec, o) for o in own)
            for band, (lo, hi) in BANDS.items():
                if lo <= sim < hi:
                    bands[band].append(Candidate(source, name, sim))
        return bands

    def sample(self, arena_id: str) -> list[DistractorRef]:
        chosen: list[DistractorRef] = []
        names: set[str] = set()
        for band, pool in self.candidates(arena_id).items():
            pool = [c for c in pool if c.tool not in names]
            for c in self.rng.sample(pool, min(self.counts.get(band, 0), len(pool))):
                chosen.append(DistractorRef(arena_id=c.arena_id, tool=c.tool))
                names.add(c.tool)
        return chosen
