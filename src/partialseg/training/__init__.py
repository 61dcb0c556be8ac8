"""Training: losses of the baselines, TCT and IPnP, and the training loop."""
