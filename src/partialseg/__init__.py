"""partialseg."""
