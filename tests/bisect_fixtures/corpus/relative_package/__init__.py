"""A package whose model module uses relative imports; its __init__ also pulls in the trainer."""

from .model import GPT, ModelConfig
from .trainer import Trainer

__all__ = ["GPT", "ModelConfig", "Trainer"]
