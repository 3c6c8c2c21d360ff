"""The scoring library path (plan → judge → anchored PL) without queue or database, both modes."""

import json

import numpy as np
import pytest
from scipy.stats import spearmanr

from scheduler.inprocess import score_texts_sync
from schemas.taxonomy import default_taxonomy
from tests.conftest import shared_data


@pytest.mark.parametrize("mode", ["upstream", "calibrated"])
def test_in_process_scoring_orders_sample_texts(embedding_judge, mode):
    sample = json.loads((shared_data() / "vidb-sample" / "mft.json").read_text())["care-harm"]
    items = [x for b in sample.values() for x in b]
    rows = score_texts_sync([x["text"] for x in items], [default_taxonomy().get("care-harm")], embedding_judge,
                            mode=mode, seed=3)
    assert len(rows) == len(items)
    inten = np.array([r[4] for r in rows])
    se = np.array([r[5] for r in rows])
    assert np.all((inten >= -10) & (inten <= 10)) and np.all(se > 0) and all(r[6] == 3 for r in rows)
    # measured 0.357 (upstream) and 0.423 (calibrated) on these 12 texts: the bar catches a judge or
    # plan that stops ordering them (the 384-text figures: benchmarks/evaluator_agreement.py, README)
    assert spearmanr(inten, [x["intensity"] for x in items])[0] >= 0.3


def test_same_seed_same_plan_same_scores(embedding_judge):
    texts = ["I shared my lunch with a hungry classmate.", "I pushed my brother off his bike."]
    v = [default_taxonomy().get("benevolence")]
    a = score_texts_sync(texts, v, embedding_judge, seed=11)
    b = score_texts_sync(texts, v, embedding_judge, seed=11)
    assert a == b
