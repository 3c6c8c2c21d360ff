"""Planning a steering job: the queries file, and one generation per (query, value or combo,
level, regime, sample), chunked for the queue.

Order (and so ``gen_no``): query, then each single value by level (level 0, the unsteered
baseline, once per value whatever the regimes, regime ``none``), each regime; then each combo
by regime, then one baseline (every value at level 0) per distinct combo value list; then sample. Each generation's
sampling seed is ``SeedSequence([job seed, gen_no])``; exemplars are drawn with the same seed.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from schemas.messages import SteerJobSpec
from schemas.taxonomy import default_taxonomy
from workers.steering.prompts import build_messages, draw_exemplars


@dataclass(frozen=True)
class Target:
    """What one generation aims at: (value, level) pairs (one pair, or a combo) under a regime."""

    values: tuple[str, ...]
    levels: tuple[int, ...]
    regime: str  # persona | exemplars | none (baseline)
    combo: bool = False

    @property
    def name(self) -> str:
        """``care-harm``, or ``care-harm:2,fairness-cheating:-1`` for a combo."""
        if not self.combo:
            return self.values[0]
        return ",".join(f"{v}:{lv}" for v, lv in zip(self.values, self.levels))


@dataclass(frozen=True)
class PlannedGeneration:
    gen_no: int
    chunk_no: int
    query_no: int
    query: str
    target: Target
    sample: int
    seed: int


def read_queries(path: str | Path, field: str = "query") -> list[str]:
    """The non-empty queries of a CSV file's ``field`` column; errors name file, line and field."""
    path = Path(path)
    try:
        fh = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{path}: cannot read queries: {exc.strerror}") from None
    with fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or field not in reader.fieldnames:
            cols = ", ".join(reader.fieldnames or []) or "none"
            raise ValueError(f"{path}:1: field '{field}': no such column (columns: {cols})")
        out = []
        for row in reader:
            q = (row.get(field) or "").strip()
            if not q:
                raise ValueError(f"{path}:{reader.line_num}: field '{field}': empty query")
            out.append(q)
    if not out:
        raise ValueError(f"{path}: no queries")
    return out


def parse_combo(text: str) -> dict[str, int]:
    """``"care-harm:2,fairness-cheating:-1"`` → {value key: level}; values resolved by the taxonomy."""
    tax = default_taxonomy()
    out: dict[str, int] = {}
    for part in text.split(","):
        name, sep, level = part.strip().rpartition(":")
        if not sep or not name:
            raise ValueError(f"combo {text!r}: expected VALUE:LEVEL pairs separated by commas, got {part.strip()!r}")
        try:
            lv = int(level)
        except ValueError:
            raise ValueError(f"combo {text!r}: level {level!r} of {name!r} is not an integer") from None
        key = tax.resolve_values([name])[0].key
        if key in out:
            raise ValueError(f"combo {text!r}: value {key!r} appears twice")
        out[key] = lv
    return out


def targets(spec: SteerJobSpec) -> list[Target]:
    out = []
    for v in spec.values:
        for lv in spec.levels:
            if lv == 0:
                out.append(Target((v,), (0,), "none"))
            else:
                out += [Target((v,), (lv,), r) for r in spec.regimes]
    baselines = []
    for c in spec.combos:
        vals, lvs = tuple(c), tuple(c.values())
        out += [Target(vals, lvs, r, combo=True) for r in spec.regimes]
        base = Target(vals, (0,) * len(vals), "none", combo=True)
        if base not in baselines:  # combos over the same values share their baseline
            baselines.append(base)
    return out + baselines


def gen_seed(seed: int, gen_no: int) -> int:
    return int(np.random.SeedSequence([seed, gen_no]).generate_state(1, dtype=np.uint64)[0] >> 1)


def plan_generations(spec: SteerJobSpec, queries: list[str]) -> list[PlannedGeneration]:
    out = []
    tg = targets(spec)
    for qi, q in enumerate(queries):
        for t in tg:
            for s in range(spec.samples):
                g = len(out)
                out.append(PlannedGeneration(g, g // spec.gen_chunk, qi, q, t, s, gen_seed(spec.seed, g)))
    return out


def messages_of(g: PlannedGeneration, spec: SteerJobSpec, pools: dict[str, list[tuple[str, float]]]) -> list[dict]:
    """The conversation of a planned generation; ``pools``: value → [(VIDB text, intensity)]."""
    tax = default_taxonomy()
    pairs = [(tax.get(v), lv) for v, lv in zip(g.target.values, g.target.levels)]
    ex = None
    if g.target.regime == "exemplars":
        rng = np.random.default_rng(g.seed)
        ex = [t for v, lv in zip(g.target.values, g.target.levels) if lv != 0
              for t in draw_exemplars(pools[v], lv, spec.exemplars, rng, v)]
        ex = [ex[i] for i in rng.permutation(len(ex))] if len(g.target.values) > 1 else ex
    return build_messages(g.query, pairs, g.target.regime, ex)
