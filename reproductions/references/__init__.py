"""Independent references: plain per-client implementations of the papers whose claims jaxfl
could not confirm, written from the papers' equations with their own data pipeline, partition,
model and training loop. They share no code with ``jaxfl`` or ``algorithms`` (a test checks
their imports), so a verdict that jaxfl and its reference agree on is not jaxfl's bug.

Each reference is a Python loop over clients calling a jitted single-client function (plain
JAX: ``jax.grad`` and ``lax.scan`` over minibatches); nothing is vmapped over clients.
"""
