#!/usr/bin/env python3
"""Render a kustomization (``deploy/k8s``) to its Kubernetes objects, offline, without kustomize.

``kubectl apply -k deploy/k8s`` is how the tree is deployed; this renderer exists so that tests and
machines without kubectl can produce the same objects. It implements exactly the kustomize features
the tree uses and stops on anything else, so it can never silently differ from kustomize:

* ``resources``: YAML files (several documents each) or folders holding a ``kustomization.yaml``;
* ``namespace``: set as ``metadata.namespace`` of every object (all of ours are namespaced);
* ``configMapGenerator``: ``name`` + ``files`` (``path`` or ``key=path``, inside the folder),
  only with ``options.disableNameSuffixHash: true`` (so no reference needs rewriting);
* ``images``: ``name`` → ``newName`` / ``newTag`` on every container and init container whose
  image is ``name`` (with or without a tag).

Usage: ``python deploy/render_k8s.py deploy/k8s > rendered.yaml``
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

SUPPORTED = {"apiVersion", "kind", "namespace", "resources", "configMapGenerator", "images"}


class KustomizeError(ValueError):
    """The kustomization uses something this renderer does not implement, or is malformed."""


def _load_documents(path: Path) -> list[dict]:
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as exc:
        raise KustomizeError(f"{path}: not valid YAML: {exc}") from None
    for i, d in enumerate(docs):
        if not isinstance(d, dict) or "kind" not in d or "apiVersion" not in d:
            raise KustomizeError(f"{path}: document {i + 1} is not a Kubernetes object (kind/apiVersion)")
    return docs


def _inside(root: Path, rel: str, what: str) -> Path:
    path = (root / rel).resolve()
    if root.resolve() not in path.parents and path != root.resolve():
        raise KustomizeError(f"{root}/kustomization.yaml: {what} {rel!r} is outside the kustomization folder")
    if not path.exists():
        raise KustomizeError(f"{root}/kustomization.yaml: {what} {rel!r} does not exist")
    return path


def _config_map(root: Path, gen: dict) -> dict:
    where = f"{root}/kustomization.yaml: configMapGenerator {gen.get('name')!r}"
    unknown = set(gen) - {"name", "files", "options"}
    if unknown:
        raise KustomizeError(f"{where}: unsupported field(s) {sorted(unknown)}")
    if (gen.get("options") or {}) != {"disableNameSuffixHash": True}:
        raise KustomizeError(f"{where}: only options.disableNameSuffixHash: true is supported")
    data = {}
    for entry in gen.get("files") or []:
        key, sep, rel = entry.partition("=")
        if not sep:
            key, rel = "", key
        path = _inside(root, rel, "file")
        data[key or path.name] = path.read_text()
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data}


def _image_name(ref: str) -> str:
    """``repo/name:tag@digest`` → ``repo/name`` (a registry's ``host:port`` is kept)."""
    ref = ref.split("@", 1)[0]
    head, _, last = ref.rpartition("/")
    last = last.split(":", 1)[0]
    return f"{head}/{last}" if head else last


def _set_images(obj: dict, images: list[dict]) -> None:
    spec = obj.get("spec", {})
    pod = spec.get("template", {}).get("spec") or spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec")
    if not pod:
        return
    for c in pod.get("containers", []) + pod.get("initContainers", []):
        name = _image_name(c.get("image", ""))
        for img in images:
            if img["name"] == name:
                new = img.get("newName", name)
                c["image"] = f"{new}:{img['newTag']}" if "newTag" in img else new


def render(folder: str | Path) -> list[dict]:
    """Every object of the kustomization in ``folder``, in ``resources`` order, then generated ones."""
    root = Path(folder)
    kfile = root / "kustomization.yaml"
    if not kfile.is_file():
        raise KustomizeError(f"{root}: no kustomization.yaml")
    k = yaml.safe_load(kfile.read_text()) or {}
    unknown = set(k) - SUPPORTED
    if unknown:
        raise KustomizeError(f"{kfile}: field(s) {sorted(unknown)} not supported by this renderer")
    if k.get("kind", "Kustomization") != "Kustomization":
        raise KustomizeError(f"{kfile}: kind must be Kustomization")
    objects: list[dict] = []
    for rel in k.get("resources") or []:
        path = _inside(root, rel, "resource")
        objects.extend(render(path) if path.is_dir() else _load_documents(path))
    objects.extend(_config_map(root, g) for g in k.get("configMapGenerator") or [])
    for img in k.get("images") or []:
        if set(img) - {"name", "newName", "newTag"} or "name" not in img:
            raise KustomizeError(f"{kfile}: images entry {img!r}: only name, newName, newTag are supported")
        if "newTag" in img and not isinstance(img["newTag"], str):
            raise KustomizeError(f"{kfile}: images entry {img['name']!r}: newTag must be a string (quote it)")
    for obj in objects:
        _set_images(obj, k.get("images") or [])
        if k.get("namespace"):
            obj.setdefault("metadata", {})["namespace"] = k["namespace"]
    return objects


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    try:
        objects = render(argv[0])
    except KustomizeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False, explicit_start=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
