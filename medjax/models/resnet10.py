"""ResNet-10 (He et al., 2016), one basic block per stage (medjax.models.cnn)."""

from medjax.models import cnn


class Model(cnn.ResNet):
    stage_sizes = (1, 1, 1, 1)
    block = cnn.BasicBlock
