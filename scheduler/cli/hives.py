"""``valueflow hives``: train, evaluate and use the hierarchical value embedding space."""

from __future__ import annotations

import json
from pathlib import Path

import click

from scheduler.cli.common import ID_FIELD_HELP


def _rows(data: Path | None, vidb_json_dir: Path | None, cross: Path | None):
    from workers.hives.data import read_rows, seed_rows, vidb_sample_rows

    try:
        if data is not None:
            return read_rows(data, cross)
        if vidb_json_dir is not None:
            return vidb_sample_rows(vidb_json_dir, cross)
        return seed_rows(cross)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


def _encoder(model: str | None):
    """The HiVES encoder at ``model`` (a path or a local model name; None: the default), or a
    one-line error naming it."""
    from workers.hives.encoder import Encoder

    try:
        return Encoder(model)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


def _texts(path: Path, text_field: str, id_field: str | None = None) -> tuple[list[str], list[str]]:
    from workers.io.inputs import InputError, read_inputs

    try:
        rows = read_inputs(path, id_field, text_field)
    except InputError as exc:
        raise click.ClickException(str(exc)) from None
    return [r.ext_id for r in rows], [r.text for r in rows]


@click.group()
def hives() -> None:
    """HiVES: hierarchical value embeddings."""


@hives.command("train")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(path_type=Path), help="checkpoint directory")
@click.option("--data", type=click.Path(exists=True, path_type=Path), help="rows CSV/JSONL (text,value,direction); default: the seed VIDB")
@click.option("--vidb-json", type=click.Path(exists=True, file_okay=False, path_type=Path), help="build rows from few-shot VIDB JSON files")
@click.option("--cross-anchors", type=click.Path(exists=True, path_type=Path), help="cross-theory anchor table (CSV)")
@click.option("--base-model", default=None, help="HF model name or path [default: all-MiniLM-L6-v2 offline]")
@click.option("--stage1-steps", type=int, help="[default: TrainConfig, 60]")
@click.option("--stage2-steps", type=int, help="[default: TrainConfig, 40]")
@click.option("--lr", type=float, help="[default: TrainConfig, 2e-5]")
@click.option("--seed", type=int, help="[default: 0]")
@click.option("--device", default=None, help="cuda / cpu [default: cuda when available]")
@click.option("--resume", type=click.Path(exists=True, file_okay=False, path_type=Path), help="continue from a checkpoint")
def hives_train(out_dir, data, vidb_json, cross_anchors, base_model, stage1_steps, stage2_steps, lr, seed, device, resume):
    """Two-stage fine-tuning (hierarchical SupCon, then multi-positive contrastive on anchor ids)."""
    from workers.hives.train import TrainConfig, train

    rows = _rows(data, vidb_json, cross_anchors)
    given = dict(stage1_steps=stage1_steps, stage2_steps=stage2_steps, lr=lr, seed=seed)
    # unset options fall back to TrainConfig, the one place the defaults live
    cfg = TrainConfig(base_model=base_model, device=device, **{k: v for k, v in given.items() if v is not None})
    try:
        path = train(rows, out_dir, cfg, resume=resume)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"checkpoint written to {path}")


@hives.command("eval")
@click.option("--model", default=None, help="checkpoint dir or HF model [default: the untrained base]")
@click.option("--data", type=click.Path(exists=True, path_type=Path), help="rows CSV/JSONL")
@click.option("--vidb-json", type=click.Path(exists=True, file_okay=False, path_type=Path), help="few-shot VIDB JSON directory")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="write the metrics as JSON")
def hives_eval(model, data, vidb_json, output):
    """Published metrics (strict hierarchical ranking accuracy, similarity correlation, orthogonality)
    and ours (pairwise ranking accuracy, per-theory orthogonality, kNN accuracy)."""
    from workers.hives.evaluate import evaluate

    rows = _rows(data, vidb_json, None)
    enc = _encoder(model)
    metrics = evaluate(enc.encode([r.text for r in rows], progress=True), rows)
    text = json.dumps(metrics, indent=2)
    if output:
        output.write_text(text)
    click.echo(text)


EMBED_PATIENCE_S = 3600.0


def _task_result(task, hint_after_s: float, patience_s: float = EMBED_PATIENCE_S) -> dict:
    """A queued task's result; says once, after ``hint_after_s`` without one, that no worker may be
    consuming the gpu queue; gives up after ``patience_s``. The worker's error in one line."""
    from celery.exceptions import TimeoutError as NoResultYet

    waited, hinted = 0.0, False
    while True:
        step = min(hint_after_s, patience_s - waited) if not hinted else patience_s - waited
        try:
            return task.get(timeout=step)
        except NoResultYet:
            waited += step
            if waited >= patience_s:
                raise click.ClickException(f"no gpu worker answered within {patience_s:.0f} s") from None
            click.echo(f"no answer for {waited:.0f} s: is a worker consuming the gpu queue? (`valueflow worker -Q gpu`;"
                       " `valueflow status` shows the queue's depth; --local-worker runs one here)", err=True)
            hinted = True
        except Exception as exc:  # noqa: BLE001 - the worker's error (re-raised here by Celery), in one line
            raise click.ClickException(f"the gpu worker's embed task failed: {type(exc).__name__}: {exc}") from None


