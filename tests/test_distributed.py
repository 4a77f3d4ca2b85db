"""Several workers per trial without Ray: real gloo process groups of 2 processes on 127.0.0.1
run the library's own trial (raytune_torch.trainable.run_trial with a Group), and their metrics are
compared with one worker's on the same global batch; a 2-worker trial crashed after an epoch
resumes exactly (every rank's RNG state is in the checkpoint). Also the sharding helpers, the
config and the preflight refusals."""

from __future__ import annotations

import copy
import json
import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from raytune_torch.config import load_config
from raytune_torch.data import iterate_batches, load_data, load_splits
from raytune_torch.distributed import Group, ShardedBatchSampler, check_ddp_model, global_batch_sizes, shard
from raytune_torch.exceptions import ConfigError, PreflightError
from raytune_torch.trainable import preflight, run_trial
from reporters import Crash, FakeReporter

ROOT = Path(__file__).resolve().parents[1]
BASE = {
    "name": "ddp-test",
    "seed": 0,
    "data": {"dataset": "digits", "standardize": True},
    "model": {"name": "examples.models:MLP", "args": {"hidden": 32}},
    "optimizer": {"name": "sgd", "args": {"momentum": 0.9}},
    # 1437 training rows in global batches of 99: the halves are 50 and 49 rows, unequal on purpose
    "train": {"max_epochs": 3, "batch_size": 99, "metrics": ["accuracy", "f1"]},
    "space": {"optimizer__lr": 0.05, "module__dropout": 0.0},
}
COMPARED = ("train_loss", "val_loss", "val_accuracy", "val_f1")


def make_config(**changes):
    raw = copy.deepcopy(BASE)
    for key, value in changes.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
    return load_config(raw)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, raw: dict, out: str, crash_after: int | None,
               resume_from: str | None) -> None:
    """One rank: join the gloo group on 127.0.0.1 and run the library's trial."""
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    import torch.distributed as dist

    from raytune_torch.config import load_config as load
    from raytune_torch.data import load_data
    from raytune_torch.distributed import Group as G
    from raytune_torch.trainable import run_trial as run
    from reporters import Crash as C, FakeReporter as R

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        cfg = load(raw)
        data = load_data(cfg.data, cfg.task, cfg.seed, import_paths=cfg.import_paths)
        reporter = R(Path(out) / f"ckpt-{rank}", crash_after=crash_after,
                     resume_from=Path(resume_from) if resume_from else None)
        try:
            run(dict(raw["space"]), cfg, data, reporter, group=G(rank, world))
        except C:
            pass
        (Path(out) / f"rank{rank}.json").write_text(json.dumps(reporter.stable(), default=str))
        (Path(out) / f"given{rank}.json").write_text(json.dumps([g is not None for g in reporter.given]))
    finally:
        dist.destroy_process_group()


def run_group(raw: dict, out: Path, *, world: int = 2, crash_after: int | None = None,
              resume_from: Path | None = None) -> list[list[dict]]:
    """Run one trial on ``world`` gloo ranks; returns every rank's reported metrics."""
    out.mkdir(parents=True, exist_ok=True)
    mp.start_processes(_rank_main, args=(world, _free_port(), raw, str(out), crash_after,
                                         str(resume_from) if resume_from else None),
                       nprocs=world, join=True, start_method="spawn")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


def run_single(raw: dict, root: Path | None = None, **kw) -> FakeReporter:
    cfg = load_config(raw)
    reporter = FakeReporter(root, **kw)
    try:
        run_trial(dict(raw["space"]), cfg, load_data(cfg.data, cfg.task, cfg.seed, import_paths=cfg.import_paths),
                  reporter)
    except Crash:
        pass
    return reporter


def close(a: list[dict], b: list[dict], keys=COMPARED, tol=1e-5) -> None:
    assert [m["epoch"] for m in a] == [m["epoch"] for m in b]
    for x, y in zip(a, b):
        for key in keys:
            assert abs(x[key] - y[key]) <= tol * max(1.0, abs(y[key])), (key, x["epoch"], x[key], y[key])


# --- the reference check: 2 workers match 1 on the same global batch ------------------------------

