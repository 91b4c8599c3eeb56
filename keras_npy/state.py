"""The state of a dataset: where its order stands, as a small JSON value.

The order of the batches is a pure function of the data, the batch
arguments, the seed and the epoch (see `keras_npy.order`), so the whole data
state of a training run is the seed, the epoch, the next batch, and what
proves the order is the same one: a fingerprint of the index (file names,
sizes and header facts, labels) and the arguments that decide the order.
`get_state()` of a dataset makes this value and `set_state(state)` checks it
against the dataset before moving there: data or arguments that differ are a
`ValueError` that says what differs, never a silent other order.
"""

from __future__ import annotations

import hashlib
import numbers

import numpy as np

#: What a state says it is; another value (or a newer version) is refused.
FORMAT = "keras_npy.dataset_state"
#: 2: positions are global steps, and shards are not part of the order (1:
#: a shard's own batches; a state of an unsharded dataset reads the same).
VERSION = 2


def digest(*parts) -> str:
    h = hashlib.sha256()  # the fastest here (the CPU's SHA instructions): 17 ms for 30 MB
    for part in parts:
        if isinstance(part, np.ndarray):
            part = np.ascontiguousarray(part)
            h.update(f"{part.dtype.str}{part.shape}".encode())
            h.update(part.view(np.uint8).reshape(-1) if part.size else b"")
        elif isinstance(part, bytes):
            h.update(len(part).to_bytes(8, "little") + part)
        else:
            text = repr(part).encode()
            h.update(len(text).to_bytes(8, "little") + text)
    return h.hexdigest()[:24]


def input_facts(ix) -> dict:
    """What identifies one input's data: its files, their sizes and headers."""
    if ix.layout == "ragged":  # a pack's variable-length samples (index.RaggedIndex)
        return ix.fingerprint_facts()
    paths = ix.paths
    names = digest(paths.roots, paths.root_ids, paths._buffer, paths._offsets)
    if ix.layout == "rows":
        layout = digest("rows", ix.dtype.str, ix.row_shape, ix.row_starts, ix.data_offsets,
                         ix.fortran_order, ix.file_ids[:, 2])  # sizes, not inodes or times
        return {"layout": "rows", "files": len(paths), "rows": int(ix.row_starts[-1]),
                "names": names, "headers": layout}
    layout = digest("files", ix.dtype.str, ix.shapes, ix.data_offsets, ix.fortran_order,
                     ix.header_crc32)
    return {"layout": "files", "files": len(paths), "names": names, "headers": layout}


def fingerprint(index) -> dict:
    """The facts of an index that decide which bytes each sample is: for each
    input, its file count, a digest of the file names and one of the sizes
    and header facts (dtype, shapes, offsets, order); and a digest of the
    labels. Computed once per index (`build_index` does it: tens of
    milliseconds for 10^6 files, against seconds of headers), so that
    restoring a state costs no pass over the index."""
    own = getattr(index, "fingerprint", None)
    if own is not None:  # an index of its own kind (windows of series)
        return own()
    cached = index.__dict__.get("_fingerprint")
    if cached is not None:
        return cached
    y = index.y
    if y is None:
        labels = None
    elif isinstance(y, np.ndarray):
        labels = digest("array", y, index.class_names)
    else:
        labels = digest("files", *input_facts(y).values())
    facts = {"samples": int(index.num_samples),
             "inputs": {name: input_facts(ix) for name, ix in index.inputs.items()},
             "labels": labels}
    object.__setattr__(index, "_fingerprint", facts)  # a frozen dataclass, cached
    return facts


def order_facts(source) -> dict:
    """The arguments that decide the global order of the batches (the seed
    apart), with what they give: samples selected and global batches per
    epoch. The shards are not among them: a position is a global step, the
    same at any number of processes."""
    spec, order = source.spec, source.order
    return {"batch_size": spec.batch_size, "shuffle": spec.shuffle,
            "validation_split": spec.validation_split, "subset": spec.subset,
            "drop_remainder": spec.drop_remainder,
            "bucket_boundaries": None if spec.bucket_boundaries is None else list(
                spec.bucket_boundaries),
            "shuffle_block_size": order.block_size if order.shuffle == "block" else None,
            "shuffle_window": order.window if order.shuffle == "block" else None,
            "num_samples": len(order.sample_ids),
            "num_batches": order.num_global_batches}


def make_state(source, epoch: int, batch: int) -> dict:
    """The state of a dataset of `source` whose next batch is `batch` of
    `epoch`; the state holds the global step of that batch."""
    return {"format": FORMAT, "version": VERSION, "seed": int(source.seed),
            "epoch": int(epoch), "batch": source.order.global_step(epoch, batch),
            "order": order_facts(source), "data": fingerprint(source.index)}


