"""Which shard this process reads: given (`num_shards`, `shard_index`), or
found from the multi-process run it is part of.

A dataset made with neither argument looks for a run of several processes,
in this order, and reads the share of this process:

- **Keras on JAX**: a `keras.distribution` distribution is set over several
  processes (`jax.distributed.initialize`). Its `num_processes`,
  `num_model_replicas` and `data_shard_id` say how the data are split, as
  Keras' own `distribute_dataset` splits a `tf.data.Dataset`; one made with
  `auto_shard_dataset=False` is left alone (its data are sharded already).
- **PyTorch**: an initialized `torch.distributed` process group: its world
  size and this process's rank.
- **TensorFlow**: `TF_CONFIG` names a cluster of several `chief` and
  `worker` tasks (`MultiWorkerMirroredStrategy`): their number, and this
  task's place with the chief first, as `tf.distribute` numbers its input
  pipelines.

Nothing is imported to look: a framework not imported yet has no run.
The shard, the batch each process reads and where it was found are said in
one line when a dataset is made.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys


@dataclasses.dataclass(frozen=True)
class Run:
    """A run of several processes: `num_shards` shares of the data, this
    process reads `shard_index`; `found` says where that came from."""

    num_shards: int
    shard_index: int
    found: str


def find_run() -> Run | None:
    """The multi-process run this process is part of, or `None`. The first
    finder that knows the run decides, sharding or not: a Keras distribution
    that replicates the data (or was told its data are sharded already) is
    not overruled by `TF_CONFIG` or a torch group."""
    for finder in (_keras_distribution, _torch_distributed, _tf_config):
        run = finder()
        if run is not None:
            return run if run.num_shards > 1 else None
    return None


def _keras_distribution() -> Run | None:
    if "keras" not in sys.modules:
        return None
    import keras

    distribution = keras.distribution.distribution()
    processes = getattr(distribution, "num_processes", 1)
    if distribution is None or processes <= 1:
        return None
    found = f"keras.distribution.{type(distribution).__name__} over {processes} processes"
    if not getattr(distribution, "auto_shard_dataset", True):
        return Run(1, 0, found)  # its data are sharded by the user
    replicas = distribution.num_model_replicas
    num_shards = processes if replicas >= processes else replicas
    return Run(num_shards, int(distribution.data_shard_id), found)


def _torch_distributed() -> Run | None:
    if "torch" not in sys.modules:
        return None
    distributed = sys.modules["torch"].distributed
    if not distributed.is_available() or not distributed.is_initialized():
        return None
    size, rank = distributed.get_world_size(), distributed.get_rank()
    return Run(size, rank, f"torch.distributed: rank {rank} of a world of {size}")


def _tf_config() -> Run | None:
    text = os.environ.get("TF_CONFIG")
    if not text:
        return None
    try:
        config = json.loads(text)
        cluster, task = config.get("cluster", {}), config.get("task", {})
        chiefs, workers = list(cluster.get("chief", [])), list(cluster.get("worker", []))
        kind, index = task.get("type"), int(task.get("index", 0))
    except (ValueError, TypeError, AttributeError) as error:
        raise ValueError(f"TF_CONFIG is set but is not the JSON of a TensorFlow cluster "
                         f"({error}). Received: TF_CONFIG={text[:200]!r}") from error
    if kind not in ("chief", "worker"):
        return None  # an evaluator or a parameter server trains on no batches
    place = index if kind == "chief" else len(chiefs) + index
    return Run(len(chiefs) + len(workers), place,
               f"TF_CONFIG: {kind} {index} of {len(chiefs) + len(workers)} tasks")


def resolve(num_shards, shard_index) -> tuple[int, int, Run | None]:
    """`(num_shards, shard_index, the run found or None)` of the arguments a
    dataset was given: `None` for both means the run's shard (or no shards);
    `num_shards=1` alone means no shards."""
    if num_shards is None and shard_index is None:
        run = find_run()
        return (1, 0, None) if run is None else (run.num_shards, run.shard_index, run)
    if num_shards is None:
        raise ValueError("`shard_index` was given without `num_shards`: pass both, or "
                         f"neither to follow the run. Received: shard_index={shard_index!r}")
    if shard_index is None:
        if num_shards != 1:
            raise ValueError("`num_shards` was given without `shard_index`: pass both (or "
                             "num_shards=1 to read every sample). Received: "
                             f"num_shards={num_shards!r}")
        shard_index = 0
    return num_shards, shard_index, None


def describe(num_shards: int, shard_index: int, batch_size: int, run: Run) -> str:
    """The line said when a dataset follows a run."""
    return (f"keras_npy: reading shard {shard_index} of {num_shards} ({run.found}): "
            f"{batch_size // num_shards} samples of each global batch of {batch_size}. "
            "Pass num_shards=1 to read every sample.")
