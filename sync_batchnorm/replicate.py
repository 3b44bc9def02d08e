"""`DataParallelWithCallback` is kept for imports of old code; prefer DDP via torchrun."""
from torch import nn


class DataParallelWithCallback(nn.DataParallel):
    """`nn.DataParallel`; the callback that synchronised the vendored BatchNorm is not needed."""
