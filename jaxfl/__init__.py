"""jaxfl: a vectorized federated-learning simulator in JAX.

Every client lives on one ``vmap`` axis; one FL round compiles to one jitted function.
"""

__version__ = "0.1.0"
