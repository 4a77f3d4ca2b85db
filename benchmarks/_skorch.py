"""A skorch callback for the skorch arm, in its own module so that only that arm imports skorch
(joblib's workers import it by reference)."""

from __future__ import annotations

from skorch.callbacks import Callback


class OneTorchThread(Callback):
    """Pins each joblib worker's torch to one thread (OMP_NUM_THREADS=1 is also in its env) and
    seeds it."""

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        import torch

        from .workloads import SEED

        torch.set_num_threads(1)
        torch.manual_seed(SEED)
