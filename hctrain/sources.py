"""Batch sources: where an algorithm draws xi and zeta from.

A *batch source* is a callable that returns one minibatch per call, with a random state that
round-trips through ``state_dict`` / ``load_state_dict`` so that a resumed run draws the same
batches. Three kinds are accepted wherever a source is expected (:func:`as_source`):

* a ``torch.utils.data.DataLoader`` (wrapped in :class:`LoaderSource`: it cycles through epochs,
  and a batch is whatever the loader yields: tensors, tuples, dicts);
* a ``torch.utils.data.Dataset`` with a ``batch_size`` (a shuffling DataLoader over it);
* any object with ``__call__``, ``state_dict`` and ``load_state_dict`` (hctrain's
  :class:`~hctrain.problem.TensorSampler` is one).

Every call draws a fresh batch: an algorithm that needs independent samples (SSL-ALM's zeta_1
and zeta_2, SSw's switching sample and step sample, Stochastic Ghost's geometric batch) simply
calls the source once per sample.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from .checks import check_integer, check_seed


class LoaderSource:
    """Endless batches from a DataLoader, epoch after epoch, with an exact resume.

    The order of epoch e is drawn from a seed derived from ``(seed, e)``: the loader's
    ``generator``, its sampler's and its batch sampler's (when they have one) and torch's global
    generator are seeded with it while the epoch's iterator starts, and the global one is
    restored afterwards (the loader's shuffling never consumes, and never depends on, the
    caller's random stream); a sampler with ``set_epoch`` (``DistributedSampler``) is told the
    epoch. Random transforms inside the dataset draw from the global generator while batches are
    loaded, outside that context, as they would in a plain loop. ``state_dict()`` holds
    ``(seed, epoch, position)``; ``load_state_dict`` rebuilds epoch e's order and skips the
    batches already drawn, so a resumed run draws exactly the batches the uninterrupted run
    would have drawn, with ``shuffle=True`` too. (Skipping loads those batches once more: a
    resume costs up to one epoch of data loading.)
    """

    def __init__(self, loader: DataLoader, seed: int | None = None):
        if not isinstance(loader, DataLoader):
            raise TypeError(f"LoaderSource wraps a torch.utils.data.DataLoader, got {type(loader).__name__}")
        if isinstance(loader.dataset, IterableDataset):
            raise TypeError(
                "the DataLoader iterates an IterableDataset, whose position cannot be restored; "
                "use a map-style Dataset (with __getitem__ and __len__), or pass a callable batch "
                "source with state_dict/load_state_dict")
        if len(loader) == 0:
            raise ValueError("the DataLoader yields no batches (an empty dataset, or drop_last=True "
                             "with fewer rows than batch_size)")
        self.loader = loader
        self.seed = torch.initial_seed() % 2**32 if seed is None else check_seed("seed", seed)
        self.epoch = 0
        self.position = 0  # batches drawn from the current epoch
        self._iterator: Iterator[Any] | None = None

    def _epoch_seed(self, epoch: int) -> int:
        return (self.seed * 1_000_003 + epoch) % 2**63

    def _generators(self) -> list[torch.Generator]:
        """The generators that decide an epoch's order: the loader's, its sampler's and its batch
        sampler's sampler's (each seeded with the epoch's seed); without any, torch's global one."""
        loader = self.loader
        found: list[torch.Generator] = []
        for owner in (loader, loader.sampler, getattr(loader.batch_sampler, "sampler", None)):
            generator = getattr(owner, "generator", None)
            if isinstance(generator, torch.Generator) and all(generator is not g for g in found):
                found.append(generator)
        return found

    @contextlib.contextmanager
    def _seeded(self, epoch: int):
        """Within: every generator of the epoch's order seeded from (seed, epoch), torch's global
        one too (restored afterwards: the caller's stream is never consumed), and a sampler with
        ``set_epoch`` (DistributedSampler) told the epoch."""
        seed = self._epoch_seed(epoch)
        for owner in (self.loader.sampler, getattr(self.loader.batch_sampler, "sampler", None)):
            if callable(getattr(owner, "set_epoch", None)):
                owner.set_epoch(epoch)
        for generator in self._generators():
            generator.manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield

    def _start_epoch(self, skip: int) -> Any:
        """Start the current epoch's iterator (seeded) and return its batch number ``skip``."""
        with self._seeded(self.epoch):
            self._iterator = iter(self.loader)
            batch = next(self._iterator)  # a sampler draws its order on the first batch
            for _ in range(skip):  # a resume: the batches already drawn, in the same context
                batch = next(self._iterator)
        return batch

    def __call__(self) -> Any:
        if self._iterator is None:
            batch = self._start_epoch(self.position)
        else:
            try:
                batch = next(self._iterator)
            except StopIteration:
                self.epoch += 1
                self.position = 0
                batch = self._start_epoch(0)
        self.position += 1
        return batch

    def __len__(self) -> int:
        """Batches per epoch."""
        return len(self.loader)

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position,
                "batches_per_epoch": len(self.loader)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"seed", "epoch", "position"} - set(state)
        if missing:
            raise ValueError(f"not a LoaderSource state: it lacks {sorted(missing)}")
        if state.get("batches_per_epoch", len(self.loader)) != len(self.loader):
            raise ValueError(f"the state is for a loader of {state['batches_per_epoch']} batches per "
                             f"epoch, this one has {len(self.loader)}: resume with the same data and "
                             "batch_size")
        self.seed, self.epoch, self.position = int(state["seed"]), int(state["epoch"]), int(state["position"])
        self._iterator = None
        if self.position >= len(self.loader):  # the epoch was exhausted: the next draw starts e+1
            self.epoch, self.position = self.epoch + 1, 0
        elif self.position > 0:
            # rebuild the epoch's order now and skip what was drawn, so the next call continues
            self._start_epoch(self.position - 1)


def as_source(data: Any, name: str = "data", batch_size: int | None = None,
              seed: int | None = None) -> Any:
    """``data`` as a batch source (see the module docstring), or a TypeError naming the fix."""
    if isinstance(data, DataLoader):
        return LoaderSource(data, seed=seed)
    if isinstance(data, Dataset):
        if batch_size is None:
            raise ValueError(f"{name} is a Dataset: give batch_size= as well (it is wrapped in "
                             f"DataLoader({name}, batch_size, shuffle=True)), or pass a DataLoader")
        batch_size = check_integer("batch_size", batch_size, low=1, fix="; e.g. batch_size=64")
        return LoaderSource(DataLoader(data, batch_size=batch_size, shuffle=True,
                                       generator=torch.Generator()), seed=seed)
    if callable(getattr(data, "sample", None)) and not callable(data):
        raise TypeError(
            f"{name} is an index sampler ({type(data).__name__}: .sample() draws row indices), not a "
            "batch source: wrap it with the tensors it indexes, e.g. hctrain.problem.TensorSampler(x, "
            f"y, group, {name}), or pass a DataLoader")
    if callable(data) and callable(getattr(data, "state_dict", None)) and callable(
            getattr(data, "load_state_dict", None)):
        return data
    if isinstance(data, torch.Tensor) or isinstance(data, (tuple, list)):
        raise TypeError(
            f"{name} is a {type(data).__name__}, not a batch source: wrap tensors in a "
            "torch.utils.data.TensorDataset and pass DataLoader(dataset, batch_size=..., shuffle=True)")
    raise TypeError(
        f"{name} must be a torch DataLoader, a Dataset (with batch_size=), or a callable batch source "
        f"with state_dict() and load_state_dict(); got {type(data).__name__}")
