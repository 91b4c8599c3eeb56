"""One process of the PyTorch run that tests/test_shards_torch.py starts: a
`gloo` group, an `NpyDataset` that finds its shard from it, and a Keras model
(torch backend) trained in a loop of one's own through
`DistributedDataParallel`, as keras-io's "Multi-GPU distributed training with
PyTorch" guide does. The first feature of each sample is its id; the ids of
every batch and the global loss of every step are written to a JSON file.

    KERAS_BACKEND=torch python shards_torch_run.py CONFIG.json

CONFIG: data (folder of x.npy, y.npy), port, world_size, rank, seed, epochs,
batch_size (the global batch), out (the JSON file written).
"""

import datetime
import json
import os
import sys


def main(config):
    # Imported here, not at the top: pytest's doctest collection imports this
    # file, and torch may be missing.
    import keras
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    import keras_npy

    torch.set_num_threads(1)  # processes share few cores
    world_size, rank = config["world_size"], config["rank"]
    # A bounded timeout: a peer that never comes fails the run, not hangs it.
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{config['port']}",
                            world_size=world_size, rank=rank,
                            timeout=datetime.timedelta(seconds=120))
    try:
        data = config["data"]
        # No num_shards: the shard is found from the process group.
        ds = keras_npy.NpyDataset(os.path.join(data, "x.npy"), y=os.path.join(data, "y.npy"),
                                  batch_size=config["batch_size"], shuffle=True,
                                  seed=config["seed"])
        # Seeded initializers: the same initial weights in every run (not
        # keras.utils.set_random_seed, which imports TensorFlow when it can).
        seed = config["seed"]
        glorot = keras.initializers.GlorotUniform
        model = keras.Sequential([
            keras.Input((3,)),
            keras.layers.Dense(8, activation="tanh", kernel_initializer=glorot(seed)),
            keras.layers.Dense(1, kernel_initializer=glorot(seed + 1))])
        ddp_model = DistributedDataParallel(model)
        optimizer = torch.optim.SGD(ddp_model.parameters(), lr=0.05)
        record = {"rank": rank, "world_size": world_size, "steps": [], "ids": [], "losses": []}
        for _ in range(config["epochs"]):
            ids, losses = [], []
            for i in range(len(ds)):
                x, y = ds[i]
                ids.append(x[:, 0].round().astype(int).tolist())
                # The id is bookkeeping, not a feature: the model sees the rest.
                inputs = torch.as_tensor(x[:, 1:])
                targets = torch.as_tensor(y).reshape(-1, 1)
                loss = torch.nn.functional.mse_loss(ddp_model(inputs), targets)
                optimizer.zero_grad()
                loss.backward()  # DDP averages the gradients over the ranks
                optimizer.step()
                # Equal local batches: the mean of the local means is the
                # global batch's mean loss.
                total = loss.detach().clone()
                dist.all_reduce(total)
                losses.append(float(total) / world_size)
            record["steps"].append(len(ds))
            record["ids"].append(ids)
            record["losses"].append(losses)
            ds.on_epoch_end()
        with open(config["out"], "w") as f:
            json.dump(record, f)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        main(json.load(f))
