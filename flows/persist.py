"""Resumable chunks: finished task results kept in the run folder as data, never as code.

A killed screen / generate / design run that is started again with the same output folder loads
the chunks that finished and computes only the rest (:func:`run_chunks`). Each chunk's key is the
task's source code plus a hash of its inputs' *content* (:func:`content_hash`: the same molecules
read twice hash the same, unlike a pickle of tensors, which carries random storage keys).

Why not Prefect's result persistence: its result files are pickles, and the file itself names the
serializer that reads it, so a folder written by someone else runs any code planted in it. Here a
chunk is ``OUT/.chunks/<key>.npz``, a NumPy archive read with ``numpy.load(allow_pickle=False)``
(which refuses anything but plain arrays): one array ``tree`` holds the result as JSON of plain
containers, strings and numbers, whose arrays are the archive's others (``a0``, ``a1``, ...).
RDKit molecules travel as RDKit's binary format, crystals as lattice, atomic numbers and fractional
coordinates, structures (:class:`pipeline.structures.Record`, a generated ``Data``) as their
arrays, tensors as arrays. Before use a file must name this format and its own key and decode
into the known types, else it is refused with one line and recomputed.

Neither writing nor reading a chunk imports torch: a screen never does. Tensors and ``Data``
can only be in a result when torch is already loaded (generation), and only decoding them loads
it. A chunk of an older version (``<key>.pt``, a ``torch.save``) is refused with one line naming
the file, and recomputed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import inspect
import io
import json
import sys
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from pipeline.structures import Record

STORE = ".chunks"
FORMAT, VERSION = "ldsm-chunk", 2
SUFFIX, LEGACY_SUFFIX = ".npz", ".pt"  # LEGACY: version 1, torch.save files
# Dataclasses a chunk may hold: name -> the module that defines it (never named by the file).
DATACLASSES = {
    "ChunkResult": "pipeline.generate",
    "Relaxed": "pipeline.relax",
    "RelaxedMolecule": "pipeline.relax",
}


def _loaded(module: str, name: str) -> type | tuple:
    """``module.name`` if ``module`` is already imported, else ``()`` (for ``isinstance``: no
    value can be an instance of a class nobody imported)."""
    found = sys.modules.get(module)
    return getattr(found, name) if found is not None else ()


def _fields(value) -> dict:
    """The set fields of a ``Record`` or a ``torch_geometric`` ``Data``."""
    return {key: value[key] for key in value.keys()}


def _update(digest, value) -> None:
    """Feed ``value``'s content into ``digest``, with a type tag so that ``[1]`` != ``"1"``."""
    if isinstance(value, _loaded("torch", "Tensor")):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        digest.update(f"A{value.dtype.str}{value.shape}".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, (Record, _loaded("torch_geometric.data", "Data"))):
        # One tag for both kinds: the same structure hashes the same read or generated.
        digest.update(b"D")
        for key in sorted(value.keys()):
            digest.update(key.encode())
            _update(digest, value[key])
    elif isinstance(value, BaseModel):
        digest.update(f"M{type(value).__qualname__}".encode())
        digest.update(value.model_dump_json().encode())
    elif isinstance(value, dict):
        digest.update(f"d{len(value)}".encode())
        for key in sorted(value, key=str):
            _update(digest, key)
            _update(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"l{len(value)}".encode())
        for item in value:
            _update(digest, item)
    elif value is None or isinstance(value, (str, int, float, bool, Path)):
        digest.update(f"{type(value).__name__}:{value!r}".encode())
    else:
        raise TypeError(f"no content hash for {type(value).__name__}")


def content_hash(value) -> str:
    """SHA-256 (hex) of the content of ``value``: arrays, tensors, structures (a ``Record`` and
    a ``Data`` with the same fields hash the same), pydantic models, and lists / tuples / dicts
    of them and of plain scalars. Equal content gives equal hashes across processes and runs;
    other types raise ``TypeError``."""
    digest = hashlib.sha256()
    _update(digest, value)
    return digest.hexdigest()


class ChunkRefused(ValueError):
    """A stored chunk that is not this format's data (the message says why)."""


