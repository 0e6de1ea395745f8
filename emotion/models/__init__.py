"""Networks (CLIP + adapter, CNNs, ensembles), the model factory, checkpoints, CLIP weights and ONNX export; imports emotion.utils and emotion.data."""
