"""Training: config and validation, the loop, optimiser and EMA, distillation, distributed set-up, the embedding cache; imports utils, data and models."""
