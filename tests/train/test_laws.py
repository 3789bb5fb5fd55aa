"""Scaling-law math: Chinchilla Table 3, C = 6ND, closed forms vs numeric optima, Muennighoff, Sardana, the fit."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from train.planner.data_constrained import effective_tokens, epoch_warning
from train.planner.inference import sardana_optimum
from train.planner.laws import (
    CHINCHILLA_APPROACH1,
    CHINCHILLA_APPROACH3,
    CHINCHILLA_TABLE3,
    EPOCH_AI,
    KAPLAN,
    get_law,
    load_fitted,
)

ALL_LAWS = [CHINCHILLA_APPROACH1, CHINCHILLA_APPROACH3, EPOCH_AI, KAPLAN, get_law("tokens-per-param")]


@pytest.mark.parametrize("n, c, d", CHINCHILLA_TABLE3)
def test_chinchilla_approach1_reproduces_table3(n: float, c: float, d: float) -> None:
    n_opt, d_opt = CHINCHILLA_APPROACH1.allocate(c)
    assert abs(n_opt / n - 1) < 0.05
    assert abs(d_opt / d - 1) < 0.10


@pytest.mark.parametrize("law", ALL_LAWS, ids=lambda law: law.name)
def test_allocation_is_6nd_and_monotonic(law) -> None:
    prev = (0.0, 0.0)
    for c in np.geomspace(1e12, 1e26, 15):
        n, d = law.allocate(float(c))
        assert 6 * n * d == pytest.approx(c, rel=1e-9)
        assert n > prev[0] and d > prev[1]
        prev = (n, d)


@pytest.mark.parametrize("law", [CHINCHILLA_APPROACH3, EPOCH_AI], ids=lambda law: law.name)
def test_parametric_closed_form_is_the_isoflop_minimum(law) -> None:
    c = 1e21
    n_opt, _ = law.allocate(c)
    ns = n_opt * np.geomspace(0.2, 5, 2001)
    losses = [law.loss(n, c / (6 * n)) for n in ns]
    assert ns[int(np.argmin(losses))] == pytest.approx(n_opt, rel=0.01)
    # params_for_tokens inverts the allocation
    n2, d2 = law.allocate(3e19)
    assert law.params_for_tokens(d2) == pytest.approx(n2, rel=1e-6)


def test_published_constants_and_exponents() -> None:
    a3 = CHINCHILLA_APPROACH3
    assert (a3.E, a3.A, a3.B, a3.alpha, a3.beta) == (1.69, 406.4, 410.7, 0.34, 0.28)
    assert (EPOCH_AI.E, EPOCH_AI.A, EPOCH_AI.B, EPOCH_AI.alpha, EPOCH_AI.beta) == (1.8172, 482.01, 2085.43, 0.3478, 0.3658)
    # Kaplan: N_opt grows as C^0.73; approach 1 as C^~0.5; tokens-per-param keeps D = 20 N
    (n1, _), (n2, _) = KAPLAN.allocate(1e20), KAPLAN.allocate(1e22)
    assert math.log(n2 / n1, 100) == pytest.approx(0.73, abs=1e-9)
    n, d = get_law("tokens-per-param").allocate(1e20)
    assert d / n == pytest.approx(20.0)
    assert get_law("tokens-per-param", tokens_per_param=5).allocate(1e20)[1] / get_law(
        "tokens-per-param", tokens_per_param=5).allocate(1e20)[0] == pytest.approx(5.0)
    # Kaplan counts non-embedding params, Chinchilla total
    assert KAPLAN.param_convention == "non-embedding" and CHINCHILLA_APPROACH1.param_convention == "total"


def test_range_warning_outside_fitted_range() -> None:
    assert CHINCHILLA_APPROACH1.range_warnings(1e9, 2e10) == []
    warns = CHINCHILLA_APPROACH1.range_warnings(1e6, 2e7)
    assert len(warns) == 2 and "far outside" in warns[0]


def test_muennighoff_effective_tokens() -> None:
    u = 1e9
    assert effective_tokens(5e8, u) == 5e8  # no repetition: unchanged
    four = effective_tokens(4e9, u)
    assert 0.9 * 4e9 < four < 4e9  # ~4 epochs cost little
    many = effective_tokens(1e11, u)
    assert many < u * (1 + 15.4) and many < 0.2 * 1e11  # saturates at U (1 + R*)
    assert epoch_warning(3.9e9, u) is None
    assert "epochs" in epoch_warning(6e9, u)


def test_sardana_moves_to_smaller_models_with_inference_demand() -> None:
    law = CHINCHILLA_APPROACH3
    c = 1e22
    n_opt, d_opt = law.allocate(c)
    target = law.loss(n_opt, d_opt)
    n0, d0, cost0 = sardana_optimum(law, target, 0.0)
    assert n0 == pytest.approx(n_opt, rel=0.01) and cost0 == pytest.approx(c, rel=1e-3)
    prev_n = n0
    for d_inf in (1e11, 1e12, 1e13):
        n, d, _ = sardana_optimum(law, target, d_inf)
        assert n < prev_n and d > d_opt
        assert law.loss(n, d) == pytest.approx(target, rel=1e-6)
        prev_n = n


def test_load_fitted_roundtrip_and_errors(tmp_path) -> None:
    p = tmp_path / "fitted_law.json"
    p.write_text(json.dumps({"params": {"E": 1.5, "A": 100.0, "B": 200.0, "alpha": 0.3, "beta": 0.35},
                             "param_convention": "non-embedding",
                             "fitted_range": {"params": [1e4, 1e5], "tokens": [1e5, 1e7]}}))
    law = load_fitted(p)
    assert law.loss(1e4, 1e6) == pytest.approx(1.5 + 100 / 1e4**0.3 + 200 / 1e6**0.35)
    assert law.range_warnings(1e7, 1e6)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="fitted_law"):
        load_fitted(tmp_path / "bad.json")


def test_fit_recovers_known_parameters() -> None:
    pytest.importorskip("scipy", reason="the law fit uses scipy's L-BFGS-B")
    from train.planner.fit import bootstrap, fit_law

    rng = np.random.default_rng(0)
    true = {"E": 1.8, "A": 300.0, "B": 800.0, "alpha": 0.35, "beta": 0.30}
    n, d = [], []
    for c in (1e12, 3e12, 1e13, 3e13):
        for x in np.geomspace(3e4, 1e6, 5):
            n.append(x)
            d.append(c / (6 * x))
    n, d = np.array(n), np.array(d)
    loss = (true["E"] + true["A"] / n ** true["alpha"] + true["B"] / d ** true["beta"]) * np.exp(
        rng.normal(0, 0.002, len(n)))
    fit = fit_law(n, d, loss, num_starts=8)
    assert fit.alpha == pytest.approx(true["alpha"], abs=0.03)
    assert fit.beta == pytest.approx(true["beta"], abs=0.03)
    assert fit.E == pytest.approx(true["E"], abs=0.25)  # E trades off against A, B: the least identified
    assert np.max(np.abs(fit.predict(n, d) / loss - 1)) < 0.01
    # extrapolation to a 10x larger budget than any run stays within 1%
    n_x, d_x = 2e6, 3e14 / (6 * 2e6)
    truth = true["E"] + true["A"] / n_x ** true["alpha"] + true["B"] / d_x ** true["beta"]
    assert fit.predict(n_x, d_x) == pytest.approx(truth, rel=0.01)
    boot = bootstrap(n, d, loss, fit, num_samples=8, seed=0, num_starts=1)
    lo, hi = boot["intervals"]["beta"]
    assert lo <= fit.beta <= hi and hi - lo < 0.2
    with pytest.raises(ValueError, match="at least 5 runs"):
        fit_law(n[:4], d[:4], loss[:4])