@pytest.mark.slow
def test_two_workers_match_one_worker_and_resume_exactly(tmp_path):
    one = run_single(BASE).stable()
    two = run_group(BASE, tmp_path / "two")
    # every rank reports the same reduced metrics (Train relays rank 0's)
    assert two[0] == [dict(m) for m in two[1]]
    close(two[0], one)
    assert [m["workers"] for m in two[0]] == [2, 2, 2] and [m["workers"] for m in one] == [1, 1, 1]
    assert two[0][-1]["val_accuracy"] > 0.8  # it learned

    # With dropout each rank has random streams of its own; a 2-worker trial that crashes after
    # epoch 1 and resumes from rank 0's checkpoint (every rank's RNG inside) continues exactly.
    raw = {**BASE, "space": {**BASE["space"], "module__dropout": 0.3}}
    whole = run_group(raw, tmp_path / "whole")[0]
    run_group(raw, tmp_path / "crashed", crash_after=1)
    checkpoint = tmp_path / "crashed" / "ckpt-0" / "epoch_1"
    assert (checkpoint / "state.pt").exists()
    assert not any((tmp_path / "crashed" / "ckpt-1").iterdir())  # rank 0 alone writes checkpoints
    state = torch.load(checkpoint / "state.pt", weights_only=True)
    assert isinstance(state["rng"], list) and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # own dropout streams
    assert torch.equal(state["rng"][0]["shuffle"], state["rng"][1]["shuffle"])  # one shuffle order
    resumed = run_group(raw, tmp_path / "resumed", resume_from=checkpoint)[0]
    assert resumed == whole[1:]

    # a checkpoint of 2 workers does not resume a trial of 1 (the per-rank streams would not fit)
    from raytune_torch.exceptions import CheckpointError

    with pytest.raises(CheckpointError, match="written by a trial of 2 workers, but this trial has 1; resume it "
                                              "with resources.workers: 2"):
        run_single(raw, resume_from=checkpoint)


@pytest.mark.slow
@pytest.mark.parametrize("iterable", [False, True], ids=["map-style", "iterable"])
def test_two_workers_match_one_on_torch_datasets(tmp_path, iterable):
    """A map-style Dataset: each rank loads only its rows of each global batch (the batch sampler);
    an iterable one: every rank reads it and keeps its rows. Either way one worker's batches."""
    raw = {**BASE, "data": {"factory": "helpers_steps:digits_datasets", "factory_args": {"iterable": iterable},
                            "loader": {"num_workers": 0}}}
    one = run_single(raw).stable()
    two = run_group(raw, tmp_path / "two")[0]
    close(two, one)
    assert two[-1]["val_accuracy"] > 0.5


@pytest.mark.slow
def test_two_workers_match_one_on_a_streamed_parquet_table(tmp_path):
    """A table streamed in record batches: every rank reads the same shuffled batches and keeps
    its rows of each, so the group trains on one worker's global batches."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    columns = {f"f{i}": (x[:, i] / 16).astype(np.float32) for i in range(x.shape[1])}
    pq.write_table(pa.table({**columns, "label": y.astype(np.int64)}), tmp_path / "digits.parquet",
                   row_group_size=100)
    raw = {**BASE, "data": {"parquet": str(tmp_path / "digits.parquet"), "label": "label", "stream": True}}
    # each rank keeps every other row of each shuffled global batch: together, one worker's batch
    cfg = load_config(raw)
    stream = load_data(cfg.data, cfg.task, cfg.seed)

    def rows(group):
        return [xb for xb, _ in stream.batches("train", 99, generator=torch.Generator().manual_seed(3), group=group)]

    whole, first, second = rows(None), rows(Group(0, 2)), rows(Group(1, 2))
    assert len(whole) == len(first) == len(second) > 10
    for w, a, b in zip(whole, first, second):
        assert len(a) + len(b) == len(w) and torch.equal(a, w[0::2]) and torch.equal(b, w[1::2])
    one = run_single(raw).stable()
    two = run_group(raw, tmp_path / "two")[0]
    close(two, one)
    assert two[-1]["val_accuracy"] > 0.5


# --- sharding -------------------------------------------------------------------------------------

def test_ranks_share_each_global_batch_row_for_row():
    X = torch.arange(23).float().unsqueeze(1)
    y = torch.arange(23)
    g = [torch.Generator().manual_seed(5) for _ in range(3)]
    whole = [b[1].tolist() for b in iterate_batches(X, y, 8, shuffle=True, generator=g[0])]
    r0 = [b[1].tolist() for b in iterate_batches(X, y, 8, shuffle=True, generator=g[1], group=Group(0, 2))]
    r1 = [b[1].tolist() for b in iterate_batches(X, y, 8, shuffle=True, generator=g[2], group=Group(1, 2))]
    assert [a + b for a, b in zip(r0, r1)] != whole  # interleaved, not halves
    assert [sorted(a + b) for a, b in zip(r0, r1)] == [sorted(w) for w in whole]
    assert [len(a) for a in r0] == [4, 4, 4] and [len(b) for b in r1] == [4, 4, 3]


def test_a_last_batch_smaller_than_the_group_is_skipped_and_shares_weigh_the_halves():
    from raytune_torch.distributed import BatchShare

    batches = [(torch.zeros(5, 1), torch.arange(5)), (torch.zeros(1, 1), torch.arange(1))]
    share = BatchShare(2)
    out = []
    for xb, yb in shard(iter(batches), Group(1, 2), share):
        out.append((yb.tolist(), share.weight))
    assert out == [([1, 3], 2 / 5)]
    assert global_batch_sizes(10, 4) == [4, 4, 2] and global_batch_sizes(10, 4, drop_last=True) == [4, 4]


def test_the_batch_sampler_loads_only_this_ranks_items_of_each_global_batch():
    samplers = [ShardedBatchSampler(10, 4, Group(r, 2), shuffle=True, generator=torch.Generator().manual_seed(1))
                for r in range(2)]
    a, b = (list(s) for s in samplers)
    order = list(torch.utils.data.RandomSampler(range(10), generator=torch.Generator().manual_seed(1)))
    assert [x + y for x, y in zip(a, b)] != [order[0:4], order[4:8], order[8:]]
    assert [sorted(x + y) for x, y in zip(a, b)] == [sorted(order[0:4]), sorted(order[4:8]), sorted(order[8:])]
    assert a[0] == order[0:4][0::2] and b[0] == order[0:4][1::2]
    assert len(samplers[0]) == 3 and samplers[0].global_sizes() == [4, 4, 2]


# --- config and preflight -------------------------------------------------------------------------

@pytest.mark.parametrize("value", [0, -1, 1.5, "two", True])
def test_workers_must_be_a_whole_number_of_at_least_one(value):
    with pytest.raises(ConfigError) as info:
        make_config(resources={"workers": value})
    assert info.value.problems == [f"resources.workers: must be a whole number >= 1 (the processes that train one "
                                   f"trial's model together), got {value!r}"]


def test_workers_round_trip_and_override():
    cfg = make_config(resources={"workers": 2, "cpu": 1})
    assert cfg.resources.workers == 2 and load_config(cfg.to_dict()) == cfg
    assert load_config(BASE, workers_per_trial=3).resources.workers == 3
    assert make_config(resources={"workers": 2.0}).resources.workers == 2


def test_the_preflight_refuses_what_ddp_cannot_train(write_module, tmp_path):
    mod = write_module("""
