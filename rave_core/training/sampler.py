"""The order in which training windows are drawn, as an endless stream that can resume.

Training counts steps, not epochs: one step takes one batch per process. The stream is
a function of ``(seed, rank, world size, batch)`` only, so the position in it is the
number of batches already taken (the global step), and a resumed run draws exactly the
windows the uninterrupted run would have drawn.
"""
from __future__ import annotations

from typing import Iterator

from torch.utils.data import Dataset, DistributedSampler

from ..data import DataError


class ResumableSampler(DistributedSampler):
    """This process's share of shuffled epochs, endlessly, starting at batch ``start_batch``.

    Epoch ``e`` is :class:`~torch.utils.data.DistributedSampler`'s shuffle for
    ``seed + e``: a permutation of the windows, trimmed to a multiple of the world size
    and dealt out to the ranks; each rank then keeps whole batches only. With one process
    it is a plain seeded shuffle.

    Args:
        dataset: the training windows.
        batch_size: windows per batch on this process.
        num_replicas: number of processes (world size).
        rank: this process.
        seed: shuffling seed (the same on every rank).
        start_batch: batches already taken (resume point).

    Raises:
        DataError: fewer windows than one batch on every process.
    """

    def __init__(self, dataset: Dataset, batch_size: int, num_replicas: int = 1,
                 rank: int = 0, seed: int = 0, start_batch: int = 0) -> None:
        n = len(dataset)  # type: ignore[arg-type]
        if n < batch_size * num_replicas:
            per = f" ({batch_size} per process x {num_replicas} processes)" if num_replicas > 1 else ""
            raise DataError(
                f"the training split has {n} windows but one batch needs {batch_size * num_replicas}"
                f"{per}; add audio, or lower --batch or --n_signal")
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True,
                         seed=seed, drop_last=True)
        self.batch_size = batch_size
        self.batches_per_epoch = self.num_samples // batch_size
        self.start_batch = start_batch

    def __iter__(self) -> Iterator[int]:
        epoch, offset = divmod(self.start_batch, self.batches_per_epoch)
        keep = self.batches_per_epoch * self.batch_size
        while True:
            self.set_epoch(epoch)
            indices = list(super().__iter__())[:keep]
            yield from indices[offset * self.batch_size:]
            offset, epoch = 0, epoch + 1

    def epoch_of(self, batches: int) -> int:
        """Completed epochs after ``batches`` batches."""
        return batches // self.batches_per_epoch
