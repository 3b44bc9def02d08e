"""The inference engines: one driver (batching, reference frame, relative motion, outputs) over
two backends, torch (`engine.torch_engine.AnimationEngine`) and onnxruntime
(`engine.onnx_engine.OnnxEngine`, no torch). This package file imports nothing, so the torch-free
engine stays torch-free."""
