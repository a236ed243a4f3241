"""Trainwire's NumPy neural-network engine: layers, losses, optimizers, training and state I/O.

Pure NumPy (plus safetensors for serialisation and threadpoolctl to set BLAS threads); nothing here
knows about gRPC or storage.
"""

from __future__ import annotations

from . import activations, initializers, layers, losses, metrics, optimizers, schedules
from .errors import SpecError
from .gradcheck import gradcheck
from .model import Model
from .serialization import load_state, read_state, save_state, state_buffer
from .threads import get_num_threads, set_num_threads
from .training import Callback, EarlyStopping, History, Trainer, saved_in_epoch

__all__ = [
    "Callback",
    "EarlyStopping",
    "History",
    "Model",
    "SpecError",
    "Trainer",
    "activations",
    "get_num_threads",
    "gradcheck",
    "initializers",
    "layers",
    "load_state",
    "losses",
    "metrics",
    "optimizers",
    "read_state",
    "save_state",
    "saved_in_epoch",
    "schedules",
    "set_num_threads",
    "state_buffer",
]
