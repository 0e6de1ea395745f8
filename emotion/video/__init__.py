"""Video files: the reader, the per-frame analysis and its reports (annotated video, CSV, timeline); imports utils, data, models and inference."""
