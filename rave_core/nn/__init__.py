"""Building blocks shared by every model: streaming convolutions and weight norm."""
from .conv import Conv1d, ConvTranspose1d, Delay, get_padding
from .streaming import StreamingModule, configure_delay, set_streaming, streaming_layers
from .weight_norm import apply_weight_norm, remove_weight_norm

__all__ = [
    "Conv1d", "ConvTranspose1d", "Delay", "get_padding", "StreamingModule",
    "configure_delay", "set_streaming", "streaming_layers", "apply_weight_norm",
    "remove_weight_norm",
]
