"""HMC and NUTS on the local posterior through NumPyro's own kernels (full batch, exact).

NumPyro adapts the step size and a diagonal mass matrix during warm-up (``num_burnin`` steps); chains
run vectorized (``chain_method="vectorized"``). The loss at each draw is recovered from the potential
energy NumPyro records: L_n(w) = (U(w) − γ/2‖w − w*‖²)/nβ, so no extra forward pass is needed.
NumPyro splits one key over chains, so unlike the SG path chain i's draws depend on ``num_chains``.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from slt_ppl.posterior import LocalPosterior
from slt_ppl.sampling.options import RunSettings
from slt_ppl.sampling.result import external_mcmc_result, mcmc_options


def sample_numpyro(posterior: LocalPosterior, s: RunSettings) -> xr.DataTree:
    """Run ``s.num_chains`` NumPyro HMC/NUTS chains (``s.kernel``) on the full-batch potential."""
    from numpyro.infer import HMC, MCMC, NUTS

    data = posterior.data

    def potential(w: jax.Array) -> jax.Array:
        return posterior.potential(w, data)[0]

    options = mcmc_options(s.step_size, s.kernel_options)
    cls = NUTS if s.kernel == "nuts" else HMC
    mcmc = MCMC(
        cls(potential_fn=potential, **options),
        num_warmup=s.burnin_steps,
        num_samples=s.num_draws * s.thin,
        num_chains=s.num_chains,
        thinning=s.thin,
        chain_method="vectorized",
        progress_bar=s.progress,
    )
    init = jnp.broadcast_to(posterior.center, (s.num_chains, posterior.dim))
    t0 = time.perf_counter()
    mcmc.run(
        jax.random.PRNGKey(s.seed),
        init_params=init,
        extra_fields=("accept_prob", "diverging", "potential_energy", "adapt_state.step_size"),
    )
    wall = time.perf_counter() - t0
    positions = np.asarray(mcmc.get_samples(group_by_chain=True))
    extra = mcmc.get_extra_fields(group_by_chain=True)
    energy = np.asarray(extra["potential_energy"])
    loc = 0.5 * posterior.gamma * np.sum((positions - np.asarray(posterior.center)) ** 2, axis=-1)
    grad_fn = jax.jit(jax.vmap(jax.vmap(jax.grad(potential))))
    # NUTS "divergent transitions" are rejected proposals, not failed chains: counted in attrs only.
    return external_mcmc_result(
        posterior, s, positions, (energy - loc) / posterior.nbeta, np.asarray(extra["accept_prob"]),
        np.linalg.norm(np.asarray(grad_fn(jnp.asarray(positions))), axis=-1),
        step_size=float(np.mean(np.asarray(extra["adapt_state.step_size"])[:, -1])),
        options=options, method="numpyro dual averaging (warm-up)",
        attrs={
            "sampling_time_s": float(wall),
            "num_divergent_transitions": int(np.asarray(extra["diverging"]).sum()),
        },
    )  # fmt: skip
