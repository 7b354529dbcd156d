"""What ``torch.fx`` keeps as single calls when it traces OverLoCK (timm's no-trace registry).

Symbolic tracing runs ``forward`` on proxies, which have no concrete shape, device, stride or ``requires_grad``.
The layers below choose their computation from exactly those (the CPU fast paths of the depthwise and 1 x 1 convs,
the memory-saving autograd functions, the channels-last LayerNorm, the ContMix block's working size and compiled
op), so FX records each of them as one call instead of tracing into it, and runs the real layer when the graph runs.
timm's FX users (``timm.models.create_feature_extractor``, ``FeatureGraphNet``, its tests) read this registry; with
torchvision's ``create_feature_extractor`` pass ``tracer_kwargs=dict(leaf_modules=timm.layers.get_notrace_modules(),
autowrap_functions=timm.layers.get_notrace_functions())``. The input check is wrapped where it is defined
(:func:`mmoverlock.models.trunk.prepare_images`).
"""
from timm.layers import register_notrace_module

from .blocks import ContMixBlock
from ..ops.depthwise import DepthwiseConv2d
from ..ops.pointwise import PointwiseConv2d
from .layers import GRN, DilatedReparamBlock, FusingSequential, LayerNorm2d

#: The layer classes FX treats as leaves (subclasses included, such as ``ResDWConv``).
LEAF_MODULES = (DepthwiseConv2d, PointwiseConv2d, DilatedReparamBlock, FusingSequential, LayerNorm2d, GRN, ContMixBlock)

for _module in LEAF_MODULES:
    register_notrace_module(_module)
