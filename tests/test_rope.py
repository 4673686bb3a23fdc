"""YaRN math against the reference test vectors and against transformers' own functions."""

from __future__ import annotations

import math
import os

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from yarnconv import rope

# (H, rho, base, s, L, beta_fast, beta_slow, truncate, m, m_a) -> expected (low, high), a, {i: float64 inv_freq}
# Values from docs/yarn-math.md §4 (measured with HF 5.23 / vLLM 0.33 / float64).
VECTORS = {
    "TV1": ((128, 1.0, 10000.0, 16.0, 4096, 32.0, 1.0, True, None, None), (20, 46), 1.2772588722239782,
            {1: 8.659643234e-01, 20: 5.623413252e-02, 21: 4.694086000e-02, 33: 4.600435468e-03, 45: 1.517716047e-04, 63: 7.217387404e-06}),
    "TV2": ((128, 1.0, 10000.0, 16.0, 4096, 32.0, 1.0, False, None, None), (20.94448162063605, 45.02688127375455), 1.2772588722239782,
            {21: 4.859150586e-02, 32: 5.696214401e-03, 45: 9.785687467e-05}),
    "TV3": ((128, 1.0, 1000000.0, 4.0, 32768, 32.0, 1.0, True, None, None), (23, 40), 1.138629436111989,
            {1: 8.058421878e-01, 23: 6.978305849e-03, 24: 5.375321491e-03, 31: 8.029597275e-04, 39: 6.490394321e-05, 63: 3.102344402e-07}),
    "TV4": ((64, 1.0, 150000.0, 32.0, 4096, 32.0, 1.0, False, None, None), (8.092779115512402, 17.39802450158856), 1.3465735902799727,
            {1: 6.890443059e-01, 8: 5.081327482e-02, 9: 3.170569618e-02, 12: 6.794959490e-03, 17: 1.293187012e-04, 31: 3.023511428e-07}),
    "TV5": ((64, 1.0, 10000.0, 40.0, 4096, 32.0, 1.0, True, 1.0, 1.0), (10, 23), 1.0,
            {1: 7.498942093e-01, 10: 5.623413252e-02, 11: 3.900692657e-02, 16: 5.500000000e-03, 22: 1.778279410e-04, 31: 3.333803580e-06}),
    "TV6": ((128, 0.5, 10000.0, 8.0, 2048, 128.0, 2.0, True, None, None), (3, 18), 1.2079441541679836,
            {1: 7.498942093e-01, 3: 4.216965034e-01, 4: 2.977811463e-01, 10: 3.327186174e-02, 17: 1.374806050e-03, 31: 1.666901790e-05}),
}  # fmt: skip
# HF 5.23 = vLLM 0.33 float32 values from the same tables.
HF_FLOAT32 = {
    "TV1": {1: 8.659643531e-01, 20: 5.623412877e-02, 21: 4.694085941e-02, 33: 4.600435495e-03, 45: 1.517716446e-04, 63: 7.217387065e-06},
    "TV3": {1: 8.058422208e-01, 23: 6.978305988e-03, 24: 5.375321489e-03, 31: 8.029597811e-04, 39: 6.490394298e-05, 63: 3.102344408e-07},
    "TV4": {1: 6.890442967e-01, 8: 5.081327260e-02, 9: 3.170569614e-02, 12: 6.794959307e-03, 17: 1.293186942e-04, 31: 3.023511397e-07},
    "TV6": {1: 7.498942018e-01, 3: 4.216965139e-01, 4: 2.977811694e-01, 10: 3.327185661e-02, 17: 1.374806045e-03, 31: 1.666901881e-05},
}  # fmt: skip


