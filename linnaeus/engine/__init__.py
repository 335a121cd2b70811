"""Training engine: optimizer/schedule (optim), loss, the training loop (trainer), validation
(evaluator), metrics, mixed precision (amp), and run logging/TensorBoard (logging).

Models and data enter only through their interfaces (``forward(x) -> {level: logits}``,
loaders of ``(images, labels[B, num_levels])``, a sampler with ``advance``/``state_dict``).
"""
