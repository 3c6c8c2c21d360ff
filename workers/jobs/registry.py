"""Every job kind, registered in one place: a new kind is one module here and one line below."""

from __future__ import annotations

from importlib import import_module

from workers.jobs.kind import JobKind

# name → module holding ``KIND``; imported lazily so a worker loads only what it runs
KIND_MODULES = {
    "score": "workers.jobs.kinds.score",
    "steer": "workers.jobs.kinds.steer",
    "vidb-build": "workers.jobs.kinds.vidb_build",
    "vidb-expand": "workers.jobs.kinds.vidb_expand",
    "vidb-audit": "workers.jobs.kinds.vidb_audit",
    "study": "workers.jobs.kinds.study",
}


def get_kind(name: str) -> JobKind:
    try:
        module = KIND_MODULES[name]
    except KeyError:
        raise ValueError(f"unknown job kind {name!r}; known: {', '.join(sorted(KIND_MODULES))}") from None
    return import_module(module).KIND
