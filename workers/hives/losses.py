r"""HiVES training losses (torch). Embeddings are L2-normalised, so :math:`s_{ij}` is a cosine.

**Stage 1 — hierarchical multi-level supervised contrastive loss.** For hierarchy level
:math:`l = 1..L` (coarse to fine) the positives of anchor :math:`i` are the other texts of the
batch that share its level-:math:`l` path prefix *and* its direction. With temperature
:math:`\tau` and an additive penalty :math:`\delta` on the logits of opposite-direction pairs
(they weigh more in the denominator, so texts that oppose a value are pushed away from texts that
support it),

.. math:: z_{ia} = s_{ia}/\tau + \delta\,[d_i \ne d_a],\qquad
          \mathcal L_l(i) = -\frac{1}{|P_l(i)|}\sum_{p\in P_l(i)}
          \log\frac{e^{s_{ip}/\tau}}{\sum_{a\ne i} e^{z_{ia}}} .

:math:`\mathcal L_l` averages :math:`\mathcal L_l(i)` over anchors with positives. The hierarchy
constraint makes a finer level at least as costly as every coarser one,
:math:`\tilde{\mathcal L}_l = \max(\mathcal L_l, \tilde{\mathcal L}_{l-1})`, and the loss is
:math:`\frac{1}{|\Lambda|}\sum_{l\in\Lambda} 2^{1/l}\,\tilde{\mathcal L}_l` over the set
:math:`\Lambda` of levels that have positives.

**Stage 2 — concept anchors.** InfoNCE between each text and its anchor embedding against the
other anchors present in the batch (real negatives only):
:math:`-\log\frac{e^{s(x_i,c_{y_i})/\tau}}{\sum_{c\in C_{batch}} e^{s(x_i,c)/\tau}}`, once for
individual (per value and direction) anchors and once for cross-theory anchors, weighted
:math:`\lambda_{ind}` and :math:`\lambda_{theory}` (τ = 0.07).
"""

from __future__ import annotations

import torch


def _level_loss(sim: torch.Tensor, pos: torch.Tensor, opposite: torch.Tensor, tau: float,
                penalty: float) -> tuple[torch.Tensor, bool]:
    n = sim.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=sim.device)
    logits = sim / tau + penalty * opposite.to(sim.dtype)
    logits = logits.masked_fill(eye, float("-inf"))
    log_denom = torch.logsumexp(logits, dim=1, keepdim=True)
    log_prob = sim / tau - log_denom
    pos = pos & ~eye
    counts = pos.sum(dim=1)
    has = counts > 0
    if not bool(has.any()):
        return sim.new_zeros(()), False
    per_anchor = -(log_prob * pos).sum(dim=1)[has] / counts[has]
    return per_anchor.mean(), True


def hierarchical_supcon(emb: torch.Tensor, level_ids: torch.Tensor, direction: torch.Tensor,
                        tau: float = 0.1, penalty: float = 1.0) -> torch.Tensor:
    """Stage-1 loss.

    ``emb``: (n, d) unit vectors; ``level_ids``: (n, L) integer id of each text's path prefix at
    each level (column 0 coarsest); ``direction``: (n,) integer direction label.
    """
    sim = emb @ emb.T
    same_dir = direction[:, None] == direction[None, :]
    opposite = ~same_dir
    total, used, floor = emb.new_zeros(()), 0, None
    for l in range(level_ids.shape[1]):
        pos = (level_ids[:, l][:, None] == level_ids[:, l][None, :]) & same_dir
        loss, ok = _level_loss(sim, pos, opposite, tau, penalty)
        if not ok:
            continue
        if floor is not None:
            loss = torch.maximum(loss, floor)
        floor = loss
        total = total + 2.0 ** (1.0 / (l + 1)) * loss
        used += 1
    return total / max(used, 1)


def anchor_infonce(emb: torch.Tensor, anchor_emb: torch.Tensor, target: torch.Tensor, tau: float = 0.07) -> torch.Tensor:
    """InfoNCE of texts against the batch's anchors; ``target[i]`` indexes ``anchor_emb`` (−1: skip)."""
    keep = target >= 0
    if not bool(keep.any()):
        return emb.new_zeros(())
    logits = emb[keep] @ anchor_emb.T / tau
    return torch.nn.functional.cross_entropy(logits, target[keep])


def stage2_loss(emb, level_ids, direction, ind_emb, ind_target, cross_emb, cross_target, tau1: float = 0.1,
                penalty: float = 1.0, tau2: float = 0.07, lambda_ind: float = 0.5, lambda_theory: float = 1.0):
    """Stage 1 plus λ_ind · InfoNCE(individual anchors) + λ_theory · InfoNCE(cross-theory anchors)."""
    loss = hierarchical_supcon(emb, level_ids, direction, tau1, penalty)
    loss = loss + lambda_ind * anchor_infonce(emb, ind_emb, ind_target, tau2)
    if cross_emb is not None and cross_emb.shape[0] > 1:
        loss = loss + lambda_theory * anchor_infonce(emb, cross_emb, cross_target, tau2)
    return loss
