"""Generated images in a map-style Dataset with augmentation (see examples/images_dataset.yaml).

Nothing is downloaded: :func:`shapes` draws small grayscale images of four shapes (a horizontal
bar, a vertical bar, a square outline, a diagonal) at random places with noise. The transforms
are plain torch (torchvision is not needed) and follow its convention: the dataset applies
``transform`` in ``__getitem__``, so every epoch sees new flips and crops. The factory returns a
dict of splits so that the validation dataset is built without augmentation.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

CLASSES = ["horizontal", "vertical", "square", "diagonal"]


def _draw(label: int, size: int, gen: torch.Generator) -> torch.Tensor:
    img = torch.zeros(size, size)
    length = int(torch.randint(size // 3, size // 2 + 1, (), generator=gen))
    r, c = (int(v) for v in torch.randint(1, size - length - 1, (2,), generator=gen))
    if label == 0:
        img[r, c:c + length] = 1.0
    elif label == 1:
        img[r:r + length, c] = 1.0
    elif label == 2:
        img[r, c:c + length] = img[r + length - 1, c:c + length] = 1.0
        img[r:r + length, c] = img[r:r + length, c + length - 1] = 1.0
    else:
        idx = torch.arange(length)
        img[r + idx, c + idx] = 1.0
    return img + 0.3 * torch.randn(size, size, generator=gen)


class RandomFlip:
    """Flip an image (C, H, W) left-right with probability ``p`` (torch's global RNG)."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return img.flip(-1) if float(torch.rand(())) < self.p else img


class RandomCrop:
    """Pad by ``padding`` pixels and crop back to the original size at a random place."""

    def __init__(self, padding: int = 2) -> None:
        self.padding = padding

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        p = self.padding
        h, w = img.shape[-2:]
        padded = nn.functional.pad(img, (p, p, p, p))
        top, left = (int(v) for v in torch.randint(0, 2 * p + 1, (2,)))
        return padded[..., top:top + h, left:left + w]


class Compose:
    def __init__(self, transforms: list) -> None:
        self.transforms = transforms

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        for t in self.transforms:
            img = t(img)
        return img


class ShapeImages(Dataset):
    """Images ``(1, size, size)`` float32 and their labels; ``targets`` and ``classes`` as in torchvision."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, transform=None) -> None:
        self.images = images
        self.targets = targets
        self.classes = CLASSES
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        img = self.images[index]
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[index])


def shapes(n: int = 2000, size: int = 16, val_fraction: float = 0.2, seed: int = 0, augment: bool = True):
    """``{"train": ..., "val": ...}``: generated shape images; the train split is augmented (flips,
    crops), the val split is not."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % len(CLASSES)
    images = torch.stack([_draw(int(label), size, gen) for label in labels]).unsqueeze(1)
    order = torch.randperm(n, generator=gen)
    n_val = int(n * val_fraction)
    val, train = order[:n_val], order[n_val:]
    transform = Compose([RandomFlip(), RandomCrop(2)]) if augment else None
    return {"train": ShapeImages(images[train], labels[train], transform),
            "val": ShapeImages(images[val], labels[val])}


class SmallCNN(nn.Module):
    """Two conv blocks and a linear head for ``(1, size, size)`` images."""

    def __init__(self, out_features: int, channels: int = 8, hidden: int = 32, size: int = 16,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(channels, channels * 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(channels * 2 * (size // 4) ** 2, hidden), nn.ReLU(),
                                  nn.Dropout(dropout), nn.Linear(hidden, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
