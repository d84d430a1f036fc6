"""ResNet-50 (He et al., 2016), bottleneck blocks (medjax.models.cnn)."""

from medjax.models import cnn


class Model(cnn.ResNet):
    stage_sizes = (3, 4, 6, 3)
    block = cnn.BottleneckBlock
