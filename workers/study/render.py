"""The stability study's report as a table (CSV rows, Markdown) and a figure (PNG)."""

from __future__ import annotations

import csv
from pathlib import Path

# metric → (label, better: "lower" | "higher")
ROWS = {
    "mean_variance": ("mean variance per text", "lower"),
    "max_range": ("max range over runs", "lower"),
    "sign_flip_rate": ("sign-flip rate", "lower"),
    "prompt_sensitivity": ("prompt sensitivity (variance across paraphrases)", "lower"),
    "seed_sensitivity": ("seed sensitivity (variance across repeats)", "lower"),
    "sign_accuracy": ("sign accuracy", "higher"),
    "pairwise_accuracy": ("pairwise accuracy", "higher"),
    "unscored_share": ("unscored share", "lower"),
}
CSV_COLUMNS = ["metric", "label", "rating", "ranking", "better"]


def _better(a, b, direction: str) -> str:
    if a is None or b is None:
        return "n/a"
    if abs(a - b) <= 1e-12:
        return "tie"
    return ("ranking" if b < a else "rating") if direction == "lower" else ("ranking" if b > a else "rating")


def table_rows(report: dict) -> list[dict]:
    """One row per figure: rating and ranking side by side, which one is better; then ranking's
    win rate and the position bias (ranking only)."""
    rows = []
    for key, (label, direction) in ROWS.items():
        a, b = report["rating"].get(key), report["ranking"].get(key)
        rows.append({"metric": key, "label": label, "rating": a, "ranking": b, "better": _better(a, b, direction)})
    wr = report.get("ranking_win_rate")
    rows.append({"metric": "ranking_win_rate", "label": "ranking's win rate (texts more stable under ranking)",
                 "rating": None if wr is None else 1 - wr, "ranking": wr,
                 "better": "n/a" if wr is None else ("ranking" if wr > 0.5 else "rating" if wr < 0.5 else "tie")})
    for pb in report.get("position_bias", []):
        k = pb["k"]
        rows.append({"metric": f"first_position_win_k{k}",
                     "label": f"position bias: first-shown text ranked first (chance {pb['chance']:.3f}, "
                              f"95% CI {pb['first_position_win_lo']:.3f}–{pb['first_position_win_hi']:.3f})",
                     "rating": None, "ranking": pb["first_position_win"], "better": "n/a"})
        rows.append({"metric": f"last_position_win_k{k}", "label": "position bias: last-shown text ranked first",
                     "rating": None, "ranking": pb["last_position_win"], "better": "n/a"})
        rows.append({"metric": f"position_chi2_p_k{k}",
                     "label": f"position bias: chi-square p-value of first places by position (chi2 {pb['chi2']:.1f})",
                     "rating": None, "ranking": pb["p_value"], "better": "n/a"})
    return rows


def write_csv(path: Path, report: dict) -> None:
    with Path(path).open("w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for r in table_rows(report):
            w.writerow({k: ("" if r[k] is None else r[k]) for k in CSV_COLUMNS})


def _f(x) -> str:
    return "—" if x is None else f"{x:.3f}"


def markdown(report: dict) -> str:
    runs = report["repeats"] * report["paraphrases"]
    head = (f"Stability study: judge `{report['judge']}`, {report['texts']} labelled texts of {report['values']} "
            f"value(s), {report['repeats']} repeat(s) × {report['paraphrases']} paraphrase(s) = {runs} runs per method; "
            f"ranking: k = {report['k']}, {report['windows']} window(s) per text, {report['mode']} mode, shuffled layout.")
    if not report.get("prompted", True):
        head += " This judge has no prompt: paraphrases do not apply to it, and its rating is its probe's prediction."
    lines = [head, "", "| figure | rating | ranking | better |", "|---|---|---|---|"]
    for r in table_rows(report):
        lines.append(f"| {r['label']} | {_f(r['rating'])} | {_f(r['ranking'])} | {r['better']} |")
    for pb in report.get("position_bias", []):
        share = " · ".join(f"{i + 1}: {x:.2f}" for i, x in enumerate(pb["win_share_by_position"]))
        lines += ["", f"Position bias (k = {pb['k']}, {pb['windows']} windows, shuffled layout): share of windows "
                      f"whose text at each shown position was ranked first — {share} (chance {pb['chance']:.2f} each)."]
    return "\n".join(lines) + "\n"


def write_png(path: Path, report: dict) -> None:
    """Left: each text's range of scores over the runs, rating versus ranking. Right: the share
    of windows won by each shown position, against chance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    data = [[x for x in report["per_text"][f"{m}_range"] if x is not None] for m in ("rating", "ranking")]
    ax1.boxplot([d if d else [0.0] for d in data], showmeans=True)
    ax1.set_xticks([1, 2], ["rating", "ranking"])
    ax1.set_ylabel("range of a text's scores over runs")
    ax1.set_title(f"stability ({report['repeats']}×{report['paraphrases']} runs, judge {report['judge']})")
    for pb in report.get("position_bias", [])[:1]:
        k = pb["k"]
        ax2.bar(range(1, k + 1), pb["win_share_by_position"], color="tab:blue")
        ax2.axhline(pb["chance"], color="tab:red", linestyle="--", label=f"chance 1/{k}")
        ax2.set_xlabel("shown position")
        ax2.set_ylabel("share of windows ranked first")
        ax2.set_title(f"position bias ({pb['windows']} windows)")
        ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_all(out_dir: Path, report: dict) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "stability.csv", out_dir / "stability.md", out_dir / "stability.png"]
    write_csv(paths[0], report)
    paths[1].write_text(markdown(report), encoding="utf-8")
    write_png(paths[2], report)
    return paths
