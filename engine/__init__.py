"""Trainwire's NumPy neural-network engine: layers, losses, optimizers, training and state I/O.

Pure NumPy (plus safetensors for serialisation); nothing here knows about gRPC or storage.
"""

from __future__ import annotations

from . import activations, initializers, layers, losses, metrics, optimizers
from .errors import SpecError
from .gradcheck import gradcheck
from .model import Model
from .serialization import load_state, save_state
from .training import Callback, History, Trainer

__all__ = [
    "Callback",
    "History",
    "Model",
    "SpecError",
    "Trainer",
    "activations",
    "gradcheck",
    "initializers",
    "layers",
    "load_state",
    "losses",
    "metrics",
    "optimizers",
    "save_state",
]
