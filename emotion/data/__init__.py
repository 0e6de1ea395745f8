"""Faces and labels: class names, the in-memory dataset, folder/CSV/packed splits and augmentation; imports only emotion.utils."""
