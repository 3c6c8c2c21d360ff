"""Reading a ranking out of a judge's free-text or JSON answer.

Accepted, anywhere in the answer: a bracketed integer list (``[3, 1, 2]``, also inside JSON such as
``{"ranking": [3, 1, 2]}``), a chain (``3 > 1 > 2``), one number per line (``3`` / ``Text 3``), or a
bare comma-separated list. The result must be a permutation of 1..k; it is returned 0-based.
:func:`parse_ranking_upstream` is the published evaluator's rule: the first bracketed list of digits
only, which must be a permutation.
"""

from __future__ import annotations

import re


class ParseError(ValueError):
    """No permutation of 1..k could be read; the message says what was found."""


_BRACKET = re.compile(r"\[([^\[\]]*)\]")
_INT = re.compile(r"-?\d+")
_CHAIN = re.compile(r"(?:text\s*)?\d+(?:\s*(?:>|≻|>>)\s*(?:text\s*)?\d+)+", re.IGNORECASE)
_LINE = re.compile(r"^\s*(?:[-*•]\s*)?(?:(?:rank\s*)?\d+\s*[.):]\s*)?(?:text\s*)?#?(\d+)\s*[.,;]?\s*$", re.IGNORECASE)


def _perm(nums: list[int], k: int) -> list[int] | None:
    if len(nums) == k and sorted(nums) == list(range(1, k + 1)):
        return [n - 1 for n in nums]
    return None


def parse_ranking(answer: str, k: int) -> list[int]:
    """Return the 0-based order (most supporting first) or raise :class:`ParseError`."""
    if not answer or not answer.strip():
        raise ParseError("empty answer")
    found: list[list[int]] = []
    for m in _BRACKET.finditer(answer):
        nums = [int(x) for x in _INT.findall(m.group(1))]
        if nums and _INT.sub("", m.group(1)).strip(" ,;\n\t") == "":
            if (p := _perm(nums, k)) is not None:
                return p
            found.append(nums)
    for m in _CHAIN.finditer(answer):
        nums = [int(x) for x in _INT.findall(m.group(0))]
        if (p := _perm(nums, k)) is not None:
            return p
        found.append(nums)
    lines = [ln for ln in answer.splitlines() if ln.strip()]
    per_line = [_LINE.match(ln) for ln in lines]
    if per_line and all(per_line):
        nums = [int(m.group(1)) for m in per_line]
        if (p := _perm(nums, k)) is not None:
            return p
        found.append(nums)
    stripped = answer.strip().strip(".")
    if re.fullmatch(r"\d+(\s*,\s*\d+)+", stripped):
        nums = [int(x) for x in _INT.findall(stripped)]
        if (p := _perm(nums, k)) is not None:
            return p
        found.append(nums)
    what = f"; lists found: {found[:3]}" if found else ""
    raise ParseError(f"no permutation of 1..{k} in the answer{what}")


_UPSTREAM = re.compile(r"\[([\d,\s]+)\]")


def parse_ranking_upstream(answer: str, k: int) -> list[int]:
    """The published rule: the first ``[`` digits/commas/spaces ``]`` in the answer must be a
    permutation of 1..k (0-based result); anything else raises :class:`ParseError`."""
    m = _UPSTREAM.search(answer or "")
    if m is None:
        raise ParseError("no bracketed list of numbers in the answer")
    try:
        nums = [int(x) for x in m.group(1).split(",")]
    except ValueError:
        raise ParseError(f"first bracketed list is not comma-separated integers: [{m.group(1)}]") from None
    if (p := _perm(nums, k)) is None:
        raise ParseError(f"first bracketed list is not a permutation of 1..{k}: {nums}")
    return p
