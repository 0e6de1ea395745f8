"""emotion: real-time facial emotion recognition (CLIP + adapter, or a compact offline CNN).

Import the submodules you need; importing the package itself loads nothing heavy:
``emotion.train`` (training), ``emotion.evaluate`` (reports), ``emotion.predict`` (inference),
``emotion.models`` (the model factory), ``emotion.data`` (FER2013 loading).
"""

__version__ = "0.1.0"
