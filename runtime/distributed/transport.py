"""Step inputs as bytes for the pipes to the workers: ordinary pickling, except that tensors travel as numpy
arrays (torch's own pickling goes through torch.save, several times slower for the small tensors of a step)
and land on the receiving rank's device."""

from __future__ import annotations

import io
import pickle

import torch


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: object) -> object:
        return obj.cpu().numpy() if isinstance(obj, torch.Tensor) else None


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, device: torch.device) -> None:
        super().__init__(io.BytesIO(data))
        self.device = device

    def persistent_load(self, pid: object) -> torch.Tensor:
        return torch.from_numpy(pid).to(self.device)


def dumps(obj: object) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buffer.getvalue()


def loads(data: bytes, device: torch.device) -> object:
    return _Unpickler(data, device).load()