def check_state(source, state, what: str) -> tuple[int, int, int]:
    """`(seed, epoch, batch)` of `state`, checked against a dataset of
    `source` (`what` names it in errors): the same data and order arguments,
    and the same seed unless the dataset's was drawn at random
    (`source.spec.seed_given` false), in which case the state's seed is the
    one to use. A position at the end of an epoch is the start of the next
    one."""
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{what}.set_state() takes a value returned by get_state() (a dict "
                         f"with format {FORMAT!r}). Received: {_short(state)}")
    state = _upgraded(state, what)
    if state.get("version") != VERSION:
        raise ValueError(f"{what}.set_state(): this state has version "
                         f"{state.get('version')!r}; this keras_npy reads version {VERSION}.")
    for key in ("seed", "epoch", "batch"):
        value = state.get(key)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ValueError(f"{what}.set_state(): the state's {key!r} must be an integer "
                             f">= 0; it is {value!r}.")
    differences = _differences("", state.get("data"), fingerprint(source.index))
    if differences:
        raise ValueError(
            f"{what}.set_state(): the data differ from those of the saved state, so the "
            f"saved position would be another order of other samples. What differs: "
            f"{'; '.join(differences)}. Restore onto the data the state was taken from.")
    differences = _differences("", state.get("order"), order_facts(source))
    if differences:
        raise ValueError(
            f"{what}.set_state(): the dataset was made with other arguments than the one the "
            f"state was taken from, and they change the order. What differs: "
            f"{'; '.join(differences)}. Make the dataset with the arguments of the saved run.")
    seed, epoch, batch = int(state["seed"]), int(state["epoch"]), int(state["batch"])
    if source.spec.seed_given and seed != source.seed:
        raise ValueError(f"{what}.set_state(): the state was taken with seed={seed}, this "
                         f"dataset was made with seed={source.seed}: another order. Make it "
                         f"with seed={seed} (or seed=None, to take the state's).")
    order = source.order
    if seed != source.seed and order.num_shards > 1:  # the state's order, to map its step
        order = order.with_spec(source.spec.with_seed(seed))
    num_batches = order.num_global_batches
    if batch > num_batches:
        raise ValueError(f"{what}.set_state(): the state's next batch is {batch}, past the "
                         f"{num_batches} batches of an epoch.")
    batch = order.shard_batch(epoch, batch)  # the first part of that global step or after
    if batch == order.num_batches:  # every batch of the epoch read: the next one begins
        epoch, batch = epoch + 1, 0
    return seed, epoch, batch


def _upgraded(state: dict, what: str) -> dict:
    """A version-1 state of an unsharded dataset as version 2 (its batch is
    the global step); one of a shard cannot be: it counted its own batches."""
    order = state.get("order")
    if state.get("version") != 1 or not isinstance(order, dict):
        return state
    if order.get("num_shards", 1) != 1:
        raise ValueError(f"{what}.set_state(): this state (version 1) was taken of shard "
                         f"{order.get('shard_index')!r} of {order['num_shards']}, whose "
                         "batches this keras_npy orders otherwise (each shard now reads a part "
                         "of every global batch). Start the run again.")
    order = {k: v for k, v in order.items() if k not in ("num_shards", "shard_index")}
    return {**state, "version": VERSION, "order": order}


_WHAT = {"samples": "the number of samples", "files": "the number of files",
         "rows": "the number of rows", "names": "the file names",
         "headers": "the files' sizes, shapes or headers", "labels": "the labels",
         "layout": "the layout", "inputs": "the inputs"}


def _differences(path: str, saved, now) -> list[str]:
    """What differs between a saved and a current fact tree, in words."""
    if isinstance(saved, dict) and isinstance(now, dict):
        found = []
        for key in [*now, *(k for k in saved if k not in now)]:
            if key not in saved or key not in now:
                where = f"{path}.{key}" if path else key
                found.append(f"{where}: {'not in the state' if key not in saved else 'gone'}")
                continue
            found += _differences(f"{path}.{key}" if path else key, saved[key], now[key])
        return found
    if saved == now or (isinstance(saved, (list, tuple)) and isinstance(now, (list, tuple))
                        and list(saved) == list(now)):
        return []
    leaf = path.rsplit(".", 1)[-1]
    if leaf in ("names", "headers", "labels"):
        return [f"{_WHAT[leaf]} ({path})"]
    return [f"{_WHAT.get(leaf, leaf)}: {saved!r} in the state, {now!r} now"
            + (f" ({path})" if "." in path else "")]


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