def _spec(H, rho, base, s, L, bf, bs, truncate, m, m_a) -> rope.RopeSpec:
    return rope.RopeSpec("yarn", base, rope.rotary_dim(H, rho), s, L, bf, bs, truncate, None, m, m_a)


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_reference_vectors(name: str) -> None:
    args, (low, high), a, rows = VECTORS[name]
    result = rope.compute(_spec(*args))
    assert result.correction_range == pytest.approx((low, high), abs=1e-12)
    assert result.attention_factor == pytest.approx(a, abs=1e-15)
    for i, value in rows.items():
        assert result.inv_freq[i] == pytest.approx(value, rel=2e-9), i  # table gives 10 significant digits
    assert result.inv_freq[0] == 1.0


@pytest.mark.parametrize("name", sorted(HF_FLOAT32))
def test_float32_path_reproduces_transformers_table(name: str) -> None:
    result = rope.compute(_spec(*VECTORS[name][0]), precision="float32")
    for i, value in HF_FLOAT32[name].items():
        assert result.inv_freq[i] == pytest.approx(value, rel=2e-9), i


def test_paper_temperature_relation() -> None:
    # sqrt(1/t) = 0.1 ln s + 1, and q.k gains a^2 = 1/t (TV1: a^2 = 1.631390).
    a = rope.mscale(16.0)
    t = rope.temperature_from_attention_factor(a)
    assert rope.attention_factor_from_temperature(t) == pytest.approx(a)
    assert a**2 == pytest.approx(1.631390, abs=1e-6)
    assert rope.mscale(1.0) == 1.0 and rope.mscale(0.5) == 1.0


def test_explicit_attention_factor_wins_even_when_zero() -> None:
    assert rope.yarn_attention_factor(16.0, attention_factor=0.0) == 0.0
    assert rope.yarn_attention_factor(16.0, None, 0.0, 1.0) == rope.mscale(16.0)  # falsy mscale is absent
    assert rope.yarn_attention_factor(40.0, None, 1.0, 1.0) == 1.0


def test_bad_specs_are_rejected() -> None:
    with pytest.raises(ValueError):
        rope.compute(rope.RopeSpec("yarn", dim=127, factor=2.0, original_context=10))
    with pytest.raises(ValueError):
        rope.compute(rope.RopeSpec("yarn", dim=128, factor=float("nan"), original_context=10))
    with pytest.raises(ValueError):
        rope.compute(rope.RopeSpec("yarn", dim=128, factor=2.0))
    with pytest.raises(ValueError):
        rope.compute(rope.RopeSpec("nope", dim=128, factor=2.0))


# ------------------------------------------------------------------ against transformers itself


def _hf(method: str, *, H: int, rho: float, base: float, max_pos: int, block: dict, seq_len: int | None = None):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = LlamaConfig(
        hidden_size=H * 4, num_attention_heads=4, head_dim=H, max_position_embeddings=max_pos,
        rope_theta=base, partial_rotary_factor=rho, rope_scaling={"rope_type": method, **block},
    )  # fmt: skip
    inv, a = ROPE_INIT_FUNCTIONS[method](config, None, seq_len)
    return inv.tolist(), a


def assert_within_float32_rounding(exact: list[float], hf: list[float], theta: list[float]) -> None:
    """transformers works in float32: b^(2i/D) loses ~|ln theta_i| ulps, and the ramp blend
    theta_i * (gamma/s + 1 - gamma) amplifies a rounding of gamma by theta_i / inv_freq_i (<= s).
    The float64 values must sit within that rounding, pair by pair."""
    for i, (x, y, t) in enumerate(zip(exact, hf, theta, strict=True)):
        bound = (abs(math.log(y)) + 8) * 2.0**-23 + 4 * (t / x) * 2.0**-24
        assert abs(x - y) / y <= bound, (i, x, y, bound)


def _max_rel(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b)
    return max(abs(x - y) / abs(y) for x, y in zip(a, b, strict=True))


