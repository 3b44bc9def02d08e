"""What the two inference engines share besides their API (inference.AnimationEngine on torch,
onnx_engine.OnnxEngine on onnxruntime): the kinds of output `animate` yields from the per-batch
results of `stream`. Imports nothing but the standard library, so the torch-free engine can use it.
"""
from typing import Callable, Iterable, Iterator

OUTPUTS = ('uint8', 'float', 'batch')


def animate_outputs(results: Iterable[dict], output: str, with_inputs: bool, to_uint8: Callable,
                    to_float: Callable) -> Iterator:
    """`animate` of either engine: per-batch `stream` results ({'prediction': (B, 3, H, W),
    'frames': the driving frames as given}) -> (H, W, 3) uint8 frames (`to_uint8` of a batch),
    float32 frames (`to_float`), or the batches themselves ('batch'); with_inputs: (driving frame,
    output frame) pairs (not with 'batch'). ValueError names a wrong `output`."""
    if output not in OUTPUTS or (with_inputs and output == 'batch'):
        raise ValueError('output: %r is not one of %s%s' % (output, ', '.join(OUTPUTS),
                                                             ' (with_inputs: not batch)' if with_inputs else ''))
    for result in results:
        prediction = result['prediction']
        if output == 'batch':
            yield prediction
            continue
        frames = to_uint8(prediction) if output == 'uint8' else to_float(prediction)
        yield from (zip(result['frames'], frames) if with_inputs else frames)
