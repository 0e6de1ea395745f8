"""Inference on frames: face detection and crops, the classifier, the recognizer and tracker, the overlay; imports utils, data and models."""
