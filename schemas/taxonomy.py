"""The four value theories as a queryable graph.

Each theory is a rooted DAG (Schwartz has nodes with two parents). A node is identified by
``(theory, name)``; names repeat across theories (``tradition`` is in pvq and mft, ``justice`` in
mft and duty), so lookups by bare name resolve to the steerable value when there is one and
otherwise ask for a theory.

The project's own taxonomy lives in ``schemas/data/taxonomy/*.json``; :func:`load_upstream`
reads the upstream format (``{"hierarchy": {parent: [children]}, "definitions": {...}}``) so the
two can be compared edge for edge.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

THEORIES: tuple[str, ...] = ("pvq", "mft", "duty", "right")
DATA_DIR = Path(__file__).parent / "data" / "taxonomy"

# The 32 steerable values, in the order of the upstream README, by their canonical (VIDB) names.
STEERABLE: dict[str, tuple[str, ...]] = {
    "pvq": ("benevolence", "universalism", "self-direction", "stimulation", "hedonism", "achievement",
            "power", "conformity", "tradition", "security", "face", "humility"),
    "mft": ("care-harm", "fairness-cheating", "loyalty-betrayal", "authority-subversion",
            "sanctity-degradation", "liberty-oppression"),
    "duty": ("fidelity", "reparation", "gratitude", "justice", "beneficence", "self-improvement",
             "non-maleficence"),
    "right": ("civil_rights", "political_rights", "economic_rights", "social_rights", "cultural_rights",
              "national_solidarity_rights", "social_group_solidarity_rights"),
}


class UnknownValueError(KeyError):
    """A value name that is not in the taxonomy; the message lists the closest known names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def normalize(name: str) -> str:
    """Folding used for lookups: case, and the separators ``/ _ space -`` are not significant."""
    return re.sub(r"[\s/_\-]+", "-", name.strip().lower())


@dataclass(frozen=True)
class Value:
    theory: str
    name: str  # the node name as in the taxonomy (``care/harm``)
    definition: str
    parents: tuple[str, ...]
    children: tuple[str, ...]
    steerable_name: str | None = None  # canonical VIDB name (``care-harm``) when steerable

    @property
    def key(self) -> str:
        """Stable identifier used in the store and in files: steerable name, else the node name."""
        return self.steerable_name or self.name

    @property
    def steerable(self) -> bool:
        return self.steerable_name is not None


@dataclass
class Theory:
    name: str
    label: str
    top: str
    hierarchy: dict[str, list[str]]
    definitions: dict[str, str]
    aliases: dict[str, str] = field(default_factory=dict)

    def parents_of(self, node: str) -> list[str]:
        return [p for p, kids in self.hierarchy.items() if node in kids]

    def nodes(self) -> set[str]:
        out = set(self.hierarchy)
        for kids in self.hierarchy.values():
            out.update(kids)
        return out

    def edges(self) -> set[tuple[str, str]]:
        return {(p, c) for p, kids in self.hierarchy.items() for c in kids}


def _read_theory(path: Path) -> Theory:
    raw = json.loads(path.read_text())
    hierarchy = raw["hierarchy"]
    children = {c for kids in hierarchy.values() for c in kids}
    tops = [n for n in hierarchy if n not in children]
    if len(tops) != 1:
        raise ValueError(f"{path}: expected one top node, found {tops}")
    return Theory(
        name=raw.get("theory", path.stem),
        label=raw.get("label", path.stem),
        top=tops[0],
        hierarchy={p: list(k) for p, k in hierarchy.items()},
        definitions=dict(raw.get("definitions", {})),
        aliases=dict(raw.get("aliases", {})),
    )


def load_upstream(directory: str | Path) -> dict[str, Theory]:
    """Read ``{pvq,mft,duty,right}.json`` in the upstream format from ``directory``."""
    directory = Path(directory)
    return {t: _read_theory(directory / f"{t}.json") for t in THEORIES}


