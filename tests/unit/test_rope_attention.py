import pytest
import torch

from pipeline.attention import attention, naive_attention, resolve_backend
from pipeline.rope import apply_rope, axis_pairs, rope_angles, rope_cos_sin


def wan_rope_complex(x, frame_pos, h, w, theta=10000.0):
    """Independent float64 complex implementation of Wan's rope_apply for a single grid."""
    d = x.shape[-1]
    parts = [d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6)]
    freqs = []
    for dim, pos in zip(parts, [frame_pos.double(), torch.arange(h).double(), torch.arange(w).double()]):
        inv = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        freqs.append(torch.polar(torch.ones(len(pos), dim // 2, dtype=torch.float64), torch.outer(pos, inv)))
    f = len(frame_pos)
    grid = torch.cat([freqs[0][:, None, None].expand(f, h, w, -1), freqs[1][None, :, None].expand(f, h, w, -1),
                      freqs[2][None, None, :].expand(f, h, w, -1)], -1).reshape(f * h * w, 1, -1)
    xc = torch.view_as_complex(x.double().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * grid).flatten(-2)


def test_axis_split_matches_wan():
    assert axis_pairs(128) == (22, 21, 21)  # Wan 1.3B/14B head dim 128
    assert sum(axis_pairs(16)) == 8


def test_rope_matches_wan_complex_formula():
    x = torch.randn(2, 3 * 2 * 4, 2, 16)
    pos = torch.tensor([5, 6, 7])
    cos, sin = rope_cos_sin(pos, 2, 4, 16)
    assert torch.allclose(apply_rope(x, cos, sin).double(), wan_rope_complex(x, pos, 2, 4), atol=1e-5)


def test_rope_scores_depend_only_on_relative_frame_position():
    q, k = torch.randn(1, 4, 1, 16), torch.randn(1, 4, 1, 16)

    def score(pq, pk):
        cq, sq = rope_cos_sin(torch.tensor([pq]), 2, 2, 16, dtype=torch.float64)
        ck, sk = rope_cos_sin(torch.tensor([pk]), 2, 2, 16, dtype=torch.float64)
        return (apply_rope(q.double(), cq, sq) * apply_rope(k.double(), ck, sk)).sum(-1)

    assert torch.allclose(score(3, 1), score(1003, 1001), atol=1e-9)
    assert not torch.allclose(score(3, 1), score(4, 1), atol=1e-3)


def test_no_position_cap():
    a = rope_angles(torch.tensor([10**7]), 1, 1, 16)
    assert torch.isfinite(a).all()


@pytest.mark.parametrize("masked", [False, True])
def test_sdpa_matches_float64_naive(masked):
    q, k, v = torch.randn(2, 7, 3, 8), torch.randn(2, 11, 3, 8), torch.randn(2, 11, 3, 8)
    mask = torch.rand(7, 11) > 0.3 if masked else None
    if mask is not None:
        mask[:, 0] = True  # every row attends somewhere
    out = attention(q, k, v, mask)
    assert out.shape == (2, 7, 3, 8)
    assert torch.allclose(out.double(), naive_attention(q, k, v, mask), atol=1e-5)


def test_sdpa_backward_matches_naive():
    q, k, v = (torch.randn(1, 5, 2, 8, requires_grad=True) for _ in range(3))
    mask = torch.tril(torch.ones(5, 5, dtype=torch.bool))
    attention(q, k, v, mask).square().sum().backward()
    g = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    naive_attention(q, k, v, mask).square().sum().backward()
    assert all(torch.allclose(a, b.grad, atol=1e-5) for a, b in zip(g, (q, k, v)))


def test_backend_resolution():
    assert resolve_backend("sdpa") == "sdpa"
    if not torch.cuda.is_available():
        assert resolve_backend("auto") == "sdpa"
        with pytest.raises(RuntimeError, match="flash-attn"):
            resolve_backend("flash")
    with pytest.raises(ValueError, match="auto, sdpa, flash"):
        resolve_backend("xformers")


def test_runtime_attention_is_the_default_backend(monkeypatch):
    """runtime.attention reaches every attention call (the generator and trainers `configure` it);
    $ROLLFORGE_ATTENTION still wins."""
    from pipeline import attention as attention_mod

    monkeypatch.delenv("ROLLFORGE_ATTENTION", raising=False)
    monkeypatch.setattr(attention_mod, "_configured", "auto")
    attention_mod.configure("sdpa")
    assert resolve_backend() == "sdpa"
    with pytest.raises(ValueError, match="runtime.attention"):
        attention_mod.configure("xformers")
    if not attention_mod.flash_available():
        attention_mod.configure("flash")
        with pytest.raises(RuntimeError, match="flash-attn"):
            resolve_backend()
    monkeypatch.setenv("ROLLFORGE_ATTENTION", "sdpa")
    assert resolve_backend() == "sdpa"
