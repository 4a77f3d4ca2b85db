"""Small models for the examples (importable as ``examples.models:Name`` from the repository root)."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """A multilayer perceptron; ``in_features``/``out_features`` are filled in from the data."""

    def __init__(self, in_features: int, out_features: int, hidden: int = 64, layers: int = 1,
                 dropout: float = 0.0, activation: str = "relu") -> None:
        super().__init__()
        act = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}[activation]
        blocks: list[nn.Module] = []
        width = in_features
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), act(), nn.Dropout(dropout)]
            width = hidden
        blocks.append(nn.Linear(width, out_features))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DigitsCNN(nn.Module):
    """A small CNN on scikit-learn's 8x8 digit images (64 features reshaped to 1x8x8)."""

    def __init__(self, out_features: int = 10, channels: int = 16, hidden: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels * 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(channels * 2 * 4 * 4, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, out_features),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.view(-1, 1, 8, 8)))
