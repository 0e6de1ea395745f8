"""The Gradio app (the top layer: may import every other subpackage), apart from the library: config, page, the Live, Upload and Training tabs, the model panel
and the training process manager. ``EmotionApp(AppConfig(...))`` builds it; importing starts nothing."""

from .config import AppConfig
from .page import EmotionApp, build_demo

__all__ = ["AppConfig", "EmotionApp", "build_demo"]
