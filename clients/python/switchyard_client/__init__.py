"""Switchyard's Python client for inference engines: the router's TCP data path (RouterDataClient) and the tensor
codec. gRPC callers can use the same generated messages (switchyard.v1.router_pb2) with grpcio."""

from .data_path import PREFACE, RouterDataClient, RouterError
from .tensor import bf16_bits_to_float32, float32_to_bf16_bits, from_tensor, to_tensor

__all__ = [
    "PREFACE",
    "RouterDataClient",
    "RouterError",
    "bf16_bits_to_float32",
    "float32_to_bf16_bits",
    "from_tensor",
    "to_tensor",
]