def encode(value, arrays: list[np.ndarray]):
    """``value`` as a JSON-able tree; its arrays are appended to ``arrays`` and named by index.

    Raises ``TypeError`` for anything that is not data (an object array, an unknown class)."""

    def stored(a: np.ndarray) -> int:
        if a.dtype == object:
            raise TypeError("object arrays are not data")
        arrays.append(np.ascontiguousarray(a))
        return len(arrays) - 1

    def array(a: np.ndarray, tag: str = "ndarray") -> dict:
        return {"__t": tag, "i": stored(a)}

    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return array(value)
    if isinstance(value, _loaded("torch", "Tensor")):
        return array(value.detach().cpu().numpy(), "tensor")
    if isinstance(value, list):
        return [encode(v, arrays) for v in value]
    if isinstance(value, tuple):
        return {"__t": "tuple", "v": [encode(v, arrays) for v in value]}
    if isinstance(value, dict):
        keys = [encode(k, arrays) for k in value]
        return {"__t": "dict", "k": keys, "v": [encode(v, arrays) for v in value.values()]}
    if isinstance(value, Record):
        return {"__t": "Record", "v": encode(_fields(value), arrays)}
    if isinstance(value, _loaded("torch_geometric.data", "Data")):
        return {"__t": "Data", "v": encode(_fields(value), arrays)}
    name = type(value).__name__
    if DATACLASSES.get(name) == type(value).__module__ and dataclasses.is_dataclass(value):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return {"__t": "dataclass", "name": name, "v": encode(fields, arrays)}
    module = type(value).__module__
    if module.startswith("rdkit"):
        from rdkit import Chem

        if isinstance(value, Chem.Mol):
            raw = value.ToBinary(Chem.PropertyPickleOptions.AllProps)
            return array(np.frombuffer(raw, dtype=np.uint8), "Mol")
    if module.startswith("pymatgen") and name == "Structure":
        if not value.is_ordered:
            raise TypeError("a disordered structure")
        parts = {
            "lattice": np.array(value.lattice.matrix),
            "z": np.array(list(value.atomic_numbers)),
            "frac": np.array(value.frac_coords),
        }
        return {"__t": "Structure", **{k: stored(v) for k, v in parts.items()}}
    raise TypeError(f"{name} is not stored as data")


def decode(tree, arrays: list[np.ndarray]):
    """The value :func:`encode` gave ``tree`` for; anything else raises :class:`ChunkRefused`."""
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return tree
    if isinstance(tree, list):
        return [decode(v, arrays) for v in tree]
    if not isinstance(tree, dict):
        raise ChunkRefused(f"unexpected {type(tree).__name__}")

    def array(index) -> np.ndarray:
        if not isinstance(index, int) or not 0 <= index < len(arrays):
            raise ChunkRefused(f"no array {index!r}")
        return arrays[index]

    tag = tree.get("__t")
    if tag == "ndarray":
        return array(tree.get("i"))
    if tag == "tensor":
        import torch

        return torch.from_numpy(array(tree.get("i")).copy())
    if tag == "tuple":
        return tuple(decode(tree["v"], arrays))
    if tag == "dict":
        return dict(zip(decode(tree["k"], arrays), decode(tree["v"], arrays), strict=True))
    if tag == "Record":
        return Record(**decode(tree["v"], arrays))
    if tag == "Data":
        from torch_geometric.data import Data

        return Data(**decode(tree["v"], arrays))
    if tag == "dataclass" and tree.get("name") in DATACLASSES:
        cls = getattr(importlib.import_module(DATACLASSES[tree["name"]]), tree["name"])
        return cls(**decode(tree["v"], arrays))
    if tag == "Mol":
        from rdkit import Chem

        return Chem.Mol(array(tree.get("i")).tobytes())
    if tag == "Structure":
        from pymatgen.core import Lattice, Structure

        lattice, z, frac = (array(tree.get(k)) for k in ("lattice", "z", "frac"))
        return Structure(Lattice(lattice), z.tolist(), frac, coords_are_cartesian=False)
    raise ChunkRefused(f"unknown entry {tag!r}")


def _source_hash(task_) -> str:
    fn = getattr(task_, "fn", task_)
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        source = f"{fn.__module__}.{fn.__qualname__}"
    return hashlib.sha256(source.encode()).hexdigest()


