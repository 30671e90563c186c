"""[ray] Ray Train: the loop, fit, evaluation."""
