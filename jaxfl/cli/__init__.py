"""The command line: flags, their help and cheap checks (importing no JAX, so ``--help`` is
instant), and execution settings (devices, ``jax.distributed``). Nothing in the library imports
this package; ``scripts/run.py`` does."""
