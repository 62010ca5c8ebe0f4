"""Reward side: reward functions (registry), the scorer, the code sandbox and the model reward model.

Import-light: nothing heavy at import; the model reward model imports torch/transformers lazily.
"""
