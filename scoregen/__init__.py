"""scoregen: score-based generative modeling — forward SDEs, score matching, samplers, likelihood, guidance."""
__version__ = "0.1.0"