import torch
from torch import nn

class Unused(nn.Module):
    def __init__(self, in_features, out_features, **unused):
        super().__init__()
        self.body = nn.Linear(in_features, out_features)
        self.spare = nn.Linear(3, 3)          # never called: DDP would wait for its gradient

    def forward(self, x):
        return self.body(x)

class Frozen(nn.Module):
    def __init__(self, in_features, out_features, **unused):
        super().__init__()
        self.body = nn.Linear(in_features, out_features).requires_grad_(False)

    def forward(self, x):
        return self.body(x)

def plain_loop(trial):
    for _ in trial.epochs():
        trial.end_epoch(0.0)

def ddp_loop(trial):
    from raytune_torch.loop import default_step, train_epoch
    for _ in trial.epochs():
        if trial.end_epoch(train_epoch(trial.step_ctx, trial.train_batches(), default_step)):
            break
ddp_loop.distributed = True
""")
    cfg0 = make_config(resources={"workers": 2}, import_paths=[str(tmp_path)])
    data = load_splits(cfg0.data, cfg0.task, cfg0.seed)

    def refusal(**changes) -> str:
        cfg = make_config(resources={"workers": 2}, import_paths=[str(tmp_path)], **changes)
        with pytest.raises(PreflightError) as info:
            preflight(cfg, data, dict(cfg0.space))
        return str(info.value)

    msg = refusal(model={"name": f"{mod}:Unused"})
    assert "DistributedDataParallel" in msg and "spare.weight, spare.bias got no gradient" in msg
    assert "requires_grad_(False)" in msg
    assert "no parameters that require gradients" in refusal(model={"name": f"{mod}:Frozen"})
    msg = refusal(train={"loop": f"{mod}:plain_loop"})
    assert "runs on each of the trial's 2 workers" in msg and "plain_loop.distributed = True" in msg
    assert "smaller than resources.workers (2)" in refusal(train={"batch_size": 1})
    # a loop that says it runs distributed, and the same models with one worker, pass
    preflight(make_config(resources={"workers": 2}, import_paths=[str(tmp_path)], train={"loop": f"{mod}:ddp_loop"}),
              data, dict(cfg0.space))
    preflight(make_config(import_paths=[str(tmp_path)], model={"name": f"{mod}:Unused"}), data, dict(cfg0.space))
    assert check_ddp_model(torch.nn.Linear(2, 2), stepped=True) is not None  # no backward yet: no gradients at all
    assert check_ddp_model(torch.nn.Linear(2, 2), stepped=False) is None
