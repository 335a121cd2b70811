"""Training engine: optimizer/schedule (optim), loss, the training loop (trainer), validation
(evaluator), metrics, mixed precision (amp), the epoch's progress display (progress_bar), and
the run's log file, console and TensorBoard (run_log).

Models and data enter only through their interfaces (``forward(x) -> {level: logits}``,
loaders of ``(images, labels[B, num_levels])``, a sampler with ``advance``/``state_dict``).
"""
