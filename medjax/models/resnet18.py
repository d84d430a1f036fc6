"""ResNet-18 (He et al., 2016), MedMNIST v2's, with small_input (medjax.models.cnn)."""

from medjax.models import cnn


class Model(cnn.ResNet):
    stage_sizes = (2, 2, 2, 2)
    block = cnn.BasicBlock
