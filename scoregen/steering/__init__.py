"""Steering a score: guidance (guidance), linear measurement operators (operators), inverse problems
(inverse) and noise-conditional classifiers for guidance (noisy_classifier)."""
