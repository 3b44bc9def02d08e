"""Foundation: pixels and files: image and video formats, reading and writing them, the one
output-path rule, training augmentation and the synthetic videos of the embedded default."""
