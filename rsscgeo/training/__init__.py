"""Training: the Lightning task, the paper's protocols, evaluation and figures."""
