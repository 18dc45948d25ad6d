"""Bytes → state dict: safe reading of checkpoints, and the registry of architectures."""
