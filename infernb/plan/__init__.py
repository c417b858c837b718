"""The scheduler: ``plan()`` cuts a batch's attention into items and balances them over the GPU (CPU, NumPy);
``emulate()`` executes a plan item by item with the reference math (any device) and merges split rows by LSE."""
from .emulator import emulate
from .plan import Plan, token_positions
from .planner import plan
from . import presets

__all__ = ["Plan", "emulate", "plan", "presets", "token_positions"]
