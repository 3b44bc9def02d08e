"""BatchNorm classes under the original's names; synchronisation comes from torch.nn.SyncBatchNorm."""
from torch import nn


class SynchronizedBatchNorm1d(nn.BatchNorm1d):
    """`nn.BatchNorm1d` under the original name."""


class SynchronizedBatchNorm2d(nn.BatchNorm2d):
    """`nn.BatchNorm2d` under the original name (state dict: weight, bias, running_mean, ...)."""


class SynchronizedBatchNorm3d(nn.BatchNorm3d):
    """`nn.BatchNorm3d` under the original name."""


def convert_model(module: nn.Module) -> nn.Module:
    """Make every BatchNorm of `module` synchronise across the DDP process group."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)
