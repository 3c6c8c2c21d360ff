r"""HiVES training losses (torch). Embeddings are L2-normalised, so :math:`s_{ij}` is a cosine.

**Stage 1 — hierarchical multi-level supervised contrastive loss** (as published). For hierarchy
level :math:`l = 1..L` (coarse to fine) the positives :math:`P_l(i)` of anchor :math:`i` are the
other texts of the batch that share its level-:math:`l` path prefix *and* its direction. With
temperature :math:`\tau` and a penalty :math:`\delta` *subtracted* from the logits of
opposite-direction pairs (they are down-weighted as negatives: a text that opposes a value is not
pushed away from its supporting twin as hard as an unrelated text is),

.. math:: z_{ia} = s_{ia}/\tau - \delta\,[d_i \ne d_a],\qquad
          \mathcal L_l(i) = -\frac{1}{|P_l(i)|}\sum_{p\in P_l(i)}
          \log\frac{e^{s_{ip}/\tau}}{\sum_{a\ne i} e^{z_{ia}}} .

:math:`\mathcal L_l` averages :math:`\mathcal L_l(i)` over anchors with positives. The hierarchy
constraint makes a finer level at least as costly as every coarser one, with the running maximum
of the coarser levels held constant (stop-gradient :math:`\mathrm{sg}`):

.. math:: \tilde{\mathcal L}_l = \max\big(\mathcal L_l,\ \mathrm{sg}(\max_{l'<l}\mathcal L_{l'})\big),
          \qquad \mathcal L_{hier} = \frac{1}{|\Lambda|}\sum_{l\in\Lambda} 2^{1/l}\,\tilde{\mathcal L}_l

over the set :math:`\Lambda` of levels that have positives; a clamped level adds no gradient.

**Stage 2 — multi-positive text-to-text contrastive loss on anchor ids.** Texts that share an
anchor id :math:`y` (individual anchors: a fine-grained value and direction; cross-theory anchor
groups) are each other's positives, every other text of the batch is a negative:

.. math:: \mathcal L_{mp}(i) = -\frac{1}{|P(i)|}\sum_{p\in P(i)}
          \log\frac{e^{s_{ip}/\tau_2}}{\sum_{a\ne i} e^{s_{ia}/\tau_2}},\qquad
          P(i) = \{p \ne i : y_p = y_i\}

averaged over texts with an id and at least one positive. The stage-2 loss is
:math:`\mathcal L_{hier}` on the batch's hierarchical texts
:math:`+\ \lambda_{ind}\,\mathcal L_{mp}(\text{individual ids}) + \lambda_{theory}\,\mathcal L_{mp}(\text{cross-theory ids})`
over the whole batch (τ₂ = 0.07).
"""

from __future__ import annotations

import torch


def _multi_positive(sim: torch.Tensor, pos: torch.Tensor, logit_offset: torch.Tensor | None,
                    tau: float) -> tuple[torch.Tensor, bool]:
    """Mean over anchors with positives of −1/|P(i)| Σ_p log(e^{s_ip/τ} / Σ_{a≠i} e^{s_ia/τ + offset_ia})."""
    n = sim.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=sim.device)
    logits = sim / tau if logit_offset is None else sim / tau + logit_offset
    log_denom = torch.logsumexp(logits.masked_fill(eye, float("-inf")), dim=1, keepdim=True)
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
    """Stage-1 loss :math:`\\mathcal L_{hier}`.

    ``emb``: (n, d) unit vectors; ``level_ids``: (n, L) integer id of each text's path prefix at
    each level (column 0 coarsest); ``direction``: (n,) integer direction label; ``penalty`` is δ,
    subtracted from the logits of opposite-direction pairs.
    """
    sim = emb @ emb.T
    same_dir = direction[:, None] == direction[None, :]
    offset = -penalty * (~same_dir).to(sim.dtype)
    total, used, floor = emb.new_zeros(()), 0, None
    for l in range(level_ids.shape[1]):
        pos = (level_ids[:, l][:, None] == level_ids[:, l][None, :]) & same_dir
        loss, ok = _multi_positive(sim, pos, offset, tau)
        if not ok:
            continue
        clamped = loss if floor is None else torch.maximum(loss, floor)
        floor = loss.detach() if floor is None else torch.maximum(floor, loss.detach())
        total = total + 2.0 ** (1.0 / (l + 1)) * clamped
        used += 1
    return total / max(used, 1)


def anchor_contrastive(emb: torch.Tensor, anchor_ids: torch.Tensor, tau: float = 0.07) -> torch.Tensor:
    """:math:`\\mathcal L_{mp}` over the batch; ``anchor_ids[i] < 0``: text i has no id (a negative only)."""
    sim = emb @ emb.T
    has_id = anchor_ids >= 0
    pos = (anchor_ids[:, None] == anchor_ids[None, :]) & has_id[:, None] & has_id[None, :]
    loss, _ = _multi_positive(sim, pos, None, tau)
    return loss


def stage2_loss(emb: torch.Tensor, n_hier: int, level_ids: torch.Tensor, direction: torch.Tensor,
                individual_ids: torch.Tensor, cross_ids: torch.Tensor, tau1: float = 0.1, penalty: float = 1.0,
                tau2: float = 0.07, lambda_ind: float = 0.5, lambda_theory: float = 1.0) -> torch.Tensor:
    """:math:`\\mathcal L_{hier}` on the first ``n_hier`` texts (``level_ids``/``direction`` are theirs)
    + λ_ind · L_mp(individual ids) + λ_theory · L_mp(cross-theory ids), both over all of ``emb``."""
    loss = hierarchical_supcon(emb[:n_hier], level_ids, direction, tau1, penalty)
    loss = loss + lambda_ind * anchor_contrastive(emb, individual_ids, tau2)
    return loss + lambda_theory * anchor_contrastive(emb, cross_ids, tau2)
