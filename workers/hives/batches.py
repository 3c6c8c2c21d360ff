"""HiVES batch composition (as published: stage 1 = 1 + 4 + 27 texts, stage 2 = 32 + 16 + 16).

* **Stage 1** — an anchor text; up to ``positives`` texts that share *all* its hierarchy labels
  (theory, level 1..3) and its direction; ``negatives`` texts of the same theory that do not. Only
  texts with at least one such twin are drawn as anchors.
* **Stage 2** — a stage-1 batch (the hierarchical texts, 1 + 4 + 27 = 32) plus one
  individual-anchor group (up to ``individual`` texts sharing an individual-anchor id) and one
  cross-theory group (up to ``cross`` texts sharing a cross-theory anchor id, drawn so that they
  span at least two theories: texts of two theories always meet). Groups are drawn from texts not
  already in the batch; when fewer texts than asked exist, the group holds all of them.

A batch is a list of row indices with the parts' lengths, so the loss knows which texts are the
hierarchical ones.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from workers.hives.data import Row


@dataclass(frozen=True)
class Batch:
    indices: list[int]
    n_hier: int  # the first n_hier indices are the hierarchical (stage-1 style) texts
    n_individual: int = 0
    n_cross: int = 0


class BatchSampler:
    def __init__(self, rows: list[Row], positives: int = 4, negatives: int = 27, individual: int = 16,
                 cross: int = 16):
        self.rows, self.positives, self.negatives = rows, positives, negatives
        self.individual, self.cross = individual, cross
        self.by_label: dict[tuple, list[int]] = {}
        self.by_theory: dict[str, list[int]] = {}
        self.by_individual: dict[str, list[int]] = {}
        self.by_cross: dict[str, list[int]] = {}
        for i, r in enumerate(rows):
            self.by_label.setdefault(self.label(r), []).append(i)
            self.by_theory.setdefault(r.theory, []).append(i)
            self.by_individual.setdefault(r.individual_anchor, []).append(i)
            if r.cross_anchor:
                self.by_cross.setdefault(r.cross_anchor, []).append(i)
        self.anchors = [i for i, r in enumerate(rows)
                        if len(self.by_label[self.label(r)]) > 1
                        and len(self.by_theory[r.theory]) > len(self.by_label[self.label(r)])]
        if not self.anchors:
            raise ValueError("no text has a twin (same theory, levels and direction) and a same-theory "
                             "negative: stage-1 batches cannot be formed")
        self.individual_ids = sorted(k for k, v in self.by_individual.items() if len(v) > 1)
        self.cross_ids = sorted(k for k, v in self.by_cross.items() if len({rows[i].theory for i in v}) > 1)

    @staticmethod
    def label(r: Row) -> tuple:
        return (r.theory, *r.levels, r.direction)

    def stage1(self, rng: random.Random) -> Batch:
        a = rng.choice(self.anchors)
        lab = self.label(self.rows[a])
        twins = [i for i in self.by_label[lab] if i != a]
        others = [i for i in self.by_theory[self.rows[a].theory] if self.label(self.rows[i]) != lab]
        idx = [a] + rng.sample(twins, min(self.positives, len(twins))) + rng.sample(others, min(self.negatives, len(others)))
        return Batch(idx, len(idx))

    def stage2(self, rng: random.Random) -> Batch:
        if not self.cross_ids:
            raise ValueError("stage 2 needs a cross-theory anchor group with texts of two theories; "
                             "give a cross-anchor table that covers the data, or train with stage2_steps = 0")
        hier = self.stage1(rng).indices
        used = set(hier)
        ind = self._group(rng, self.individual_ids, self.by_individual, self.individual, used)
        used.update(ind)
        cross = self._group(rng, self.cross_ids, self.by_cross, self.cross, used, spread=True)
        return Batch(hier + ind + cross, len(hier), len(ind), len(cross))

    def _group(self, rng: random.Random, ids: list[str], members: dict[str, list[int]], size: int,
               used: set[int], spread: bool = False) -> list[int]:
        """Up to ``size`` unused texts of one id; with ``spread`` the id must still have texts of two
        theories after removing used ones, and one text of each of two theories is taken first."""
        def theories(pool):
            return {self.rows[i].theory for i in pool}

        ok = [k for k in ids if len(free := [i for i in members[k] if i not in used]) > 1
              and (not spread or len(theories(free)) > 1)]
        if not ok:
            return []
        pool = [i for i in members[rng.choice(ok)] if i not in used]
        if not spread:
            return rng.sample(pool, min(size, len(pool)))
        t1, t2 = rng.sample(sorted(theories(pool)), 2)
        first = [rng.choice([i for i in pool if self.rows[i].theory == t]) for t in (t1, t2)]
        rest = [i for i in pool if i not in first]
        return first + rng.sample(rest, min(size - 2, len(rest)))
