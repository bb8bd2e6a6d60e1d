"""A trained ``nn.Module`` gets an LLC from one ``localize`` call (center = its current weights)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pyro")

import slt_ppl  # noqa: E402

torch.set_num_threads(1)


def trained_mlp(n: int = 1000, steps: int = 300) -> tuple[torch.nn.Module, dict[str, np.ndarray]]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 2, generator=gen)
    y = torch.sin(2 * x[:, :1]) + 0.5 * x[:, 1:] + 0.3 * torch.randn(n, 1, generator=gen)
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = torch.optim.Adam(mlp.parameters(), lr=0.02)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.mean((mlp(x) - y) ** 2)
        loss.backward()
        opt.step()
    return mlp, {"x": x.numpy(), "y": y.numpy()}


@pytest.mark.slow
def test_module_llc_one_call_is_healthy():
    mlp, data = trained_mlp()
    before = [p.detach().clone() for p in mlp.parameters()]
    post = slt_ppl.localize(mlp, data, likelihood="gaussian", noise=0.3)
    assert post.dim == sum(p.numel() for p in mlp.parameters()) == 33
    result = slt_ppl.sample(post, num_chains=4, num_draws=600, progress=False)
    ds = slt_ppl.llc(result, warn=False)
    assert ds.attrs["healthy"] == 1, ds.attrs["verdict"]
    assert 0 < float(ds["llc"]) < post.dim / 2 + 3 * float(ds["llc_se"])
    # sampling never touches the module's own weights
    assert all(torch.equal(a, b) for a, b in zip(before, mlp.parameters(), strict=True))
