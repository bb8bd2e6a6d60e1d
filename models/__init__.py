"""Model zoo: each model in NumPyro (``numpyro_zoo``) and Pyro (``pyro_zoo``) with its theoretical
learning coefficient (``theory``) and seeded data (``data``)."""