yarn_cases = st.fixed_dictionaries(
    {
        "H": st.sampled_from([32, 64, 80, 96, 128, 256]),
        "rho": st.sampled_from([1.0, 0.5, 0.25]),
        "base": st.floats(1e3, 1e7),
        "s": st.floats(1.01, 128.0),
        "L": st.sampled_from([512, 2048, 4096, 8192, 32768, 131072]),
        "betas": st.sampled_from([(32.0, 1.0), (128.0, 2.0), (16.0, 0.5), (64.0, 1.0)]),
        "truncate": st.booleans(),
        "magnitude": st.sampled_from(
            [
                {},
                {"attention_factor": 1.0},
                {"attention_factor": 0.7},
                {"mscale": 1.0, "mscale_all_dim": 1.0},
                {"mscale": 0.707, "mscale_all_dim": 1.0},
            ]
        ),
    }
)


@settings(max_examples=int(os.environ.get("YARNCONV_HYPOTHESIS_EXAMPLES", "150")), deadline=None)
@given(yarn_cases)
# Found by CI: an unrounded ramp at s = 55 amplifies transformers' float32 rounding to 1.9e-6.
@example({"H": 32, "rho": 1.0, "base": 1000.0, "s": 55.0, "L": 512, "betas": (32.0, 1.0), "truncate": False, "magnitude": {}})
def test_yarn_matches_transformers_randomized(case: dict) -> None:
    bf, bs = case["betas"]
    block = {
        "factor": case["s"],
        "original_max_position_embeddings": case["L"],
        "beta_fast": bf,
        "beta_slow": bs,
        "truncate": case["truncate"],
        **case["magnitude"],
    }
    max_pos = int(case["L"] * case["s"])
    ref, ref_a = _hf("yarn", H=case["H"], rho=case["rho"], base=case["base"], max_pos=max_pos, block=block)
    spec = rope.RopeSpec(
        "yarn", case["base"], rope.rotary_dim(case["H"], case["rho"]), case["s"], case["L"], bf, bs, case["truncate"],
        case["magnitude"].get("attention_factor"), case["magnitude"].get("mscale"), case["magnitude"].get("mscale_all_dim"),
    )  # fmt: skip
    exact, f32 = rope.compute(spec), rope.compute(spec, precision="float32")
    assert f32.inv_freq == ref  # the buffers yarnconv writes are bit-identical to transformers'
    assert_within_float32_rounding(exact.inv_freq, ref, rope.base_inv_freq(spec.base, spec.dim))
    assert exact.attention_factor == pytest.approx(ref_a, rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([64, 128]), st.floats(1e3, 1e6), st.floats(1.5, 32.0), st.sampled_from([None, 2048, 9000, 40000]))
def test_linear_and_dynamic_match_transformers(H: int, base: float, s: float, seq_len: int | None) -> None:
    M = 4096
    ref, _ = _hf("linear", H=H, rho=1.0, base=base, max_pos=M, block={"factor": s})
    spec = rope.RopeSpec("linear", base, H, s)
    assert _max_rel(rope.compute(spec).inv_freq, ref) <= 1e-6
    assert rope.compute(spec, precision="float32").inv_freq == ref
    ref_d, a_d = _hf("dynamic", H=H, rho=1.0, base=base, max_pos=M, block={"factor": s}, seq_len=seq_len)
    dyn = rope.compute(rope.RopeSpec("dynamic", base, H, s, max_position=M), seq_len=seq_len)
    assert _max_rel(dyn.inv_freq, ref_d) <= 1e-6
    assert dyn.attention_factor == a_d == 1.0


def test_ramp_edges_keep_and_scale() -> None:
    # Pairs below the ramp keep theta_i, pairs above get theta_i / s (e = 1).
    spec = _spec(*VECTORS["TV1"][0])
    result, base = rope.compute(spec), rope.base_inv_freq(10000.0, 128)
    assert result.inv_freq[:21] == pytest.approx(base[:21], rel=1e-15)
    assert result.inv_freq[46:] == pytest.approx([x / 16 for x in base[46:]], rel=1e-15)
    assert all(math.isfinite(x) for x in result.inv_freq)
