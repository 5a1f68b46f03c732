"""Recovery by training: knowledge distillation (`distill`) and the lowering of the IR into a
torch module it trains (`torch_lowering`, imported only when torch is installed)."""

from .distill import Distill

__all__ = ["Distill"]
