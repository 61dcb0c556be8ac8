"""End-to-end experiments: the papers' benchmark protocols and the one-command demo."""
