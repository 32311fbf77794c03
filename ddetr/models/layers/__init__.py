"""Building blocks of Deformable DETR: the multi-scale deformable attention (Eq. 3), the
positional encodings, the deformable encoder and decoder, and a small MLP."""
from .deformable_decoder import (
    DeformableDetrTransformerDecoder,
    DeformableDetrTransformerDecoderLayer,
)
from .deformable_encoder import (
    DeformableDetrTransformerEncoder,
    DeformableDetrTransformerEncoderLayer,
)
from .mlp import MLP
from .multi_scale_deformable_attention import MultiScaleDeformableAttention
from .positional_encoding import SinePositionalEncoding, sine_embed

__all__ = [
    'MultiScaleDeformableAttention', 'SinePositionalEncoding', 'sine_embed',
    'DeformableDetrTransformerEncoder', 'DeformableDetrTransformerEncoderLayer',
    'DeformableDetrTransformerDecoder', 'DeformableDetrTransformerDecoderLayer', 'MLP'
]
