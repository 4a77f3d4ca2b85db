"""Issue #24 research: a Tune function trainable per trial that launches a Ray Train TorchTrainer
(DDP over gloo), relays its reports to Tune, checkpoints from rank 0, and resumes.

Run from the repository root:  PYTHONPATH=$PWD python docs/notes/ddp/tune_ddp.py [options]
  --relay own      our UserCallback + a queue: metrics AND checkpoint become Tune's (default)
  --relay tunecb   Ray's documented ray.tune.integration.ray_train.TuneReportCallback (metrics only)
  --driver-cpu X   the Tune trial's own resources (the Train driver): 0, 0.01, 1 ...
  --worker-cpu X   resources_per_worker CPU;  --workers N
  --asha           ASHA over 4 learning rates (grace 1) ; --fail-once: rank 1 dies at epoch 3 once
  --reuse          TuneConfig(reuse_actors=True)
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import threading
import time

import ray
import ray.train
import ray.util.queue as rq
import torch
import torch.distributed as dist
from ray import tune
from ray.train.torch import TorchConfig, TorchTrainer
from torch import nn

# Everything the script writes goes under the system temporary directory.
ROOT = os.path.join(tempfile.gettempdir(), "rtt-ddp-research")


def load():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.long)
    return X[:1400], y[:1400], X[1400:], y[1400:]


def rng_state(gen):
    import random

    import numpy as np

    s = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [s[0], s[1].tolist(), int(s[2]), int(s[3]), float(s[4])],
            "python": random.getstate(), "shuffle": gen.get_state()}


def set_rng_state(st, gen):
    import random

    import numpy as np

    torch.set_rng_state(st["torch"])
    k, keys, pos, g, c = st["numpy"]
    np.random.set_state((k, np.asarray(keys, dtype=np.uint32), pos, g, c))
    py = st["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    gen.set_state(st["shuffle"])


def train_fn_per_worker(cfg: dict):
    """Runs on every Train worker (rank r of world N): DDP over the process group Ray set up."""
    t_enter = time.time()
    torch.set_num_threads(1)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    X, y, Xv, yv = load()
    seed = 1234
    gen = torch.Generator().manual_seed(seed)  # replicated shuffle
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 10))
    torch.manual_seed(seed + rank)  # per-rank dropout stream
    ddp = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    start = 0
    resume = cfg.get("resume")  # the Tune checkpoint the driver chose (shared storage path)
    train_ck = ray.train.get_checkpoint()  # Train's own (worker restart inside one fit)
    if resume or train_ck:
        path = resume if resume else None
        cm = train_ck.as_directory() if (train_ck and not resume) else None
        if cm is not None:
            path = cm.__enter__()
        st = torch.load(os.path.join(path, "state.pt"), weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        set_rng_state(st["rng"][rank], gen)
        start = st["epoch"]
    for epoch in range(start + 1, cfg["epochs"] + 1):
        t0 = time.time()
        if cfg.get("fail_once") and epoch == 3 and rank == 1 and not os.path.exists(cfg["fail_once"]):
            open(cfg["fail_once"], "w").close()
            raise RuntimeError("injected failure in rank 1 at epoch 3")
        ddp.train()
        acc = torch.zeros(2, dtype=torch.float64)
        perm = torch.randperm(len(X), generator=gen)
        b = cfg["batch"]
        for s in range(0, len(X), b):
            idx = perm[s:s + b]
            mine = idx[rank::world]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(ddp(X[mine]), y[mine])
            (loss * (len(mine) * world / len(idx))).backward()
            opt.step()
            acc += torch.tensor([float(loss) * len(mine), len(mine)], dtype=torch.float64)
        ddp.eval()
        with torch.no_grad():
            sl = torch.arange(rank, len(Xv), world)
            o = model(Xv[sl])
            ev = torch.tensor([float(loss_fn(o, yv[sl])) * len(sl), float((o.argmax(1) == yv[sl]).sum()), len(sl)],
                              dtype=torch.float64)
        if world > 1:
            dist.all_reduce(acc)
            dist.all_reduce(ev)
            rngs = [None] * world
            dist.all_gather_object(rngs, rng_state(gen))
        else:
            rngs = [rng_state(gen)]
        metrics = {"epoch": epoch, "train_loss": float(acc[0] / acc[1]), "val_loss": float(ev[0] / ev[2]),
                   "val_accuracy": float(ev[1] / ev[2]), "rank": rank, "epoch_s": time.time() - t0,
                   "t_worker_enter": t_enter}
        if rank == 0:
            with tempfile.TemporaryDirectory() as d:
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "rng": rngs, "epoch": epoch},
                           os.path.join(d, "state.pt"))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics, checkpoint=None)


class Relay(ray.train.UserCallback):
    """On the Train controller: hand every report (all ranks' metrics + the persisted checkpoint)
    to the Tune trial's driver through a queue actor."""

    def __init__(self, queue):
        self.queue = queue
        self.sent_handle = False

    def after_report(self, run_context, metrics, checkpoint):
        item = {"metrics": metrics, "checkpoint": checkpoint.path if checkpoint else None}
        if not self.sent_handle:  # the driver aborts the run through it when Tune stops the trial
            item["controller"] = ray.get_runtime_context().current_actor
            self.sent_handle = True
        self.queue.put(item)


def driver(config):
    """The Tune function trainable: one Train run per trial."""
    t_start = time.time()
    CONTROLLER.clear()
    args = config["_args"]
    trial_id = tune.get_context().get_trial_id()
    given = tune.get_checkpoint()
    loop_cfg = {k: v for k, v in config.items() if k != "_args"}
    loop_cfg["resume"] = given.path if given else None
    loop_cfg["fail_once"] = f"{ROOT}/failed-{trial_id}" if args["fail_once"] else None
    run_cfg = dict(name=f"train-{trial_id}", storage_path=f"{ROOT}/train_runs",
                   checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
                   failure_config=ray.train.FailureConfig(max_failures=0))
    if args["relay"] == "tunecb":
        from ray.tune.integration.ray_train import TuneReportCallback

        trainer = TorchTrainer(train_fn_per_worker, train_loop_config=loop_cfg,
                               scaling_config=ray.train.ScalingConfig(num_workers=args["workers"], use_gpu=False,
                                                                      resources_per_worker={"CPU": args["worker_cpu"]}),
                               torch_config=TorchConfig(backend="gloo"),
                               run_config=ray.train.RunConfig(callbacks=[TuneReportCallback()], **run_cfg))
        trainer.fit()
        return
    queue = rq.Queue(maxsize=1, actor_options={"num_cpus": 0})
    trainer = TorchTrainer(train_fn_per_worker, train_loop_config=loop_cfg,
                           scaling_config=ray.train.ScalingConfig(num_workers=args["workers"], use_gpu=False,
                                                                  resources_per_worker={"CPU": args["worker_cpu"]}),
                           torch_config=TorchConfig(backend="gloo"),
                           run_config=ray.train.RunConfig(callbacks=[Relay(queue)], **run_cfg))
    outcome = {}

    def fit():
        try:
            trainer.fit()
        except BaseException as exc:  # noqa: BLE001
            outcome["error"] = exc

    thread = threading.Thread(target=fit, daemon=True, name="train-fit")
    thread.start()
    first = True
    controller = None
    try:
        relay_loop(queue, thread, t_start, args)
    except BaseException as exc:  # SystemExit(0) from tune.report when Tune stops the trial (ASHA)
        t_abort = time.time()
        handle = CONTROLLER.get("h")
        if handle is not None and args.get("abort", True):
            try:
                ray.get(handle.abort.remote(), timeout=30)
            except Exception as e:  # noqa: BLE001  the actor exits inside abort
                pass
        thread.join(timeout=30)
        print(f"driver: {type(exc).__name__} -> aborted Train run in {time.time() - t_abort:.2f}s, "
              f"fit thread alive: {thread.is_alive()}", flush=True)
        raise
    finally:
        queue.shutdown(force=True)
    thread.join()
    if "error" in outcome:
        raise outcome["error"]


CONTROLLER = {}


def relay_loop(queue, thread, t_start, args):
    first = True
    while True:
        try:
            item = queue.get(timeout=0.2)
        except rq.Empty:
            if not thread.is_alive():
                break
            continue
        if "controller" in item:
            CONTROLLER["h"] = item["controller"]
        m0 = dict(item["metrics"][0])
        m0["ranks_reported"] = len(item["metrics"])
        if first:
            m0["startup_s"] = time.time() - t_start - m0["epoch_s"]
            m0["worker_enter_after_s"] = m0["t_worker_enter"] - t_start
            first = False
        ck = tune.Checkpoint(item["checkpoint"]) if item["checkpoint"] else None
        tune.report(m0, checkpoint=ck)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--relay", default="own")
    p.add_argument("--driver-cpu", type=float, default=0.0)
    p.add_argument("--worker-cpu", type=float, default=1.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--asha", action="store_true")
    p.add_argument("--fail-once", action="store_true")
    p.add_argument("--reuse", action="store_true")
    p.add_argument("--samples", type=int, default=1)
    p.add_argument("--timeout", type=float, default=240)
    p.add_argument("--name", default="exp")
    p.add_argument("--no-abort", dest="abort", action="store_false")
    p.add_argument("--dashboard", action="store_true")
    p.add_argument("--max-concurrent", type=int, default=0)
    a = p.parse_args()
    shutil.rmtree(ROOT, ignore_errors=True)
    os.makedirs(ROOT)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    t0 = time.time()
    ray.init(address="local", num_cpus=2, include_dashboard=a.dashboard, log_to_driver=True)
    print(f"ray.init {time.time() - t0:.1f}s", flush=True)
    space = {"lr": tune.grid_search([0.3, 0.1, 0.03, 0.01]) if a.asha else 0.1, "batch": 100, "epochs": a.epochs,
             "_args": vars(a)}
    sched = tune.schedulers.ASHAScheduler(max_t=a.epochs, grace_period=1, reduction_factor=2,
                                          time_attr="training_iteration") if a.asha else None
    trainable = tune.with_resources(driver, {"cpu": a.driver_cpu})
    tuner = tune.Tuner(trainable, param_space=space,
                       tune_config=tune.TuneConfig(metric="val_loss", mode="min", scheduler=sched,
                                                   num_samples=a.samples, reuse_actors=a.reuse,
                                                   max_concurrent_trials=a.max_concurrent or None),
                       run_config=tune.RunConfig(name=a.name, storage_path=f"{ROOT}/tune", verbose=0,
                                                 failure_config=tune.FailureConfig(max_failures=1 if a.fail_once else 0),
                                                 stop={"time_total_s": a.timeout}))
    t1 = time.time()
    done = {}

    def watchdog():
        while not done and time.time() - t1 < a.timeout:
            time.sleep(1)
        if not done:
            print(f"WATCHDOG: no result after {a.timeout}s; available={ray.available_resources()}", flush=True)
            os._exit(3)

    threading.Thread(target=watchdog, daemon=True).start()
    grid = tuner.fit()
    done["x"] = 1
    print(f"Tuner.fit {time.time() - t1:.1f}s", flush=True)
    for r in grid:
        df = r.metrics_dataframe
        cols = [c for c in ("epoch", "train_loss", "val_loss", "val_accuracy", "ranks_reported", "startup_s",
                            "worker_enter_after_s", "epoch_s", "checkpoint_path") if df is not None and c in df]
        print("TRIAL", r.config.get("lr"), "error:", repr(r.error)[:300] if r.error else None,
              "checkpoint:", r.checkpoint)
        if df is not None:
            print(df[cols].to_string())
    time.sleep(2)
    print("available after run:", ray.available_resources(), flush=True)
    ps = subprocess.run(["ps", "-eo", "pid,ppid,args"], capture_output=True, text=True).stdout
    print("RayTrainWorker/TrainController processes left:",
          [l.strip()[:120] for l in ps.splitlines() if "RayTrainWorker" in l or "TrainController" in l])
    ray.shutdown()


if __name__ == "__main__":
    main()
