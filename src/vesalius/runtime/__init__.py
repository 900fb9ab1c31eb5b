"""Torch-free prediction from an exported model package."""
