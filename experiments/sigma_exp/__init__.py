"""SIGMA validation experiments (issue 8). Pure-numpy modules: corpus, metrics, sampling,
state. torch-dependent modules: lm, encoder, recursive, measure."""
