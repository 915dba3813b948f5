"""Switchyard's Python client for inference engines: the router's TCP data path (RouterDataClient), its gRPC
service (switchyard_client.grpc_client.RouterGrpcClient, which needs grpcio and is imported on its own) and the
tensor codec."""

from .data_path import PREFACE, RouterDataClient
from .request import RouterError, forward_request
from .tensor import bf16_bits_to_float32, float32_to_bf16_bits, from_tensor, to_tensor

__all__ = [
    "PREFACE",
    "RouterDataClient",
    "RouterError",
    "bf16_bits_to_float32",
    "float32_to_bf16_bits",
    "forward_request",
    "from_tensor",
    "to_tensor",
]
