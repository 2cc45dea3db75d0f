"""An emulation of nn~'s buffering, as measured in a real PureData (host contracts 9, 12,
25-30: docs/host-contracts.md): 64-sample signal vectors, circular buffers, input
decimation (each value the last sample of its group), output hold, threaded (the call
joined one block later) and unthreaded processing.

``rave-deploy check`` runs a TorchScript file through :class:`NnTildeHost` and compares
it with the file called directly, delayed by the latency nn~ adds.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import torch

#: PureData's signal vector (nn~'s latency is counted against it).
PD_VECTOR = 64


def nn_tilde_latency(block: int, ratio: int) -> Dict[str, int]:
    """Samples nn~ adds (Pd's vector of 64; host contract 28): threaded, with the buffer
    argument ``block`` (raised to ``ratio``, the largest of the model's methods); and
    unthreaded, which is buffer argument 0 and so runs at ``ratio`` whatever ``block``."""
    return {"threaded": 2 * max(block, ratio) - PD_VECTOR,
            "unthreaded": max(ratio - PD_VECTOR, 0)}


class _Circular:
    """nn~'s ``circular_buffer``, for several channels moving in lockstep: ``put`` past a
    full buffer overwrites the oldest samples, ``get`` past the stored ones returns zeros
    (the same results as its sample-by-sample loops, computed with index arrays)."""

    def __init__(self, channels: int, size: int) -> None:
        self.buf = np.zeros((channels, size), np.float32)
        self.size, self.head, self.count = size, 0, 0

    @property
    def is_full(self) -> bool:
        return self.count == self.size

    def put(self, x: np.ndarray) -> None:
        x = x[:, -self.size:]
        n = x.shape[-1]
        self.buf[:, (self.head + np.arange(n)) % self.size] = x
        self.head = (self.head + n) % self.size
        self.count = min(self.count + n, self.size)

    def get(self, n: int) -> np.ndarray:
        out = np.zeros((self.buf.shape[0], n), np.float32)
        k = min(n, self.count)
        tail = (self.head - self.count) % self.size
        out[:, :k] = self.buf[:, (tail + np.arange(k)) % self.size]
        self.count -= k
        return out


def _power_ceil(x: int) -> int:
    return 1 if x <= 1 else 1 << (int(x) - 1).bit_length()


def attribute_value(module, name: str, value: str):
    """``value`` (as typed in a host message: Pd's ``set NAME VALUE``, NN.ar's
    ``attributes:``) as the type nn~'s backend gives attribute ``name`` (its
    ``NAME_params`` type code: 0 bool, 1 int, 2 float, 3 str). Raises ``ValueError`` for a
    name the file lacks, listing those it has."""
    if name not in module.get_attributes():
        raise ValueError(f"the file has no attribute {name!r} (it has "
                         f"{', '.join(a for a in module.get_attributes() if a != 'none')})")
    code = int(getattr(module, f"{name}_params")[0])
    if code == 0:
        return float(value) != 0
    return {1: lambda v: int(float(v)), 2: float, 3: str}[code](value)


def apply_attributes(module, settings) -> None:
    """Set each ``(NAME, VALUE)`` of ``settings`` on ``module`` through its setter, the
    value read as :func:`attribute_value` reads it: what a host's messages do."""
    for name, value in settings:
        getattr(module, f"set_{name}")(attribute_value(module, name, value))


def nn_tilde_buffer(module, buffer_size: int) -> int:
    """The buffer nn~ runs ``module`` with for its buffer argument ``buffer_size``: the
    largest ratio of *all* the model's methods for 0 (unthreaded) or anything below it,
    else the next power of two. NN.ar resolves its ``bufferSize`` the same way."""
    higher = 1
    for m in module.get_methods():
        p = getattr(module, f"{m}_params")
        higher = max(higher, int(p[1]), int(p[3]))
    return higher if buffer_size < higher else _power_ceil(buffer_size)


class NnTildeHost:
    """nn~ (its PureData frontend and shared backend) driving one method of a module.

    Args:
        module: the loaded TorchScript module.
        method: ``"encode"``, ``"decode"`` or ``"forward"``.
        buffer_size: the object's buffer argument (``[nn~ model.ts forward 2048]``);
            0 is nn~'s unthreaded mode. As nn~ does, it is raised to the largest ratio
            of *all* the model's methods and rounded up to a power of two.
        batches: ``mc.nn~`` voices (PureData: 1).
        vector: the host's DSP vector (Pd: 64).
        threaded: ``None``: nn~'s rule (a buffer size of 0 means unthreaded). ``False``:
            each full buffer is computed at once, whatever its size: NN.ar, nn~'s
            SuperCollider port, in a non-real-time server.

    :meth:`run` takes and returns audio-rate signals ``(batches, channels, T)``: latent
    inputs are held signals (nn~ keeps the last sample of every ``in_ratio``), latent
    outputs are held for ``out_ratio`` samples. Threaded: each buffer is computed while
    the next one fills (``2 B - vector`` samples of latency); unthreaded: at once
    (``B - vector``).
    """

    def __init__(self, module, method: str, buffer_size: int = 0, batches: int = 1,
                 vector: int = PD_VECTOR, threaded: Optional[bool] = None) -> None:
        self.module, self.method, self.batches, self.vector = module, method, batches, vector
        self.params = [int(v) for v in getattr(module, f"{method}_params")]
        self.buffer = nn_tilde_buffer(module, buffer_size)
        self.threaded = buffer_size != 0 if threaded is None else threaded
        self.errors: List[str] = []

    @property
    def latency(self) -> int:
        """Samples nn~ adds (host contract 28)."""
        return 2 * self.buffer - self.vector if self.threaded else self.buffer - self.vector

    def _perform(self, model_in: np.ndarray) -> Optional[np.ndarray]:
        """Backend::perform: ``model_in`` ``(in_dim * batches, B)``, channel-major."""
        in_dim, in_ratio, out_dim, out_ratio = self.params
        nb, n = self.batches, self.buffer
        x = torch.from_numpy(model_in.copy()).reshape(1, in_dim * nb, n)
        x = x.reshape(in_dim, nb, -1, in_ratio).select(-1, -1).permute(1, 0, 2)
        with torch.inference_mode():
            try:
                y = getattr(self.module, self.method)(x)
                y = y.repeat_interleave(out_ratio).reshape(nb, out_dim, -1)
            except Exception as exc:  # nn~ prints it and skips the block
                self.errors.append(f"{type(exc).__name__}: {exc}")
                return None
        if y.shape[-1] != n:
            self.errors.append(f"model output size is not consistent, expected {n} samples, "
                               f"got {y.shape[-1]}")
            return None
        # out_buffer[j * out_dim + i] = batch j, channel i
        return y.reshape(nb * out_dim, n).numpy().copy()

    def run(self, signal: np.ndarray) -> np.ndarray:
        in_dim, _, out_dim, _ = self.params
        nb, n, vec = self.batches, self.buffer, self.vector
        if signal.shape[:2] != (nb, in_dim) or signal.shape[-1] % vec:
            raise ValueError(f"signal must be ({nb}, {in_dim}, k * {vec}), got {signal.shape}")
        # in_buffer[d * batches + b]: channel-major, as the backend reshapes it
        planar = np.ascontiguousarray(signal.transpose(1, 0, 2).reshape(in_dim * nb, -1), np.float32)
        in_buf, out_buf = _Circular(in_dim * nb, n), _Circular(out_dim * nb, n)
        model_out = np.zeros((out_dim * nb, n), np.float32)
        pending: Optional[np.ndarray] = None
        out = np.zeros((out_dim * nb, planar.shape[-1]), np.float32)
        for t in range(0, planar.shape[-1], vec):
            in_buf.put(planar[:, t:t + vec])
            if in_buf.is_full:
                if self.threaded and pending is not None:   # join the previous block
                    model_out = pending
                model_in = in_buf.get(n)
                if not self.threaded:
                    result = self._perform(model_in)
                    model_out = result if result is not None else model_out
                out_buf.put(model_out)
                if self.threaded:
                    result = self._perform(model_in)
                    pending = result if result is not None else model_out
            out[:, t:t + vec] = out_buf.get(vec)
        return out.reshape(nb, out_dim, -1)
