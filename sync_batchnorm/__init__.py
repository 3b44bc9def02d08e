"""Compatibility package: the original vendored a synchronised BatchNorm; here it is a thin layer.

`SynchronizedBatchNorm2d` is a plain `torch.nn.BatchNorm2d` (same state-dict names), which
`torch.nn.SyncBatchNorm.convert_sync_batchnorm` turns into a synchronised one under DDP
(see train.py). `DataParallelWithCallback` is kept as a name for old imports.
"""
from torch import nn

from .batchnorm import SynchronizedBatchNorm1d, SynchronizedBatchNorm2d, SynchronizedBatchNorm3d, convert_model
from .replicate import DataParallelWithCallback

__all__ = ['SynchronizedBatchNorm1d', 'SynchronizedBatchNorm2d', 'SynchronizedBatchNorm3d',
           'DataParallelWithCallback', 'convert_model', 'nn']
