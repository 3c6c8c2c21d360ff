"""How well the anchor-based evaluator with a given judge reproduces known VIDB intensities.

Run::

    python benchmarks/evaluator_agreement.py --judge embedding [--mode upstream|calibrated] [--data PATH]
    python benchmarks/evaluator_agreement.py --judge embedding --data seed-cv     # design selection
    python benchmarks/evaluator_agreement.py --judge smollm2 --limit 3           # slow judges: N texts per value

A labelled set (default: the upstream VIDB sample, ``../shared/valueflow-data/vidb-sample``; or a
few-shot JSON file, a folder of them, an upstream per-value CSV ``{value}_{theory}_flag_aggregated.csv``
or a folder of those) is scored through the in-process evaluator
(:func:`scheduler.inprocess.score_texts`: bucket windows, k = 6, m = 3) with the project's seed VIDB
as anchors. A labelled text is never an anchor: any seed item whose text is in the labelled set is
dropped from the anchors (and so from the embedding judge's probe training data).

``--data seed-cv`` scores the seed against itself by K-fold cross-validation (each fold's texts are
scored with the other folds as anchors and probe training data): the figure designs are chosen by,
so that the upstream sample stays a test set.

Printed per theory and overall: Spearman correlation of score with reference over the texts
(pooled), pairwise accuracy (pairs of texts of the same value with different reference intensity,
share ordered the same way by the score; ties ½), sign accuracy (sign of the score equals the sign
of the reference; a score of exactly 0 counts as wrong), mean |score − reference|, and unscored
texts (every window failed). Also the judge's sharpness β fitted (Bradley–Terry) on the pairs it
ordered among anchors and on the pairs between a scored text and an anchor: a judge whose anchors
look sharper than its texts gets too narrow standard errors in calibrated mode.

The last line is one JSON object: overall figures, the targets for the default ``embedding``
judge (pairwise ≥ 0.70, sign ≥ 0.72) and whether they are met.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from schemas.seed import seed_vidb  # noqa: E402
from schemas.taxonomy import STEERABLE, default_taxonomy  # noqa: E402
from workers.stats.agreement import pair_counts  # noqa: E402

SAMPLE = ROOT.parent / "shared" / "valueflow-data" / "vidb-sample"
TARGETS = {"pairwise_accuracy": 0.70, "sign_accuracy": 0.72}
THEORY_OF = {v: t for t, vs in STEERABLE.items() for v in vs}
Rows = dict[str, list[tuple[str, float]]]


# -- labelled data --------------------------------------------------------------------------------
def read_labelled(path: Path) -> Rows:
    """VIDB rows of a JSON/CSV file or of every such file in a folder (merged by value)."""
    from workers.io.vidb_files import read_vidb

    files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".json", ".csv")) if path.is_dir() else [path]
    if not files:
        raise SystemExit(f"{path}: no .json or .csv VIDB files")
    out: Rows = {}
    for f in files:
        for value, rows in read_vidb(f).items():
            out.setdefault(value, []).extend(rows)
    return out


def limit_rows(rows: Rows, n: int | None) -> Rows:
    """At most ``n`` texts per value, spread evenly over the reference order."""
    if n is None:
        return rows
    from workers.stats.multitask_ridge import cap_rows

    return {v: [r[i] for i in cap_rows([x for _, x in r], n)] for v, r in rows.items()}


def anchors_without(items: Rows, labelled: Rows) -> Rows:
    """Seed items minus any text that is also a labelled text (of any value)."""
    banned = {t for rows in labelled.values() for t, _ in rows}
    return {v: [(t, x) for t, x in rows if t not in banned] for v, rows in items.items()}


def seed_folds(items: Rows, n_folds: int, seed: int) -> list[tuple[Rows, Rows]]:
    """K folds of the seed, stratified by intensity within each value: (labelled, anchors) pairs."""
    from workers.stats.multitask_ridge import stratified_folds

    rng = np.random.default_rng(seed)
    fold_of = {v: stratified_folds(np.array([x for _, x in rows]), n_folds, rng) for v, rows in items.items()}
    return [({v: [r for r, f in zip(rows, fold_of[v]) if f == k] for v, rows in items.items()},
             {v: [r for r, f in zip(rows, fold_of[v]) if f != k] for v, rows in items.items()})
            for k in range(n_folds)]


# -- metrics --------------------------------------------------------------------------------------
def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic) if len(a) > 2 else math.nan


def summarise(recs: list[dict]) -> dict:
    """Figures over records {value, ref, score (None = unscored)}."""
    scored = [r for r in recs if r["score"] is not None]
    s = np.array([r["score"] for r in scored], float)
    y = np.array([r["ref"] for r in scored], float)
    conc, pairs = pair_counts(s, y, [r["value"] for r in scored])  # pairs within a value
    signed = y != 0
    return {"texts": len(recs), "scored": len(scored), "unscored": len(recs) - len(scored),
            "spearman": spearman(s, y), "pairwise_accuracy": conc / pairs if pairs else math.nan, "pairs": int(pairs),
            "sign_accuracy": float((np.sign(s[signed]) == np.sign(y[signed])).mean()) if signed.any() else math.nan,
            "mean_abs_error": float(np.abs(s - y).mean()) if len(s) else math.nan}


# -- judge sharpness on anchors vs on scored texts -----------------------------------------------
class Recorder:
    """Wraps a judge; keeps every (value, window, ranking) that passes through ``rank_windows``."""

    def __init__(self, judge):
        self.judge = judge
        self.seen: list[tuple[str, list[str], list[int] | None]] = []

    @property
    def name(self) -> str:
        return self.judge.name

    async def rank_windows(self, value, windows, seeds=None):
        out = await self.judge.rank_windows(value, windows, seeds)
        self.seen += [(value.key, w, r.order) for w, r in zip(windows, out)]
        return out


def pair_beta(seen, anchor_x: dict[tuple[str, str], float], text_x: dict[tuple[str, str], float]) -> dict:
    """Bradley–Terry β on anchor–anchor pairs and on text–anchor pairs of the judged windows."""
    from workers.stats.anchored import fit_judge_scale

    aa, ta = [], []
    for value, window, order in seen:
        if order is None:
            continue
        ranked = [window[i] for i in order]
        for i, hi in enumerate(ranked):
            for lo in ranked[i + 1:]:
                a_hi, a_lo = (value, hi) in anchor_x, (value, lo) in anchor_x
                x_hi = anchor_x.get((value, hi), text_x.get((value, hi)))
                x_lo = anchor_x.get((value, lo), text_x.get((value, lo)))
                if x_hi is None or x_lo is None or x_hi == x_lo:
                    continue
                (aa if a_hi and a_lo else ta if a_hi != a_lo else []).append((x_hi, x_lo))
    out = {}
    for name, rows in (("beta_anchor_pairs", aa), ("beta_text_pairs", ta)):
        try:
            out[name] = float(fit_judge_scale(np.array(rows))[0]) if rows else math.nan
        except ValueError:
            out[name] = math.nan
    return out


# -- running --------------------------------------------------------------------------------------
def build_judge(name: str, anchors: Rows, args, shared=None):
    from workers.judges.config import get_judge_config
    from workers.judges.registry import make_judge

    cfg = get_judge_config(name)
    if cfg.kind != "embedding":
        return shared or make_judge(cfg, store=None)
    from workers.judges.embedding_judge import EmbeddingJudge, ItemsAnchors

    judge = EmbeddingJudge(cfg, anchors=ItemsAnchors(anchors), encoder=getattr(shared, "encoder", None),
                           probe=args.probe, cross_fit=args.cross_fit)
    if shared is not None:
        judge._vectors = shared._vectors  # one embedding memo across folds
    return judge


async def score_set(judge, labelled: Rows, anchors: Rows, args) -> tuple[list[dict], list]:
    from scheduler.inprocess import score_texts

    tax = default_taxonomy()
    rec = Recorder(judge)
    out = []
    for value in sorted(labelled):
        rows = labelled[value]
        if not rows:
            continue
        if len(anchors.get(value, [])) < args.k - 1:
            raise SystemExit(f"value {value!r}: {len(anchors.get(value, []))} anchors left, windows of k={args.k} need {args.k - 1}")
        res = await score_texts([t for t, _ in rows], [tax.get(value)], rec, k=args.k, m=args.m, seed=args.seed,
                                mode=args.mode, items={value: anchors[value]})
        for item_no, _, _, _, inten, _, used, _, _ in res:
            out.append({"value": value, "theory": THEORY_OF[value], "text": rows[item_no][0], "ref": rows[item_no][1],
                        "score": inten if used and inten is not None and math.isfinite(inten) else None})
    return out, rec.seen


async def run(args) -> tuple[list[dict], dict]:
    seed_items = seed_vidb()
    if args.values:
        seed_items = {v: r for v, r in seed_items.items() if v in args.values}
    if args.data == "seed-cv":
        splits = [(limit_rows(lab, args.limit), anc) for lab, anc in seed_folds(seed_items, args.folds, args.seed)]
    else:
        labelled = read_labelled(Path(args.data))
        if args.values:
            labelled = {v: r for v, r in labelled.items() if v in args.values}
        labelled = limit_rows(labelled, args.limit)
        splits = [(labelled, anchors_without(seed_items, labelled))]
    recs, judge, betas = [], None, {}
    for labelled, anchors in splits:
        judge = build_judge(args.judge, anchors, args, shared=judge)
        r, seen = await score_set(judge, labelled, anchors, args)
        recs += r
        b = pair_beta(seen, {(v, t): x for v, rows in anchors.items() for t, x in rows},
                      {(v, t): x for v, rows in labelled.items() for t, x in rows})
        for k_, x in b.items():
            betas.setdefault(k_, []).append(x)
    extra = {k_: float(np.nanmean(x)) if np.isfinite(x).any() else math.nan for k_, x in betas.items()}
    fitted = getattr(judge, "fitted", None)
    if fitted is not None and fitted.cv is not None:
        extra["probe_alpha_shared"] = fitted.cv.alpha_shared
        extra["probe_alpha_task"] = fitted.cv.alpha_task
    return recs, extra


def clean(obj):
    """NaN → None, recursively (the last line must be valid JSON)."""
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def fmt(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:5.3f}" if abs(x) < 1 else f"{x:5.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--judge", default="embedding")
    ap.add_argument("--mode", default="upstream", choices=["upstream", "calibrated"])
    ap.add_argument("--data", default=str(SAMPLE), help="VIDB JSON/CSV file or folder, or 'seed-cv'")
    ap.add_argument("--limit", type=int, default=None, help="score at most N texts per value (spread over intensity)")
    ap.add_argument("--values", nargs="*", default=None, help="only these values")
    ap.add_argument("--k", type=int, default=6)
    ap.add_argument("--m", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--folds", type=int, default=5, help="seed-cv folds")
    ap.add_argument("--probe", default="multitask", choices=["multitask", "ridge"], help="embedding judge probe")
    ap.add_argument("--no-cross-fit", dest="cross_fit", action="store_false",
                    help="embedding judge: score anchors with the probe that was trained on them")
    args = ap.parse_args()
    t0 = time.perf_counter()
    recs, extra = asyncio.run(run(args))
    wall = time.perf_counter() - t0

    groups = [(t, [r for r in recs if r["theory"] == t]) for t in ("pvq", "mft", "duty", "right")]
    groups = [(t, g) for t, g in groups if g] + [("overall", recs)]
    label = "seed (5-fold)" if args.data == "seed-cv" else args.data
    print(f"judge {args.judge}, mode {args.mode}, data {label}, k={args.k}, m={args.m}, seed {args.seed}"
          + (f", at most {args.limit} texts per value" if args.limit else ""))
    print(f"{'theory':8} {'texts':>6} {'Spearman':>9} {'pairwise':>9} {'sign':>6} {'|err|':>6} {'unscored':>9}")
    figures = {}
    for name, g in groups:
        f = summarise(g)
        figures[name] = f
        print(f"{name:8} {f['texts']:6d} {fmt(f['spearman']):>9} {fmt(f['pairwise_accuracy']):>9} "
              f"{fmt(f['sign_accuracy']):>6} {fmt(f['mean_abs_error']):>6} {f['unscored']:9d}")
    if "beta_anchor_pairs" in extra:
        print(f"judge sharpness β (Bradley–Terry): anchor–anchor pairs {fmt(extra['beta_anchor_pairs'])}, "
              f"text–anchor pairs {fmt(extra['beta_text_pairs'])}")
    if "probe_alpha_shared" in extra:
        print(f"probe penalties chosen by cross-validation on the anchors: α0 (shared) {extra['probe_alpha_shared']}, "
              f"α1 (per value) {extra['probe_alpha_task']}")
    o = figures["overall"]
    met = {k_: bool(o[k_] >= v) for k_, v in TARGETS.items()}
    print(json.dumps(clean({"benchmark": "evaluator_agreement", "judge": args.judge, "mode": args.mode, "data": label,
                      "limit_per_value": args.limit, "k": args.k, "m": args.m, "seed": args.seed,
                      "probe": args.probe if args.judge == "embedding" else None,
                      "cross_fit": args.cross_fit if args.judge == "embedding" else None,
                      "overall": o, "per_theory": {k_: v for k_, v in figures.items() if k_ != "overall"},
                      **extra, "targets": TARGETS, "targets_apply_to": "embedding", "met": met,
                      "wall_s": round(wall, 1)}), allow_nan=False))


if __name__ == "__main__":
    main()
