"""Streaming submit and streaming export at scale: peak RSS and seconds of the scheduler's commands.

Run: ``python benchmarks/submit_export.py [--texts 1000000] [--values 3]``.

1. **Submit.** A generated JSONL file of ``--texts`` distinct texts is submitted through the real
   ``valueflow score FILE --value V --judge embedding`` (k = 6, 3 windows) with no worker running:
   read, validated, planned and stored in batches, then made live and every chunk enqueued. The
   command's peak RSS (``wait4``'s ``ru_maxrss`` of that child alone) and wall time are measured,
   and the stored job is checked (items, windows, chunks, queued messages).
2. **Export.** The job gets ``--texts × --values`` score rows written directly in SQL
   (``generate_series``: the judging is not what is measured here), then ``valueflow jobs export
   JOB -o scores.{jsonl,csv,parquet}`` runs once per format, measured the same way; each file is
   read back whole and its rows counted.

Targets (issue 12): submit of 1,000,000 texts × 1 value × 3 windows with peak RSS ≤ 1 GB; export
of 3,000,000 rows with peak RSS ≤ 1 GB. Servers: see :mod:`benchmarks._servers` (a scratch
database is created and dropped; the broker's logical database 1 is flushed before and after).
The last line printed is one JSON object with the figures, the targets and whether each is met.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._servers import BENCH_REDIS, create_db, drop_db, flush_redis, run_measured  # noqa: E402

RSS_TARGET_MB = 1024.0
VALUES = ["benevolence", "care-harm", "fairness-cheating", "fidelity", "universalism"]
WORDS = ["kept", "broke", "shared", "hid", "returned", "took", "forgot", "honoured", "ignored", "defended"]


def write_input(path: Path, n: int) -> None:
    """``n`` distinct short texts as JSONL (ids t0000000…), written with the json module."""
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"t{i:07d}", "text": f"On day {i} I {WORDS[i % 10]} a promise to "
                                                            f"neighbour {i % 977} and friend {i % 131}."}) + "\n")


async def _q(url: str, sql: str, *args):
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


def q(url: str, sql: str, *args):
    return asyncio.run(_q(url, sql, *args))


def fill_scores(url: str, job_id: str, values: list[str]) -> int:
    """One score row per (item, value) of the job, written in SQL."""
    rows = q(url, "WITH ins AS (INSERT INTO scores (job_id, item_no, value, utility, stderr, intensity, intensity_se,"
                  " windows_used, windows_failed, judge)"
                  " SELECT $1, i.item_no, v, (i.item_no % 2001) / 100.0 - 10, 0.5, (i.item_no % 2001) / 100.0 - 10,"
                  " 0.6, 3, 0, 'embedding' FROM job_items i CROSS JOIN unnest($2::text[]) AS v"
                  " WHERE i.job_id = $1 RETURNING 1) SELECT count(*) AS n FROM ins", job_id, values)
    return rows[0]["n"]


def count_rows(path: Path) -> int:
    """Read an export back whole and count its data rows."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        n = 0
        for batch in pf.iter_batches(batch_size=100_000):
            n += batch.num_rows
        return n
    with path.open(encoding="utf-8", newline="") as fh:
        if path.suffix == ".csv":
            reader = csv.reader(fh)
            header = next(reader)
            assert header[:2] == ["id", "value"], header
            return sum(1 for _ in reader)
        n = 0
        for line in fh:
            json.loads(line)
            n += 1
        return n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", type=int, default=1_000_000)
    ap.add_argument("--values", type=int, default=3, help="score rows per text in the export part")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds allowed per command")
    ap.add_argument("--keep", action="store_true", help="keep the scratch database and files")
    args = ap.parse_args()
    values = VALUES[: args.values]
    db_url, db_name = create_db()
    broker = f"{BENCH_REDIS}/1"
    flush_redis(broker)
    tmp = Path(tempfile.mkdtemp(prefix="vf-submit-export-"))
    env = dict(os.environ, VALUEFLOW_DATABASE_URL=db_url, VALUEFLOW_BROKER_URL=broker,
               VALUEFLOW_HOME=str(tmp / "home"), PYTHONUNBUFFERED="1")
    out: dict = {"texts": args.texts}
    try:
        inp = tmp / "texts.jsonl"
        write_input(inp, args.texts)
        out["input_mb"] = round(inp.stat().st_size / 2**20, 1)
        # the schema and the seed VIDB exist before the clock starts (a deployed store has them)
        m = run_measured(["vidb", "stats"], env, 300)
        assert m.rc == 0, m.stderr
        m = run_measured(["score", str(inp), "--value", values[0], "--judge", "embedding"], env, args.timeout)
        assert m.rc == 0, m.stderr[-3000:]
        job_id = m.stdout.strip().splitlines()[-1]
        job = q(db_url, "SELECT state, n_items, n_windows, n_chunks FROM jobs WHERE id = $1", job_id)[0]
        n_windows = q(db_url, "SELECT count(*) AS n FROM windows WHERE job_id = $1", job_id)[0]["n"]
        import redis

        queued = sum(redis.Redis.from_url(broker).llen(qn) for qn in ("gpu", "api", "refit", "default"))
        assert job["state"] == "running" and job["n_items"] == args.texts, dict(job)
        assert n_windows == job["n_windows"] == 3 * args.texts, (n_windows, dict(job))
        assert queued == job["n_chunks"], (queued, job["n_chunks"])
        out["submit"] = {"seconds": round(m.seconds, 1), "peak_rss_mb": round(m.peak_rss_mb, 1),
                         "texts_per_s": round(args.texts / m.seconds), "windows": n_windows,
                         "chunks_enqueued": queued}
        print(f"submit: {args.texts} texts × 1 value × 3 windows in {m.seconds:.1f} s, peak RSS "
              f"{m.peak_rss_mb:.0f} MB, {queued} chunk tasks enqueued", flush=True)
        flush_redis(broker)  # nobody will consume them

        n_scores = fill_scores(db_url, job_id, values)
        out["export_rows"] = n_scores
        out["export"] = {}
        for suffix in ("jsonl", "csv", "parquet"):
            path = tmp / f"scores.{suffix}"
            m = run_measured(["jobs", "export", job_id, "-o", str(path)], env, args.timeout)
            assert m.rc == 0, m.stderr[-3000:]
            rows = count_rows(path)
            assert rows == n_scores, (suffix, rows, n_scores)
            out["export"][suffix] = {"seconds": round(m.seconds, 1), "peak_rss_mb": round(m.peak_rss_mb, 1),
                                     "rows_per_s": round(n_scores / m.seconds), "file_mb": round(path.stat().st_size / 2**20, 1)}
            print(f"export {suffix:8}: {n_scores} rows in {m.seconds:.1f} s, peak RSS {m.peak_rss_mb:.0f} MB, "
                  f"{path.stat().st_size / 2**20:.0f} MB file", flush=True)
            path.unlink()
    finally:
        flush_redis(broker)
        if not args.keep:
            drop_db(db_name)
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept database {db_name} and {tmp}", file=sys.stderr)
    export_peak = max(e["peak_rss_mb"] for e in out["export"].values())
    out["targets"] = {"submit_peak_rss_mb": RSS_TARGET_MB, "export_peak_rss_mb": RSS_TARGET_MB,
                      "submit_texts": 1_000_000, "export_rows": 3_000_000}
    out["met"] = {"submit_rss": out["submit"]["peak_rss_mb"] <= RSS_TARGET_MB,
                  "export_rss": export_peak <= RSS_TARGET_MB,
                  "full_size": args.texts >= 1_000_000 and n_scores >= 3_000_000}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
