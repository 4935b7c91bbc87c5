"""Bad input raises a clear error naming the argument, expected and received value."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tokenprune
from tokenprune import CueError, Cues, Layout, LayoutError, SpecError


@pytest.fixture
def cues():
    return Cues(Layout.grid(6, 6), attention=torch.rand(1, 36), keys=torch.randn(1, 36, 4))


def test_mismatched_attention_shape():
    with pytest.raises(CueError, match=r"attention: expected shape \(1, 36\).*got \(1, 35\)"):
        Cues(Layout.grid(6, 6), attention=torch.rand(1, 35))


def test_mismatched_keys_shape():
    with pytest.raises(CueError, match=r"keys: expected shape \(1, 36, \*\).*got \(2, 36, 4\)"):
        Cues(Layout.grid(6, 6), keys=torch.randn(2, 36, 4))


def test_integer_attention_rejected():
    with pytest.raises(CueError, match="attention: expected a floating-point tensor, got torch.int64"):
        Cues(Layout.grid(2, 2), attention=torch.ones(1, 4, dtype=torch.long))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_attention(bad, cues):
    cues.attention[0, 7] = bad
    before = cues.attention.clone()
    with pytest.raises(CueError, match="attention: expected finite values, got NaN/inf.*token 7"):
        tokenprune.pruner("fastv", keep=3)(cues)
    assert torch.equal(cues.attention.nan_to_num(), before.nan_to_num())  # input untouched


def test_non_finite_keys(cues):
    cues.keys[0, 3, 1] = float("nan")
    with pytest.raises(CueError, match="keys: expected finite values.*token 3"):
        tokenprune.pruner("adaptprune", keep=3)(cues)


@pytest.mark.parametrize("bad", [float("inf"), float("-inf")])
def test_infinite_keys(bad, cues):
    cues.keys[0, 5, 0] = bad
    with pytest.raises(CueError, match="keys: expected finite values.*token 5"):
        tokenprune.pruner("adaptprune", keep=3)(cues)


def test_keys_whose_norm_overflows():
    # Finite float32 entries whose squares overflow: the cosines would be NaN.
    keys = torch.randn(1, 9, 4)
    keys[0, 6] = 3e38
    cues = Cues(Layout.grid(3, 3), attention=torch.rand(1, 9), keys=keys)
    with pytest.raises(CueError, match="keys: expected vectors whose L2 norm fits in torch.float32.*token 6"):
        tokenprune.pruner("adaptprune", keep=3)(cues)
    keys[0, 6] = 1e15  # large but its norm fits: accepted
    assert tokenprune.pruner("adaptprune", keep=3)(cues).counts.tolist() == [3]


def test_keys_whose_norm_fits_only_just_are_accepted():
    # Above the one-pass bound (D * max^2 <= max float / 2), the per-token check decides.
    keys = torch.randn(1, 9, 4)
    keys[0, 6] = 8e18  # 4 * 6.4e37 = 2.6e38 < 3.4e38
    cues = Cues(Layout.grid(3, 3), attention=torch.rand(1, 9), keys=keys)
    assert tokenprune.pruner("adaptprune", keep=3)(cues).counts.tolist() == [3]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("where", [(0, 0, 0), (1, 37, 517), (1, 49, 999)])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_one_bad_key_entry_anywhere_in_wide_keys(dtype, where, bad):
    keys = torch.randn(2, 50, 1000).to(dtype)  # long enough for every vectorised loop and its tail
    keys[where] = bad
    cues = Cues(Layout.grid(5, 10, batch=2), attention=torch.rand(2, 50), keys=keys)
    with pytest.raises(CueError, match=f"keys: expected finite values.*sample {where[0]}, token {where[1]}"):
        tokenprune.pruner("adaptprune", keep=3)(cues)


@given(
    signs=st.lists(st.sampled_from([1.0, -1.0, 0.0]), min_size=2 * 4 * 3, max_size=2 * 4 * 3),
    scale=st.sampled_from([1.0, 8e18, 1.2e19, 1.5e19, 3e19, 1e150]),
    bad=st.lists(st.tuples(st.integers(0, 2 * 4 * 3 - 1), st.sampled_from([float("nan"), float("inf"), -float("inf")])), max_size=2),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]),
    ragged=st.booleans(),
)
def test_the_key_check_refuses_exactly_what_the_per_token_rule_refuses(signs, scale, bad, dtype, ragged):
    """Refused iff a valid token has a NaN/inf entry or an L2 norm (in float32 at least)
    that overflows; padding is never looked at."""
    values = [sign * scale for sign in signs]
    for i, value in bad:
        values[i] = value
    keys = torch.tensor(values, dtype=torch.float64).view(2, 4, 3).to(dtype)
    layout = Layout.stack([Layout.grid(1, 2 if ragged else 4), Layout.grid(2, 2)])
    norm = torch.linalg.vector_norm(keys, dim=-1, dtype=torch.promote_types(dtype, torch.float32))
    refused = ((~torch.isfinite(keys).all(-1) | ~torch.isfinite(norm)) & layout.valid).any()
    cues = Cues(layout, attention=torch.rand(2, 4), keys=keys)
    try:
        tokenprune.pruner("adaptprune", keep=1)(cues)
    except CueError as exc:
        assert bool(refused), exc
        assert str(exc).startswith("keys: expected")
    else:
        assert not bool(refused)


def test_nan_on_padding_is_ignored():
    layout = Layout.stack([Layout.grid(2, 2), Layout.grid(3, 3)])
    attention = torch.rand(2, 9)
    attention[0, 5] = float("nan")  # padding of sample 0
    selection = tokenprune.pruner("fastv", keep=2)(Cues(layout, attention=attention))
    assert selection.counts.tolist() == [2, 2]


@pytest.mark.parametrize("keep", [0, -1, 0.0, 1.5, float("nan"), True, "0.1", None])
def test_bad_keep(keep):
    with pytest.raises(SpecError, match="keep"):
        tokenprune.pruner("fastv", keep=keep)


def test_keep_larger_than_n(cues):
    with pytest.raises(SpecError, match="keep: expected at most the number of valid candidates, got keep=37.*N=36"):
        tokenprune.pruner("fastv", keep=37)(cues)


@pytest.mark.parametrize(
    "spec",
    ["attention | gaussian(sigma=-1) | top_k", "attention | soft_nms(spatial=-1.5)", "attention | soft_nms(radius=0)"],
)
def test_negative_sigma(spec):
    with pytest.raises(SpecError, match="expected a positive"):
        tokenprune.pruner(spec, keep=3)


def test_unknown_recipe_suggests():
    with pytest.raises(SpecError, match=r"unknown recipe 'adaptprun'; did you mean 'adaptprune'"):
        tokenprune.pruner("adaptprun", keep=0.1)


def test_unknown_stage_suggests():
    with pytest.raises(SpecError, match=r"unknown transform 'gausian'; did you mean 'gaussian'"):
        tokenprune.pruner("attention | gausian | top_k", keep=0.1)


def test_stage_in_wrong_position():
    with pytest.raises(SpecError, match="'top_k' is a selector, but this position needs a score"):
        tokenprune.pruner("top_k | attention", keep=0.1)


def test_bad_stage_argument():
    with pytest.raises(SpecError, match="top_k: bad arguments"):
        tokenprune.pruner("attention | top_k(k=3)", keep=0.1)


def test_missing_cue():
    cues = Cues(Layout.grid(4, 4), attention=torch.rand(1, 16))
    with pytest.raises(CueError, match="keys: pruner .* needs cue\\(s\\) keys \\(for soft_nms\\) but Cues has only attention"):
        tokenprune.pruner("adaptprune", keep=3)(cues)


def test_soft_nms_rejects_negative_scores():
    cues = Cues(Layout.grid(4, 4), hidden=torch.randn(1, 16, 3), keys=torch.randn(1, 16, 3))
    layout = cues.layout

    class Negative(tokenprune.strategies.base.Score):
        name = "negative"

        def __call__(self, c):
            return -torch.ones(1, layout.num_tokens)

    pruner = tokenprune.Pruner(Negative(), (), tokenprune.pruner("adaptprune", keep=2).selector, keep=2)
    with pytest.raises(CueError, match="soft_nms .* needs them >= 0, got min -1"):
        pruner(cues)


def test_layout_coords_outside_region():
    layout = Layout.grid(2, 2)
    coords = layout.coords.clone()
    coords[0, 3, 1] = 5
    with pytest.raises(LayoutError, match=r"0 <= \(row, col\) < region_shapes"):
        Layout(coords, layout.regions, layout.region_shapes, layout.valid)


def test_layout_duplicate_cells():
    layout = Layout.grid(2, 2)
    coords = layout.coords.clone()
    coords[0, 1] = coords[0, 0]
    with pytest.raises(LayoutError, match="at most one token per"):
        Layout(coords, layout.regions, layout.region_shapes, layout.valid)


def test_layout_region_id_out_of_range():
    layout = Layout.grid(2, 2)
    regions = layout.regions.clone()
    regions[0, 0] = 3
    with pytest.raises(LayoutError, match=r"regions: expected ids in \[-1, R\) = \[-1, 1\)"):
        Layout(layout.coords, regions, layout.region_shapes, layout.valid)


def test_spec_syntax_errors():
    for spec in ["attention || top_k", "attention | top_k(3)", "attention | top_k(x=foo)", "attention | top_k("]:
        with pytest.raises(SpecError, match="spec|stage"):
            tokenprune.pruner(spec, keep=1)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: Layout.grid(2.5, 3), r"height: expected an int >= 1, got 2.5"),
        (lambda: Layout.grid(True, 2), r"height: expected an int >= 1, got True"),
        (lambda: Layout.grid(2, 0), r"width: expected an int >= 1, got 0"),
        (lambda: Layout.grid(2, 2, batch=-1), r"batch: expected an int >= 1, got -1"),
        (lambda: Layout.regions_of([(2, 2), (3,)]), r"shapes\[1\]: expected \(height, width\), two ints >= 1, got \(3,\)"),
        (lambda: Layout.regions_of("ab"), r"shapes: expected a sequence of \(height, width\), got 'ab'"),
        (lambda: Layout.stack([Layout.grid(2, 2), 1]), r"layouts\[1\]: expected a Layout, got int"),
    ],
)
def test_layout_constructors_reject_bad_arguments(build, match):
    with pytest.raises(LayoutError, match=match):
        build()


def test_layout_optional_tensors_are_checked():
    layout = Layout.grid(2, 2)
    parts = dict(
        coords=layout.coords, regions=layout.regions, region_shapes=layout.region_shapes, valid=layout.valid
    )
    with pytest.raises(LayoutError, match=r"region_boxes: expected a float tensor of shape \(B, R, 4\) = \(1, 1, 4\), got list"):
        Layout(**parts, region_boxes=[[0.0, 0.0, 1.0, 1.0]])
    with pytest.raises(LayoutError, match=r"region_images: expected a long tensor .* got torch.float32 \(1, 1\)"):
        Layout(**parts, region_images=torch.zeros(1, 1))
    with pytest.raises(LayoutError, match=r"region_images: expected image indices >= -1, got min -2"):
        Layout(**parts, region_images=torch.full((1, 1), -2))


@pytest.mark.parametrize("index", [2, -3])
def test_indexing_a_sample_out_of_range(index):
    layout = Layout.grid(2, 2, batch=2)
    cues = Cues(layout, attention=torch.rand(2, 4))
    selection = tokenprune.pruner("fastv", keep=1)(cues)
    for batch in (layout, cues, selection):
        with pytest.raises(IndexError, match=rf"index: expected a sample in \[-2, 2\), got {index}"):
            batch[index]


def test_generator_must_be_a_generator():
    with pytest.raises(CueError, match="generator: expected a torch.Generator or None, got int"):
        Cues(Layout.grid(2, 2), generator=5)


@pytest.mark.parametrize("keep", [-5, 0, 1.5])
def test_keep_is_checked_even_where_the_selector_ignores_it(keep):
    with pytest.raises(SpecError, match="keep"):
        tokenprune.pruner("vtw", keep=keep)


def test_gaussian_sigma_is_not_a_bool():
    with pytest.raises(SpecError, match="gaussian sigma: expected a positive number of cells or None, got True"):
        tokenprune.pruner("attention | gaussian(sigma=True) | top_k", keep=1)


def test_soft_nms_misspelt_argument_suggests_the_right_one():
    with pytest.raises(SpecError, match=r"soft_nms raduis: unknown argument; did you mean 'radius'\?"):
        tokenprune.pruner("attention | soft_nms(raduis=3)", keep=1)


def test_spec_value_that_is_not_a_literal_of_hashable_keys():
    with pytest.raises(SpecError, match="value of 'x' must be a literal"):
        tokenprune.pruner("attention | top_k(x={[1]: 2})", keep=1)


@pytest.mark.parametrize("decay", ["spatial", "similarity"])
def test_a_decay_sigma_whose_square_overflows_names_it(decay):
    # 2 * sigma**2 overflows a float: a SpecError naming the decay, not an OverflowError.
    with pytest.raises(SpecError, match=rf"{decay} sigma: expected a positive finite number <= 1e\+150, got 1e\+300"):
        tokenprune.pruner(f"attention | soft_nms({decay}=1e300)", keep=3)


def test_a_repeated_keyword_in_a_spec_string_is_refused():
    with pytest.raises(SpecError, match=r"spec: stage 1 'soft_nms\(radius=5, radius=3\)': expected each keyword once, got 'radius' twice"):
        tokenprune.pruner("attention | soft_nms(radius=5, radius=3)", keep=3)
    with pytest.raises(SpecError, match=r"radius: expected once, got it both in the spec 'adaptprune\(radius=5\)' and as a keyword"):
        tokenprune.pruner("adaptprune(radius=5)", keep=3, radius=3)


def test_a_tiny_gaussian_sigma_keeps_the_centre_only():
    # sigma=1e-300: the exact factor is 1 at the centre cells and underflows to 0 elsewhere
    # (it used to turn a rounding error into exp(+huge) = inf and fail naming no argument).
    from tokenprune.strategies.transforms import gaussian_map

    for h, w in [(4, 4), (5, 7), (24, 24)]:
        factor = gaussian_map(Layout.grid(h, w), sigma=1e-300).view(h, w)
        centre = torch.zeros(h, w, dtype=torch.bool)
        centre[(h - 1) // 2 : h // 2 + 1, (w - 1) // 2 : w // 2 + 1] = True
        assert torch.equal(factor, centre.to(factor.dtype))
    selection = tokenprune.pruner("attention | gaussian(sigma=1e-300) | top_k", keep=4)(
        Cues(Layout.grid(4, 4), attention=torch.rand(1, 16))
    )
    assert selection.indices.tolist() == [[5, 6, 9, 10]]


def test_numpy_integers_index_a_batch():
    np = pytest.importorskip("numpy")
    layout = Layout.grid(2, 2, batch=3)
    selection = tokenprune.pruner("fastv", keep=1)(Cues(layout, attention=torch.rand(3, 4)))
    for index in (np.int64(1), np.int32(-2), torch.tensor(1)):
        assert torch.equal(selection[index].mask, selection[1].mask)
        assert torch.equal(layout[index].valid, layout[1].valid)
    with pytest.raises(TypeError, match="index: expected an int or a slice, got float64"):
        selection[np.float64(1)]
