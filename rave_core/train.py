"""One training process, for torchrun: ``torchrun --nproc_per_node N -m rave_core.train ...``.

Takes the flags of ``rave-core train``. Under torchrun every process trains on its share
of the data with gradients averaged by DistributedDataParallel (NCCL on GPUs, gloo with
``--device cpu``); rank 0 alone validates, logs and writes checkpoints. Run without
torchrun it is a plain single-process ``rave-core train``.
"""
from __future__ import annotations

from .cli import torchrun_train


def main(argv=None) -> None:
    torchrun_train(args=argv, prog_name="python -m rave_core.train")


if __name__ == "__main__":
    main()
