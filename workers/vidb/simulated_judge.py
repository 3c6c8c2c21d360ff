r"""A simulated judge for tests and benchmarks: Plackett–Luce answers around hidden true utilities.

A text carries its true utility as a tag ``[u=<float>]`` (see :func:`tag`). The judge ranks a window
by :math:`\beta u_i + G_i` with Gumbel noise :math:`G_i`, which is exactly a Plackett–Luce draw with
utilities :math:`\beta u`; β is the judge's sharpness. The noise is seeded by the judge's seed and
the window's texts, so the same window always gets the same answer (reruns, redeliveries and a
second database agree), and any worker process builds the same judge from its name:
``simulated`` or ``simulated:beta=2:seed=7`` (colons, so a comma-separated panel can name several).
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

from schemas.messages import Ranking
from schemas.taxonomy import Value
from workers.judges.base import Judge
from workers.judges.config import JudgeConfig

PREFIX = "simulated"
_TAG = re.compile(r"\[u=([-+0-9.eE]+)\]")


def is_simulated(name: str) -> bool:
    return name == PREFIX or name.startswith(PREFIX + ":")


def tag(body: str, utility: float) -> str:
    """A text body carrying its hidden utility."""
    return f"{body} [u={utility:.6f}]"


def true_utility(text: str) -> float:
    m = _TAG.search(text)
    if m is None:
        raise ValueError(f"simulated judge: text has no [u=...] tag: {text[:60]!r}")
    return float(m.group(1))


def parse_name(name: str) -> tuple[float, int]:
    """``simulated[:beta=B][:seed=S]`` → (β, seed)."""
    if not is_simulated(name):
        raise ValueError(f"not a simulated judge name: {name!r}")
    beta, seed = 1.0, 0
    rest = name[len(PREFIX) + 1:] if ":" in name else ""
    for part in filter(None, rest.split(":")):
        key, _, val = part.partition("=")
        try:
            if key == "beta":
                beta = float(val)
            elif key == "seed":
                seed = int(val)
            else:
                raise ValueError
        except ValueError:
            raise ValueError(f"judge {name!r}: expected simulated:beta=<float>:seed=<int>, got {part!r}") from None
    return beta, seed


class SimulatedJudge(Judge):
    def __init__(self, name: str = PREFIX):
        super().__init__(JudgeConfig(name=name, kind="embedding", model="simulated"))
        self.beta, self.seed = parse_name(name)
        self.calls = 0

    def _rng(self, texts: list[str]) -> np.random.Generator:
        h = hashlib.sha256((str(self.seed) + "\x00" + "\x00".join(texts)).encode()).digest()
        return np.random.default_rng(int.from_bytes(h[:8], "little"))

    def order(self, texts: list[str]) -> list[int]:
        u = np.array([true_utility(t) for t in texts])
        g = self.beta * u + self._rng(texts).gumbel(size=len(u))
        return [int(i) for i in np.argsort(-g, kind="stable")]

    async def rank_shown(self, value: Value, windows: list[list[str]]) -> list[Ranking]:
        self.calls += len(windows)
        return [Ranking(order=self.order(w), attempts=1) for w in windows]


def ensure_judge(resources, name: str) -> None:
    """Put a simulated judge where the shared judge stage looks for it (no config file needed)."""
    if is_simulated(name):
        resources.cached(f"judge:{name}", lambda: SimulatedJudge(name))
