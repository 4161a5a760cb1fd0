from .agent import DecisionRNN

__all__ = ["DecisionRNN"]
