"""Token ids in a map-style Dataset and a bag-of-embeddings classifier (examples/text_tokens.yaml).

:func:`keywords` makes synthetic "documents": sequences of token ids drawn from a background
vocabulary, with a few keywords of one topic mixed in; the label is the topic. The ids stay int64
all the way to the model (``nn.EmbeddingBag`` needs integers). One dataset is returned; the
experiment splits it with its seed, stratified by the ``targets`` attribute.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset, IterableDataset


class TokenDocuments(Dataset):
    """``(ids, topic)`` pairs: ids int64 ``(length,)``; ``targets`` lets the split be stratified."""

    def __init__(self, ids: torch.Tensor, targets: torch.Tensor) -> None:
        self.ids = ids
        self.targets = targets

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        return self.ids[index], int(self.targets[index])


def keywords(n: int = 4000, length: int = 24, vocab_size: int = 500, topics: int = 4, per_topic: int = 5,
             mentions: int = 2, seed: int = 0) -> TokenDocuments:
    """Documents of ``length`` token ids; each mentions ``mentions`` keywords of its topic (topic k's
    keywords are ids ``k*per_topic .. (k+1)*per_topic - 1``), the rest is background vocabulary."""
    gen = torch.Generator().manual_seed(seed)
    first = topics * per_topic
    ids = torch.randint(first, vocab_size, (n, length), generator=gen)
    targets = torch.randint(0, topics, (n,), generator=gen)
    for m in range(mentions):
        where = torch.randint(0, length, (n,), generator=gen)
        word = targets * per_topic + torch.randint(0, per_topic, (n,), generator=gen)
        ids[torch.arange(n), where] = word
    return TokenDocuments(ids, targets)


class BagOfEmbeddings(nn.Module):
    """``nn.EmbeddingBag`` (mean of the token embeddings) and a linear layer."""

    def __init__(self, out_features: int, vocab_size: int = 500, dim: int = 32, mode: str = "mean") -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(vocab_size, dim, mode=mode)
        self.out = nn.Linear(dim, out_features)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.bag(ids))


class StreamedDocuments(IterableDataset):
    """The same documents as an iterable dataset (read in order, as from a file or a socket)."""

    def __init__(self, n: int = 2000, seed: int = 0, **options) -> None:
        self.n, self.seed, self.options = n, seed, options

    def __iter__(self):
        docs = keywords(self.n, seed=self.seed, **self.options)
        for i in range(self.n):
            yield docs[i]


def keyword_streams(n: int = 2000, seed: int = 0, **options) -> dict:
    """``{"train": ..., "val": ...}`` iterable datasets: an iterable dataset comes as a dict of splits."""
    return {"train": StreamedDocuments(n, seed, **options), "val": StreamedDocuments(n // 4, seed + 1, **options)}
