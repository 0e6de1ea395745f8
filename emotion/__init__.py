"""emotion: real-time facial emotion recognition (CLIP + adapter, or a compact offline CNN).

The package is layered; each subpackage imports only the ones above it in this list, never below:
``emotion.utils`` (devices, precision, atomic files), ``emotion.data`` (labels, datasets, splits,
augmentation), ``emotion.models`` (networks, factory, checkpoints, weights, ONNX), ``emotion.training``
(the loop and its parts), ``emotion.inference`` (faces, classifier, recognizer, overlay),
``emotion.evaluation`` (metrics and reports), ``emotion.video`` (video files), ``emotion.bench``
(benchmarks) and ``emotion.app`` (the Gradio app). Importing the package itself loads nothing heavy.
"""

__version__ = "0.1.0"
