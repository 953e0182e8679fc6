"""Training: the networks a config describes and their state (`networks`), the pure jitted
steps (`steps`), how batches reach them (`feeds`), the loop that runs them and evaluates at
epoch ends (`trainer`), the optimiser, checkpoints, the mesh, metrics and their writers, and
the stage-1 teachers of a distillation job (`teachers`).

Imports nothing from `ltkd_jax.deploy`.
"""
