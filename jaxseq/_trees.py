"""Trees as flat `{path string: leaf}` dicts, and the structural check every loader shares.

`flatten(tree)` keys leaves by paths such as `params/lstm/kernel`; `check_tree(expected, found)`
raises a ValueError naming the first mismatching path and both shapes; `unflatten(like, flat)`
rebuilds `like`'s structure. Used by checkpoints and params files (`jaxseq.checkpointing`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
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


def digest(arrays: Mapping[str, Any]) -> str:
    """SHA-256 of a flat {path: array} tree (paths, dtypes, shapes and bytes, in path order):
    stored in a checkpoint's meta record, so that a restore proves its arrays and its record
    come from the same save."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(np.asarray(arrays[name]))
        h.update(f"{name}|{a.dtype.name}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def failure_cause(err: BaseException) -> str:
    """One line for why a write failed (the OS error behind orbax's and tensorstore's texts)."""
    chain, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        chain.append(err)
        err = err.__cause__ or err.__context__
    text = " ".join(str(e) for e in chain)
    for e in chain:
        if isinstance(e, OSError) and e.errno:
            return os.strerror(e.errno).lower()
    if "RESOURCE_EXHAUSTED" in text or "No space left" in text:
        return "no space left on device"
    if "PERMISSION_DENIED" in text or "Permission denied" in text or "Read-only" in text:
        return "permission denied (is the directory read-only?)"
    first = str(chain[0]).strip().splitlines()[0] if str(chain[0]).strip() else ""
    return f"{type(chain[0]).__name__}: {first[:160]}"


# ---------------------------------------------------------------------------------------------
# msgpack files (flax's array encoding: no pickle, no code executed on load)


def host_arrays(tree) -> dict[str, np.ndarray]:
    """{path: NumPy array} of a tree, fetched from the devices."""
    return {k: np.asarray(v) for k, v in jax.device_get(flatten(tree)).items()}


def write_msgpack(path: str, fmt: str, version: int, payload: dict, where: str) -> None:
    """Write `payload` (dicts of numbers, strings, NumPy arrays) to `path` atomically and
    durably (a temporary file beside it, fsync, rename), as a header `{"format", "version",
    "sha256", "payload"}` whose `payload` is the msgpack bytes of `payload` and `sha256` their
    digest (`hashlib`), checked by `read_msgpack`. On any failure the temporary file is removed
    and nothing is left at `path` that was not there before."""
    from flax import serialization

    if os.path.isdir(path):
        raise ValueError(f"{where}: {path!r} is a directory; pass a file path.")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"{where}: the directory {parent!r} of {path!r} does not "
                                "exist; create it first.")
    body = serialization.msgpack_serialize(payload)
    data = serialization.msgpack_serialize({"format": fmt, "version": version,
                                            "sha256": hashlib.sha256(body).hexdigest(),
                                            "payload": body})
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise OSError(err.errno, f"{where} could not write {path!r}: "
                      f"{failure_cause(err)}. Nothing was written.") from err
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def read_msgpack(path: str, fmt: str, what: str) -> tuple[int, dict]:
    """-> (version, payload) of the file `write_msgpack` wrote at `path` with format `fmt`.

    Version 1 files (no digest: the payload's entries sit in the header dict) are returned as
    they are. Anything else (a pickle, a corrupt or foreign file, a payload whose SHA-256 does
    not match the header's) is a ValueError naming `what` the file should be."""
    if os.path.isdir(path):
        raise ValueError(f"{path!r} is a directory, not a jaxseq {what} file.")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"No {what} file at {path!r}.") from None
    content = _restore(data, path, what)
    if not isinstance(content, dict) or content.get("format") != fmt:
        raise ValueError(f"{path!r} is not a jaxseq {what} file (no {fmt!r} header).")
    version = content.get("version")
    if version == 1:
        return 1, content
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"{path!r}: the {what} file's header is corrupt (version {version!r}).")
    body, expected = content.get("payload"), content.get("sha256")
    if not isinstance(body, bytes) or not isinstance(expected, str):
        raise ValueError(f"{path!r}: the {what} file's header is corrupt (no payload digest).")
    if hashlib.sha256(body).hexdigest() != expected:
        raise ValueError(f"{path!r} is corrupt: the SHA-256 digest of its payload does not match "
                         f"the one in its header (the file changed after it was written). "
                         f"Nothing was loaded; use another copy of the {what} file.")
    payload = _restore(body, path, what)
    if not isinstance(payload, dict):
        raise ValueError(f"{path!r}: the {what} file's payload is not a record.")
    return version, payload


def _restore(data: bytes, path: str, what: str):
    from flax import serialization

    try:
        return serialization.msgpack_restore(data)
    except Exception as err:
        raise ValueError(f"{path!r} is not a jaxseq {what} file (not msgpack: "
                         f"{type(err).__name__}). Files are never unpickled.") from err


def nest(flat: Mapping[str, Any], path: str) -> dict:
    """{"a/b/c": array} -> {"a": {"b": {"c": jax array}}}; non-numeric entries are refused."""
    nested: dict = {}
    for name, value in flat.items():
        if not isinstance(value, np.ndarray) or value.dtype.hasobject:
            raise ValueError(f"{path!r}: entry {name!r} is not a numeric array.")
        *parents, leaf = name.split("/")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = jnp.asarray(value)
    return nested