class ChunkStore:
    """Finished results of one task in ``run_dir/.chunks``, keyed by task source and inputs."""

    def __init__(self, run_dir: str | Path, task_):
        self.folder = Path(run_dir) / STORE
        self.name = getattr(task_, "name", getattr(task_, "__name__", "task"))
        self.source = _source_hash(task_)

    def key(self, parameters: dict) -> str:
        """The key of the task run with ``parameters``."""
        return content_hash({"task": self.name, "source": self.source, "inputs": parameters})

    def path(self, key: str) -> Path:
        return self.folder / f"{key}{SUFFIX}"

    def load(self, key: str):
        """``(True, value)`` for a stored, verified chunk; ``(False, None)`` when there is none
        or it is refused (one line on stderr names the file and why)."""
        path = self.path(key)
        if not path.exists():
            legacy = path.with_suffix(LEGACY_SUFFIX)
            if legacy.exists():
                _refused(legacy, f"a torch file of {FORMAT} v1; this version reads v{VERSION}")
            return False, None
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
            head = json.loads(arrays.pop("tree").tobytes())
            if not isinstance(head, dict):
                raise ChunkRefused("not a chunk record")
            if (head.get("format"), head.get("version")) != (FORMAT, VERSION):
                raise ChunkRefused(f"not an {FORMAT} v{VERSION} file")
            if head.get("key") != key:
                raise ChunkRefused("it belongs to another chunk")
            ordered = [arrays[f"a{k}"] for k in range(len(arrays))]
            return True, decode(head.get("value"), ordered)
        except Exception as err:  # NumPy's refusal of pickles, truncation, bad content
            _refused(path, " ".join(str(err).split())[:160] or type(err).__name__)
            return False, None

    def save(self, key: str, value) -> bool:
        """Store ``value`` atomically; False (nothing written) when it is not storable data."""
        arrays: list[np.ndarray] = []
        try:
            tree = encode(value, arrays)
        except TypeError as err:
            print(f"ldsm: chunk {key[:12]} not kept ({err})", file=sys.stderr)
            return False
        head = {"format": FORMAT, "version": VERSION, "key": key, "value": tree}
        named = {f"a{k}": a for k, a in enumerate(arrays)}
        buffer = io.BytesIO()
        np.savez(buffer, tree=np.frombuffer(json.dumps(head).encode(), dtype=np.uint8), **named)
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = self.path(key).with_suffix(f"{SUFFIX}.part")
        partial.write_bytes(buffer.getvalue())
        partial.replace(self.path(key))
        return True


def _refused(path: Path, reason: str) -> None:
    print(f"ldsm: refused {path} ({reason}); recomputing that chunk", file=sys.stderr)


def run_chunks(task_, run_dir: str | Path, calls: list[dict]) -> list:
    """Results of ``task_(**call)`` for every call, in order: stored chunks are loaded, the rest
    are submitted to the flow's task runner and each is stored as soon as it finishes."""
    from prefect.futures import as_completed

    store = ChunkStore(run_dir, task_)
    keys = [store.key(call) for call in calls]
    results: list = [None] * len(calls)
    pending = []
    for k, key in enumerate(keys):
        found, value = store.load(key)
        if found:
            results[k] = value
        else:
            pending.append(k)
    futures = {task_.submit(**calls[k]): k for k in pending}
    for future in as_completed(list(futures)):
        k = futures[future]
        results[k] = future.result()
        store.save(keys[k], results[k])
    return results


def chunks_kept(run_dir: str | Path, what: str = "finished") -> str:
    """What a stopped run kept of its chunks, for its one stop line."""
    count = chunk_count(run_dir)
    if count == 0:
        return f"no {what} chunk had been stored yet"
    return (
        f"{count} {what} chunk{'s' if count > 1 else ''} kept in {Path(run_dir) / STORE}; "
        "run the same command again to resume"
    )


def chunk_count(run_dir: str | Path) -> int:
    """How many finished chunks ``run_dir`` keeps."""
    folder = Path(run_dir) / STORE
    return len(list(folder.glob(f"*{SUFFIX}"))) if folder.is_dir() else 0
