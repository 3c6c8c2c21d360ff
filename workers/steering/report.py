"""Reports a person reads at a glance: PNG plots, tables as CSV and Markdown, one ``index.html``.

Steering job (:func:`steer_report`):

* ``dose_response.png`` — per value, mean intensity per level with 95 % CIs, one line per regime,
  the baseline (level 0) marked by a dashed line;
* ``delta_heatmap.png`` — Δ = mean(level) − mean(baseline) over values × levels (per regime);
* ``composition.png`` — per combo, each value's achieved mean intensity against its target level,
  next to the baseline (only when the job has combos);
* ``refusals.png`` — refusal rate per level and regime;
* tables ``steerability``, ``dose_response``, ``refusals`` (and ``composition``) as ``.csv`` and
  ``.md``; ``index.html`` embeds every image (base64) and table, so it is one self-contained file.

Scoring job (:func:`score_report`): ``histograms.png`` (intensity histogram per value) and a
``summary`` table.

Refusals are included by default; ``include_refusals=False`` drops refused responses from every
intensity figure (the refusal table always counts them).
"""

from __future__ import annotations

import base64
import csv
import html
import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402

from workers.steering.stats import DELTA_MIN, RHO_MIN, mean_ci, steerability  # noqa: E402

REGIME_COLORS = {"persona": "tab:blue", "exemplars": "tab:orange"}


@dataclass
class Table:
    name: str
    title: str
    columns: list[str]
    rows: list[list] = field(default_factory=list)


@dataclass
class Report:
    title: str
    out: Path
    images: list[tuple[str, str]] = field(default_factory=list)  # (file, caption)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _fmt(x) -> str:
    if x is None:
        return ""
    if isinstance(x, float):
        return "" if math.isnan(x) else f"{x:.3f}"
    return str(x)


