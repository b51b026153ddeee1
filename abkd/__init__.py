"""Shared library for knowledge distillation: divergences, fused losses, curriculum and engine helpers."""
