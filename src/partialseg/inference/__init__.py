"""Inference: sliding-window prediction and writing label maps in the original geometry."""
