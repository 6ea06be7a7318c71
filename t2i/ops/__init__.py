"""Performance kernels: each computes a plain composition of PyTorch layers, faster or in less memory.

The models call them by name; each module's docstring states the math it equals, and ``tests/test_ops.py`` checks
each against that composition in float64 (values and gradients).

* :func:`up2_conv3x3` / :class:`UpsampleConv3x3`: nearest x2 upsample + conv3x3 as four 2x2 phase convolutions;
* :func:`bn_glu`: BatchNorm + GLU keeping only the BatchNorm input for backward;
* :class:`RecomputeGLUOutputs`: layers after a BatchNorm + GLU keep nothing of its output for backward;
* :func:`fold_batchnorm`, :func:`conv_bn`, :func:`conv_bn_glu`: BatchNorm with fixed statistics folded into its conv;
* :class:`ConcatConv2d` / :class:`ConcatConv1x1`: a conv over a channel concatenation ``[a; b]``, part by part;
* :func:`frozen_conv_relu`, :func:`frozen_pool_conv1x1_relu`: frozen conv + ReLU keeping a 1-byte mask for backward.
"""

from t2i.ops.bn_folding import conv_bn, conv_bn_glu, fold_batchnorm
from t2i.ops.bn_glu import bn_glu
from t2i.ops.concat_conv import Channels, ConcatConv1x1, ConcatConv2d, add_channels, concat, conv2d_of_concat
from t2i.ops.frozen_conv import frozen_conv_relu, frozen_pool_conv1x1_relu
from t2i.ops.recompute_glu import RecomputeGLUOutputs
from t2i.ops.upsample_conv import UpsampleConv3x3, up2_conv3x3

__all__ = [
    "Channels",
    "ConcatConv1x1",
    "ConcatConv2d",
    "RecomputeGLUOutputs",
    "UpsampleConv3x3",
    "add_channels",
    "bn_glu",
    "concat",
    "conv2d_of_concat",
    "conv_bn",
    "conv_bn_glu",
    "fold_batchnorm",
    "frozen_conv_relu",
    "frozen_pool_conv1x1_relu",
    "up2_conv3x3",
]
