"""ResNet-34 (He et al., 2016), basic blocks (medjax.models.cnn)."""

from medjax.models import cnn


class Model(cnn.ResNet):
    stage_sizes = (3, 4, 6, 3)
    block = cnn.BasicBlock
