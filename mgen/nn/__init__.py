"""Building blocks shared by every model: one attention function, blocks, embeddings."""

from mgen.nn.attention import BACKENDS, attention, available_backends, resolve_backend
from mgen.nn.embeddings import FourierTimestepEmbedder, LabelEmbedder, TimestepEmbedder, sincos_1d, sincos_2d, timestep_embedding
from mgen.nn.layers import AdaLNBlock, Attention, KVCache, Mlp, ViTBlock, modulate
from mgen.nn.rope import Rope2D
from mgen.nn.swiglu import SwiGLU

__all__ = [
    "BACKENDS", "attention", "available_backends", "resolve_backend",
    "LabelEmbedder", "TimestepEmbedder", "sincos_1d", "sincos_2d", "timestep_embedding",
    "AdaLNBlock", "Attention", "KVCache", "Mlp", "ViTBlock", "modulate",
    "FourierTimestepEmbedder", "Rope2D", "SwiGLU",
]
