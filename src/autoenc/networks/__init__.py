"""The networks: builders for encoders and decoders that record their arguments as a config.

Nothing here is required of user networks: any ``nn.Module`` mapping ``(b, d_in)`` to
``(b, d_out)`` can stand in for an encoder or decoder. :func:`build_network` rebuilds an
autoenc network from its config (what model files store).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from autoenc.networks.conv import ConvDecoder, ConvEncoder
from autoenc.networks.mlp import ACTIVATIONS, Decoder, Encoder, fused_inference, mlp
from autoenc.networks.quantizer import Quantized, VectorQuantizer

__all__ = [
    "ACTIVATIONS",
    "NETWORKS",
    "mlp",
    "Encoder",
    "Decoder",
    "fused_inference",
    "ConvEncoder",
    "ConvDecoder",
    "VectorQuantizer",
    "Quantized",
    "build_network",
]

#: The network classes :func:`build_network` rebuilds, by the name their config records.
NETWORKS: dict[str, type[nn.Module]] = {
    cls.__name__: cls for cls in (Encoder, Decoder, ConvEncoder, ConvDecoder, VectorQuantizer)
}


def build_network(config: dict[str, Any]) -> nn.Module:
    """Rebuild an autoenc network from its ``config`` (with its ``"type"`` key)."""
    kwargs = dict(config)
    kind = kwargs.pop("type", None)
    if kind not in NETWORKS:
        raise ValueError(
            f"unknown network type {kind!r} in the config; expected one of {sorted(NETWORKS)}. "
            "A model with a network of your own loads with autoenc.load(path, model=...), "
            "given the model built in code"
        )
    try:
        return NETWORKS[kind](**kwargs)
    except TypeError as err:
        raise ValueError(f"the config of a {kind} does not fit its arguments: {err}") from err