@hives.command("embed")
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("--model", default=None)
@click.option("--text-field", default="text", show_default=True)
@click.option("--id-field", default=None, help=ID_FIELD_HELP + " (the .parquet output's id column)")
@click.option("--queue/--local", "via_queue", default=False, help="run as a task on the gpu queue (cached in the store)")
@click.option("--local-worker/--no-local-worker", default=None,
              help="with --queue: run a worker inside this command [default: on for the embedded default]")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help=".npy or .parquet")
def hives_embed(input_path, model, text_field, id_field, via_queue, local_worker, output):
    """Embed texts (locally, or through a gpu-queue worker with the store's cache)."""
    import numpy as np

    ids, texts = _texts(input_path, text_field, id_field)
    if via_queue:
        from scheduler.cli.common import (celery_app, check_broker, default_local_worker, local_worker_while,
                                          resolve_urls)
        from schemas.settings import load_settings
        from workers.tasks.app import sent_now

        settings = load_settings()
        _, broker = resolve_urls()
        app = celery_app(broker)
        check_broker(app)
        with local_worker_while(default_local_worker(local_worker)):
            task = app.send_task("valueflow.gpu.embed", kwargs={"texts": texts, "model": model}, queue="gpu",
                                 ignore_result=False, headers=sent_now())
            res = _task_result(task, settings.stall_warn_s)
        vecs = np.asarray(res["vectors"], dtype=np.float32)
        click.echo(f"embedded {len(texts)} texts on {res['device']} ({res['computed']} computed, rest cached; "
                   f"{res['threads']} torch threads)", err=True)
    else:
        vecs = _encoder(model).encode(texts, progress=True)
    if output.suffix == ".npy":
        np.save(output, vecs)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"id": ids, "embedding": [v.tolist() for v in vecs]}), output)
    click.echo(f"wrote {vecs.shape} to {output}")


@hives.command("extract")
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("--model", default=None)
@click.option("--top-k", default=3, show_default=True)
@click.option("--text-field", default="text", show_default=True)
@click.option("--id-field", default=None, help=ID_FIELD_HELP)
@click.option("-o", "--output", type=click.Path(path_type=Path), help="JSONL (default: stdout)")
def hives_extract(input_path, model, top_k, text_field, id_field, output):
    """Top-k values per theory for each text, with direction and similarity."""
    from workers.hives.extract import build_prototypes, extract

    ids, texts = _texts(input_path, text_field, id_field)
    enc = _encoder(model)
    res = extract(enc.encode(texts, progress=True), build_prototypes(enc), top_k)
    lines = [json.dumps({"id": i, "values": r}) for i, r in zip(ids, res)]
    if output:
        output.write_text("\n".join(lines) + "\n")
    else:
        click.echo("\n".join(lines))


@hives.command("profile")
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("--model", default=None)
@click.option("--top-k", default=3, show_default=True)
@click.option("--judge", default=None, help="also score the touched values with this judge (in-process evaluator)")
@click.option("--text-field", default="text", show_default=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), help="JSON (default: stdout)")
def hives_profile(input_path, model, top_k, judge, text_field, output):
    """Value profile of a set of texts (a person's or a group's): values touched, direction, strength."""
    from schemas.taxonomy import default_taxonomy
    from workers.hives.extract import build_prototypes, extract, profile

    _, texts = _texts(input_path, text_field)
    enc = _encoder(model)
    ext = extract(enc.encode(texts, progress=True), build_prototypes(enc), top_k)
    scores = None
    if judge:
        from scheduler.inprocess import score_texts_sync
        from workers.judges.config import get_judge_config
        from workers.judges.embedding_judge import EmbeddingJudge
        from workers.judges.registry import make_judge

        cfg = get_judge_config(judge)
        j = EmbeddingJudge(cfg, encoder=enc) if cfg.kind == "embedding" and cfg.encoder == model else make_judge(cfg)
        # score each text only for the values it touches
        touches = [{h["value"] for hits in e.values() for h in hits} for e in ext]
        scores = {}
        for value in profile(ext)["values"]:
            idx = [i for i, t in enumerate(touches) if value in t]
            rows = score_texts_sync([texts[i] for i in idx], [default_taxonomy().get(value)], j)
            scores[value] = [inten for _, _, _, _, inten, _, used, _, _ in rows if used]
    text = json.dumps(profile(ext, scores), indent=2)
    if output:
        output.write_text(text)
    click.echo(text)