class Taxonomy:
    """Lookup API over the four theories."""

    def __init__(self, theories: dict[str, Theory]):
        self.theories = theories
        self._nodes: dict[tuple[str, str], Value] = {}
        self._by_norm: dict[str, list[tuple[str, str]]] = {}
        for t, th in theories.items():
            steer = {normalize(s): s for s in STEERABLE.get(t, ())}
            for node in sorted(th.nodes()):
                if node == th.top and node == "root":
                    continue
                value = Value(
                    theory=t,
                    name=node,
                    definition=th.definitions.get(node, ""),
                    parents=tuple(p for p in th.parents_of(node) if p != "root"),
                    children=tuple(th.hierarchy.get(node, ())),
                    steerable_name=steer.get(normalize(node)),
                )
                self._nodes[(t, node)] = value
                self._by_norm.setdefault(normalize(node), []).append((t, node))
            for alias, target in th.aliases.items():
                self._by_norm.setdefault(normalize(alias), []).append((t, target))

    # -- lookups ---------------------------------------------------------------------------------
    def get(self, name: str, theory: str | None = None) -> Value:
        """Find a value by name (any separator or case; ``theory::name`` qualifies it)."""
        if "::" in name and theory is None:
            theory, name = name.split("::", 1)
        if theory is not None and theory not in self.theories:
            raise UnknownValueError(f"unknown theory {theory!r}; known: {', '.join(THEORIES)}")
        hits = [h for h in self._by_norm.get(normalize(name), []) if theory is None or h[0] == theory]
        if not hits:
            raise UnknownValueError(self._unknown_message(name, theory))
        if len(hits) > 1:
            steer = [h for h in hits if self._nodes[h].steerable]
            if len(steer) != 1:
                options = ", ".join(f"{t}::{n}" for t, n in hits)
                raise UnknownValueError(f"value {name!r} is ambiguous; qualify it as one of: {options}")
            hits = steer
        return self._nodes[hits[0]]

    def _unknown_message(self, name: str, theory: str | None) -> str:
        pool = {n for (t, _), v in self._nodes.items() if theory in (None, t) for n in (v.name, v.key)}
        close = difflib.get_close_matches(name, sorted(pool), n=5, cutoff=0.5)
        if not close:
            close = difflib.get_close_matches(normalize(name), sorted(pool), n=5, cutoff=0.4)
        scope = f" in theory {theory!r}" if theory else ""
        hint = f"; closest known: {', '.join(close)}" if close else ""
        return f"unknown value {name!r}{scope}{hint}"

    def ancestors(self, name: str, theory: str | None = None) -> list[str]:
        """All ancestors (nearest first, breadth-first), excluding the synthetic ``root``."""
        v = self.get(name, theory)
        th = self.theories[v.theory]
        seen: list[str] = []
        frontier = list(v.parents)
        while frontier:
            nxt: list[str] = []
            for p in frontier:
                if p not in seen and p != "root":
                    seen.append(p)
                    nxt.extend(th.parents_of(p))
            frontier = nxt
        return seen

    def paths(self, name: str, theory: str | None = None) -> list[tuple[str, ...]]:
        """Every top-down path from the theory's first level to the value (a DAG may give several)."""
        v = self.get(name, theory)
        th = self.theories[v.theory]

        def up(node: str) -> list[tuple[str, ...]]:
            parents = [p for p in th.parents_of(node) if p != "root"]
            if not parents:
                return [(node,)]
            return [path + (node,) for p in parents for path in up(p)]

        return up(v.name)

    def path(self, name: str, theory: str | None = None) -> tuple[str, ...]:
        """The first top-down path (deterministic: parents in file order)."""
        return self.paths(name, theory)[0]

    def children(self, name: str, theory: str | None = None) -> tuple[str, ...]:
        return self.get(name, theory).children

    def definition(self, name: str, theory: str | None = None) -> str:
        return self.get(name, theory).definition

    def theory_of(self, name: str) -> str:
        return self.get(name).theory

    def steerable(self, theory: str | None = None) -> list[Value]:
        """The steerable values (32 in all), in canonical order."""
        out = []
        for t in THEORIES if theory is None else (theory,):
            if t not in self.theories:
                raise UnknownValueError(f"unknown theory {t!r}; known: {', '.join(THEORIES)}")
            out.extend(self.get(s, t) for s in STEERABLE[t])
        return out

    def values(self) -> list[Value]:
        return list(self._nodes.values())

    def resolve_values(self, names: list[str], theories: list[str] | None = None) -> list[Value]:
        """Expand CLI-style selections (``all``, names, whole theories) into steerable values."""
        out: list[Value] = []
        for n in names:
            if n.strip().lower() == "all":
                out.extend(self.steerable())
            else:
                v = self.get(n)
                if not v.steerable:
                    raise UnknownValueError(
                        f"value {n!r} ({v.theory}) has no VIDB scale; steerable values: "
                        + ", ".join(s.key for s in self.steerable(v.theory)))
                out.append(v)
        for t in theories or []:
            out.extend(self.steerable(t))
        seen: set[str] = set()
        return [v for v in out if not (v.key in seen or seen.add(v.key))]


@lru_cache(maxsize=1)
def default_taxonomy() -> Taxonomy:
    """The project's own taxonomy (shipped with the package)."""
    return Taxonomy(load_upstream(DATA_DIR))
