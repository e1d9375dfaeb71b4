"""Trees as flat `{path string: leaf}` dicts, and the structural check every loader shares.

`flatten(tree)` keys leaves by paths such as `params/lstm/kernel`; `check_tree(expected, found)`
raises a ValueError naming the first mismatching path and both shapes; `unflatten(like, flat)`
rebuilds `like`'s structure. Used by checkpoints and params files (`jaxseq.checkpointing`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _entry(key) -> str:
    for attr in ("key", "name", "idx"):  # DictKey / FlattenedIndexKey, GetAttrKey, SequenceKey
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)  # pragma: no cover - custom key types


def path_str(path) -> str:
    """A tree path as `params/lstm/kernel` (dict keys, attribute names and indices, joined)."""
    return "/".join(_entry(k) for k in path)


def flatten(tree, prefix: str = "") -> dict[str, Any]:
    """{path string: leaf} in tree order; raises if two leaves share a path string."""
    flat: dict[str, Any] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = prefix + path_str(path)
        if name in flat:
            raise ValueError(f"Two leaves share the path {name!r}; rename one to save the tree.")
        flat[name] = leaf
    return flat


def _spec(leaf) -> tuple[tuple[int, ...], str]:
    return tuple(np.shape(leaf)), np.dtype(getattr(leaf, "dtype", np.asarray(leaf).dtype)).name


def check_tree(expected: Mapping[str, Any], found: Mapping[str, Any], *, where: str,
               ignore_extra: tuple[str, ...] = ()) -> None:
    """Raise unless `found` has exactly the paths, shapes and dtypes of `expected`.

    Both map path strings to arrays or to objects with `.shape` and `.dtype` (orbax metadata).
    The message names the first mismatching path (in the expected tree's order; extra paths
    after the expected ones of their section) with both shapes. Paths of `found` starting with
    one of `ignore_extra` may be extra.
    """
    problems = []  # (path, what is wrong)
    for name, leaf in expected.items():
        want = _spec(leaf)
        if name not in found:
            problems.append((name, f"the model has shape {want[0]} {want[1]}, the file has no "
                                   "such entry"))
        elif _spec(found[name]) != want:
            got = _spec(found[name])
            problems.append((name, f"the file has shape {got[0]} {got[1]}, the model has shape "
                                   f"{want[0]} {want[1]}"))
    for name, leaf in found.items():
        if name not in expected and not name.startswith(ignore_extra):
            got = _spec(leaf)
            problems.append((name, f"the file has shape {got[0]} {got[1]}, the model has no "
                                   "such entry"))
    # "First" in the model's order: its top-level sections (params before opt_state), then its
    # leaves, then extra paths by name.
    index = {name: i for i, name in enumerate(expected)}
    sections = list(dict.fromkeys(name.split("/")[0] for name in expected))

    def order(problem):
        name, head = problem[0], problem[0].split("/")[0]
        rank = sections.index(head) if head in sections else len(sections)
        return rank, index.get(name, len(index)), name

    problems = [f"{name}: {what}" for name, what in sorted(problems, key=order)]
    if problems:
        more = f" ({len(problems) - 1} more mismatch(es))" if len(problems) > 1 else ""
        raise ValueError(
            f"{where}: the saved tree does not match the model; first mismatch at "
            f"{problems[0]}{more}. Nothing was restored. Build the model (units, layers, "
            "optimizer) exactly as the one that was saved."
        )


def unflatten(like, flat: Mapping[str, Any], prefix: str = ""):
    """The tree `like` with its leaves replaced by `flat[path]` (as jax arrays)."""
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
    leaves = [jnp.asarray(flat[prefix + path_str(p)]) for p, _ in paths_leaves]
    return jax.tree_util.tree_unflatten(treedef, leaves)
