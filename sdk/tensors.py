"""Tensors as the Encode RPC carries them: a dtype, a shape and raw C-order bytes.

numpy arrays and torch tensors (CPU or CUDA) are accepted; torch is never
imported here, it is recognised by the object's module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ferry.v1 import common_pb2

NUMPY_DATA_TYPES: dict[np.dtype[Any], common_pb2.DataType.ValueType] = {
    np.dtype(np.uint8): common_pb2.DATA_TYPE_UINT8,
    np.dtype(np.uint16): common_pb2.DATA_TYPE_UINT16,
    np.dtype(np.int8): common_pb2.DATA_TYPE_INT8,
    np.dtype(np.int16): common_pb2.DATA_TYPE_INT16,
    np.dtype(np.int32): common_pb2.DATA_TYPE_INT32,
    np.dtype(np.int64): common_pb2.DATA_TYPE_INT64,
    np.dtype(np.float16): common_pb2.DATA_TYPE_FLOAT16,
    np.dtype(np.float32): common_pb2.DATA_TYPE_FLOAT32,
    np.dtype(np.float64): common_pb2.DATA_TYPE_FLOAT64,
    np.dtype(np.bool_): common_pb2.DATA_TYPE_BOOL,
}


@dataclass(frozen=True)
class TensorPayload:
    header: common_pb2.TensorHeader
    data: memoryview  # C-order bytes, len == prod(shape) * itemsize

    def chunks(self, size: int) -> list[memoryview]:
        """Slices of at most `size` bytes, cut between entries of the first dimension where one fits.

        A video's frames (or an image's rows) then arrive whole in every
        message, so the server can encode straight from the message it got;
        and the entries are spread evenly, so no message is a small remainder.
        """
        shape = list(self.header.shape)
        step = len(self.data) // shape[0] if shape and shape[0] else 0
        if 0 < step <= size:
            messages = -(-shape[0] // (size // step))  # as few as whole entries allow
            size = step * -(-shape[0] // messages)
        return [self.data[offset : offset + size] for offset in range(0, len(self.data), size)]


def is_torch_tensor(value: object) -> bool:
    return type(value).__module__.startswith("torch")


def _from_torch(tensor: Any) -> tuple[np.ndarray, common_pb2.DataType.ValueType | None]:
    import torch  # only reached when the caller handed us a torch tensor

    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()  # one device→host copy; CUDA memory is not addressable here
    tensor = tensor.contiguous()
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: ship the raw 16-bit patterns
        return tensor.view(torch.int16).numpy(), common_pb2.DATA_TYPE_BFLOAT16
    return tensor.numpy(), None


def tensor_payload(tensor: Any) -> TensorPayload:
    forced: common_pb2.DataType.ValueType | None = None
    if is_torch_tensor(tensor):
        array, forced = _from_torch(tensor)
    else:
        array = np.asarray(tensor)
    array = np.ascontiguousarray(array)
    if forced is None:
        try:
            forced = NUMPY_DATA_TYPES[array.dtype.newbyteorder("=") if array.dtype.byteorder == ">" else array.dtype]
        except KeyError:
            raise TypeError(f"tensors of dtype {array.dtype} cannot be encoded") from None
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
    header = common_pb2.TensorHeader(dtype=forced, shape=list(array.shape))
    # Flat bytes through numpy: memoryview.cast refuses zero-size shapes, which must reach the server to be refused.
    return TensorPayload(header, array.reshape(-1).view(np.uint8).data)
