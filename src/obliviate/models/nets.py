"""Small reference networks for tabular and 8x8-image tasks.

``TabularNet`` keeps its input standardisation, missing-value imputation (and, for regression, target
scaling) as buffers fitted
on the data it is trained on, so a retrained oracle recomputes them from the retain set alone instead of
inheriting statistics of the forgotten rows (an oracle recomputes everything derived from the data).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, in_dim: int, hidden: tuple[int, ...], out_dim: int, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_dim
        for width in hidden:
            layers += [nn.Linear(prev, width), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            prev = width
        layers.append(nn.Linear(prev, out_dim))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class SmallCNN(nn.Module):
    """Two conv layers for ``side x side`` single-channel images given as flat vectors."""

    def __init__(self, side: int, out_dim: int, channels: tuple[int, int] = (16, 32), hidden: int = 128):
        super().__init__()
        self.side = side
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c2 * (side // 2) ** 2, hidden), nn.ReLU(),
                                  nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.view(-1, 1, self.side, self.side)))


class TabularNet(nn.Module):
    """Standardise inputs, run ``body``; for regression map the output back to target units."""

    def __init__(self, body: nn.Module, in_dim: int, regression: bool = False):
        super().__init__()
        self.body = body
        self.regression = regression
        self.register_buffer("x_mean", torch.zeros(in_dim))
        self.register_buffer("x_std", torch.ones(in_dim))
        self.register_buffer("y_mean", torch.zeros(()))
        self.register_buffer("y_std", torch.ones(()))

    @torch.no_grad()
    def fit_normalizer(self, x: np.ndarray, y: np.ndarray) -> None:
        x64 = np.asarray(x, dtype=np.float64)
        with np.errstate(all="ignore"):
            mean = np.nan_to_num(np.nanmean(x64, axis=0)) if np.isnan(x64).any() else x64.mean(axis=0)
            std = np.nan_to_num(np.nanstd(x64, axis=0)) if np.isnan(x64).any() else x64.std(axis=0)
        self.x_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.x_std.copy_(torch.as_tensor(np.where(std > 1e-8, std, 1.0), dtype=torch.float32))
        if self.regression:
            y64 = np.asarray(y, dtype=np.float64)
            self.y_mean.fill_(float(y64.mean()))
            self.y_std.fill_(float(y64.std()) if y64.std() > 1e-8 else 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.where(torch.isnan(x), self.x_mean, x)  # missing features: the training data's mean
        out = self.body((x - self.x_mean) / self.x_std)
        if self.regression:
            return out.squeeze(-1) * self.y_std + self.y_mean
        return out