def write_table(t: Table, out: Path) -> None:
    """``<name>.csv`` (csv module, full precision) and ``<name>.md`` (rounded) for one table."""
    with (out / f"{t.name}.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(t.columns)
        w.writerows([["" if (v is None or (isinstance(v, float) and math.isnan(v))) else v for v in r] for r in t.rows])
    lines = [f"## {t.title}", "", "| " + " | ".join(t.columns) + " |", "|" + "---|" * len(t.columns)]
    lines += ["| " + " | ".join(_fmt(v).replace("|", "\\|") for v in r) + " |" for r in t.rows]
    (out / f"{t.name}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_index(rep: Report) -> Path:
    """One self-contained HTML page: every image inlined as a data URI, every table as HTML."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(rep.title)}</title>",
             "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}img{max-width:100%;border:1px solid #ddd}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
             "th{background:#f3f3f3}td:first-child{text-align:left}</style></head><body>",
             f"<h1>{html.escape(rep.title)}</h1>"]
    parts += [f"<p>{html.escape(n)}</p>" for n in rep.notes]
    for file, caption in rep.images:
        data = base64.b64encode((rep.out / file).read_bytes()).decode()
        parts.append(f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(caption)}'>"
                     f"<figcaption>{html.escape(caption)} (<a href='{html.escape(file)}'>{html.escape(file)}</a>)"
                     "</figcaption></figure>")
    for t in rep.tables:
        parts.append(f"<h2>{html.escape(t.title)}</h2><table><tr>"
                     + "".join(f"<th>{html.escape(c)}</th>" for c in t.columns) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r) + "</tr>" for r in t.rows]
        parts.append(f"</table><p><a href='{t.name}.csv'>{t.name}.csv</a> · <a href='{t.name}.md'>{t.name}.md</a></p>")
    parts.append("</body></html>")
    path = rep.out / "index.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _finish(rep: Report) -> Path:
    for t in rep.tables:
        write_table(t, rep.out)
    return write_index(rep)


def _grid(n: int, width: float = 4.2, height: float = 3.4):
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


# -- steering ------------------------------------------------------------------------------------------
def _single(rows: list[dict]) -> list[dict]:
    """Rows of single-value targets (a combo's target reads ``a:2,b:-1``)."""
    return [r for r in rows if "," not in r["target"]]


def steer_report(rows: list[dict], out: Path, job_id: str, model: str, include_refusals: bool = True,
                 rho_min: float = RHO_MIN, delta_min: float = DELTA_MIN) -> Path:
    """Write the steering report of a job's rows (:func:`workers.steering.db.steer_rows`) to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    rep = Report(f"Steering report: job {job_id}, model {model}", out)
    n_ref = sum(bool(r["refusal"]) for r in rows if r["response"] is not None)
    n_gen = len({r["gen_no"] for r in rows if r["response"] is not None})
    rep.notes.append(f"{n_gen} responses; {n_ref} (value, response) rows are refusals, "
                     + ("included in" if include_refusals else "excluded from") + " the intensity figures. "
                     f"Verdicts: easy = Spearman ≥ {rho_min} and |Δ(±2)| ≥ {delta_min}; one-directional = one "
                     f"side ≥ {delta_min}, the other < {delta_min / 2}; hard = otherwise.")
    scored = [r for r in rows if r["intensity"] is not None and (include_refusals or not r["refusal"])]
    single = _single(scored)
    values = list(dict.fromkeys(r["value"] for r in _single(rows)))
    regimes = sorted({r["regime"] for r in rows if r["regime"] != "none"}) or ["persona"]

    # steerability and dose-response tables
    steer_t = Table("steerability", "Steerability per value and regime",
                    ["model", "value", "regime", "n", "delta_-2", "delta_-1", "delta_+1", "delta_+2", "spearman",
                     "abs_delta_+2", "abs_delta_-2", "asymmetry", "verdict"])
    dose_t = Table("dose_response", "Dose–response: mean intensity per level (95 % CI)",
                   ["value", "regime", "level", "n", "mean", "ci_lo", "ci_hi", "delta", "delta_se"])
    per: dict[tuple[str, str], object] = {}
    for v in values:
        base = [r for r in single if r["value"] == v and r["regime"] == "none"]
        for reg in regimes:
            rs = base + [r for r in single if r["value"] == v and r["regime"] == reg]
            if not rs:
                continue
            s = steerability(np.array([r["level"] for r in rs]), np.array([r["intensity"] for r in rs]),
                             rho_min, delta_min)
            per[(v, reg)] = s
            d = s.delta
            steer_t.rows.append([model, v, reg, s.n, d.get(-2), d.get(-1), d.get(1), d.get(2), s.rho,
                                 abs(d[2]) if 2 in d else None, abs(d[-2]) if -2 in d else None, s.asymmetry,
                                 s.verdict])
            for lv in s.levels:
                dose_t.rows.append([v, reg, lv, s.count[lv], s.mean[lv], s.ci[lv][0], s.ci[lv][1], s.delta[lv],
                                    s.delta_se[lv]])
    rep.tables += [steer_t, dose_t]

    if per:
        fig, axes = _grid(len(values))
        for ax, v in zip(axes, values):
            for reg in regimes:
                s = per.get((v, reg))
                if s is None:
                    continue
                lv = np.array(s.levels)
                m = np.array([s.mean[x] for x in lv])
                lo = np.array([s.ci[x][0] for x in lv])
                hi = np.array([s.ci[x][1] for x in lv])
                ax.errorbar(lv, m, yerr=[m - lo, hi - m], marker="o", capsize=4, label=f"{reg} (ρ = {s.rho:+.2f})",
                            color=REGIME_COLORS.get(reg))
                if 0 in s.mean:
                    base_line = s.mean[0]
            if any((v, reg) in per and 0 in per[(v, reg)].mean for reg in regimes):
                ax.axhline(base_line, color="grey", ls="--", lw=1, label="baseline (level 0)")
                ax.plot([0], [base_line], marker="s", color="black", ls="none", ms=8)
            ax.set_title(v)
            ax.set_xlabel("target level")
            ax.set_ylabel("achieved intensity (mean, 95 % CI)")
            ax.set_xticks([-2, -1, 0, 1, 2])
            ax.set_ylim(-10.5, 10.5)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, loc="upper left")
        fig.suptitle(f"Dose–response of {model}")
        fig.tight_layout()
        fig.savefig(out / "dose_response.png", dpi=110)
        plt.close(fig)
        rep.images.append(("dose_response.png", "Mean achieved intensity per target level, 95 % CIs; dashed: baseline"))

        # heat map of Δ
        lv_cols = [lv for lv in (-2, -1, 1, 2) if any(lv in s.delta for s in per.values())]
        keys = [(v, reg) for v in values for reg in regimes if (v, reg) in per]
        grid = np.array([[per[k].delta.get(lv, np.nan) for lv in lv_cols] for k in keys], dtype=float)
        fig, ax = plt.subplots(figsize=(1.3 * len(lv_cols) + 3.5, 0.45 * len(keys) + 1.8))
        lim = max(1.0, float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0)
        im = ax.imshow(grid, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
        ax.set_xticks(range(len(lv_cols)), [f"{lv:+d}" for lv in lv_cols])
        ax.set_yticks(range(len(keys)), [v if len(regimes) == 1 else f"{v} · {reg}" for v, reg in keys])
        for i in range(len(keys)):
            for j in range(len(lv_cols)):
                if np.isfinite(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:+.1f}", ha="center", va="center", fontsize=8,
                            color="white" if abs(grid[i, j]) > 0.6 * lim else "black")
        ax.set_xlabel("target level")
        ax.set_ylabel("value")
        ax.set_title(f"Δ = mean(level) − mean(baseline), {model}")
        fig.colorbar(im, ax=ax, label="Δ intensity")
        fig.tight_layout()
        fig.savefig(out / "delta_heatmap.png", dpi=110)
        plt.close(fig)
        rep.images.append(("delta_heatmap.png", "Shift from the unsteered baseline, values × levels"))

    # combos
    combos = list(dict.fromkeys(r["target"] for r in rows if "," in r["target"]))
    combo_targets = sorted({c for c in combos if any(r["target"] == c and r["regime"] != "none" for r in rows)})
    if combo_targets:
        comp_t = Table("composition", "Combos: achieved intensity of each value against its target",
                       ["combo", "regime", "value", "target_level", "n", "mean", "ci_lo", "ci_hi", "baseline_mean",
                        "delta"])
        fig, axes = _grid(len(combo_targets), width=5.0)
        for ax, combo in zip(axes, combo_targets):
            vals = [p.rsplit(":", 1)[0] for p in combo.split(",")]
            base_name = ",".join(f"{v}:0" for v in vals)
            xs = np.arange(len(vals))
            width = 0.8 / (len(regimes) + 1)
            bm = []
            for v in vals:
                b = [r["intensity"] for r in scored if r["target"] == base_name and r["value"] == v]
                bm.append(mean_ci(np.array(b))[0])
            ax.bar(xs - 0.4 + width / 2, bm, width, color="lightgrey", label="baseline")
            combo_regimes = [reg for reg in regimes if any(r["target"] == combo and r["regime"] == reg for r in scored)]
            tg = [next((r["level"] for r in rows if r["target"] == combo and r["value"] == v), 0) for v in vals]
            for ri, reg in enumerate(combo_regimes):
                ms, los, his = [], [], []
                for v, lvl in zip(vals, tg):
                    rs = [r for r in scored if r["target"] == combo and r["value"] == v and r["regime"] == reg]
                    m, lo, hi = mean_ci(np.array([r["intensity"] for r in rs]))
                    ms.append(m); los.append(lo); his.append(hi)  # noqa: E702
                    comp_t.rows.append([combo, reg, v, lvl, len(rs), m, lo, hi, bm[vals.index(v)], m - bm[vals.index(v)]])
                ms_a = np.array(ms)
                x_reg = xs - 0.4 + width * (ri + 1.5)
                ax.bar(x_reg, ms_a, width, yerr=[ms_a - np.array(los), np.array(his) - ms_a],
                       capsize=3, color=REGIME_COLORS.get(reg), label=f"steered together ({reg})")
                # reference: the same value steered alone to the same level, when the job has it
                alone = [per[(v, reg)].mean.get(lvl, np.nan) if (v, reg) in per else np.nan for v, lvl in zip(vals, tg)]
                if np.isfinite(alone).any():
                    ax.plot(x_reg, alone, marker="D", ls="none", color="black", ms=6,
                            label=f"steered alone ({reg})" if ri == 0 else None)
            ax.set_xticks(xs, [f"{v}\n(target {lv:+d})" for v, lv in zip(vals, tg)], fontsize=8)
            ax.axhline(0, color="grey", lw=0.8)
            ax.set_ylim(-10.5, 10.5)
            ax.set_ylabel("achieved intensity")
            ax.set_title(combo, fontsize=9)
            ax.legend(fontsize=7)
        fig.suptitle(f"Multi-value combos, {model}")
        fig.tight_layout()
        fig.savefig(out / "composition.png", dpi=110)
        plt.close(fig)
        rep.images.append(("composition.png", "Each value of a combo: achieved intensity against its target"))
        rep.tables.append(comp_t)

    # refusals (always over every response)
    ref_t = Table("refusals", "Refusal rates", ["target", "regime", "level", "responses", "refusals", "rate"])
    groups: dict[tuple, list[bool]] = {}
    seen: set[tuple] = set()
    for r in rows:
        if r["response"] is None or (r["gen_no"], r["target"]) in seen:
            continue
        seen.add((r["gen_no"], r["target"]))
        lvl = r["level"] if "," not in r["target"] else r["target"].split(",")[0].rsplit(":", 1)[1]
        groups.setdefault((r["target"], r["regime"], int(lvl)), []).append(bool(r["refusal"]))
    for (t, reg, lv), flags in sorted(groups.items(), key=lambda x: (x[0][0], x[0][1], x[0][2])):
        ref_t.rows.append([t, reg, lv, len(flags), sum(flags), sum(flags) / len(flags)])
    rep.tables.append(ref_t)
    by_level: dict[tuple[str, int], list[bool]] = {}
    for (t, reg, lv), flags in groups.items():
        if "," in t:
            continue
        for reg_ in (regimes if reg == "none" else [reg]):
            by_level.setdefault((reg_, lv), []).extend(flags)
    if by_level:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for reg in regimes:
            lvs = sorted(lv for r_, lv in by_level if r_ == reg)
            ax.plot(lvs, [100 * np.mean(by_level[(reg, lv)]) for lv in lvs], marker="o", label=reg,
                    color=REGIME_COLORS.get(reg))
        ax.set_xticks([-2, -1, 0, 1, 2])
        ax.set_ylim(-5, 105)
        ax.set_xlabel("target level")
        ax.set_ylabel("refusals (% of responses)")
        ax.set_title(f"Refusal rate per level, {model}")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "refusals.png", dpi=110)
        plt.close(fig)
        rep.images.append(("refusals.png", "Share of responses detected as refusals"))
    return _finish(rep)


# -- scoring -------------------------------------------------------------------------------------------
def score_report(rows: list[dict], out: Path, job_id: str, judge: str) -> Path:
    """Intensity histograms per value and a summary table of a scoring job's scores."""
    out.mkdir(parents=True, exist_ok=True)
    rep = Report(f"Scoring report: job {job_id}, judge {judge}", out)
    values = list(dict.fromkeys(r["value"] for r in rows))
    summ = Table("summary", "Scores per value",
                 ["value", "texts", "scored", "mean", "sd", "median", "min", "max", "windows_failed"])
    fig, axes = _grid(max(1, len(values)))
    for ax, v in zip(axes, values):
        rs = [r for r in rows if r["value"] == v]
        y = np.array([r["intensity"] for r in rs if r["intensity"] is not None], dtype=float)
        summ.rows.append([v, len(rs), len(y), float(y.mean()) if len(y) else None,
                          float(y.std(ddof=1)) if len(y) > 1 else None, float(np.median(y)) if len(y) else None,
                          float(y.min()) if len(y) else None, float(y.max()) if len(y) else None,
                          sum(int(r["windows_failed"] or 0) for r in rs)])
        ax.hist(y, bins=np.linspace(-10, 10, 21), color="tab:blue", edgecolor="white", label=f"{len(y)} texts")
        if len(y):
            ax.axvline(float(y.mean()), color="black", ls="--", lw=1, label=f"mean {y.mean():+.2f}")
        ax.set_title(v)
        ax.set_xlabel("intensity")
        ax.set_ylabel("texts")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts
        ax.set_xlim(-10, 10)
        ax.set_xticks(range(-10, 11, 5))
        ax.legend(fontsize=8)
    fig.suptitle(f"Intensity per value, judge {judge}")
    fig.tight_layout()
    fig.savefig(out / "histograms.png", dpi=110)
    plt.close(fig)
    rep.images.append(("histograms.png", "Histogram of intensities per value; dashed: mean"))
    rep.tables.append(summ)
    return _finish(rep)
