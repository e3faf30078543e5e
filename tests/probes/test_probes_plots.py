"""Plot builders: the figure data equal the table they were built from."""

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch
from tiny_models import make_model

from mythos_lens.capture import capture
from mythos_lens.errors import MythosLensError
from mythos_lens.readouts import logit_lens
from probes.convergence import lens_kl_table, step_table
from probes.lens import apply_lens, lens_long, lens_table
from probes.lora import lora_scale_cosine
from probes.plots import (
    convergence_curves,
    load_per_loop,
    loop_loop_heatmap,
    pca_orbit_table,
    pca_orbits,
    rank_trajectories,
    router_grid,
    token_loop_heatmap,
)
from probes.routing import expert_load, expert_visits, overlap_matrix, router_overlap
from probes.similarity import cka_table


@pytest.fixture(scope="module")
def trace():
    model = make_model("gqa_all_loops")
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(0))
    tr = capture(model, ids, n_loops=4)
    return model, ids, tr


def test_token_loop_heatmap_matches_lens_table(trace):
    model, ids, tr = trace
    df = lens_table(
        apply_lens(tr.loop["resid_post"], logit_lens(model)), tr.logits, target_ids=ids,
        positions=tr.positions,
    )  # fmt: skip
    fig = token_loop_heatmap(df, "target_rank", batch=1)
    assert isinstance(fig, go.Figure)
    hm = fig.data[0]
    z = np.asarray(hm.z)
    assert z.shape == (4, 7)
    for i, loop in enumerate(hm.y):
        for j, pos in enumerate(hm.x):
            want = df[(df.batch == 1) & (df.loop == loop) & (df.pos == pos)].target_rank.item()
            assert z[i, j] == want
    long = lens_long(df)
    z2 = np.asarray(token_loop_heatmap(long, "kl_final_lens").data[0].z)
    want = df[df.batch == 0].pivot(index="loop", columns="pos", values="kl_final_lens").to_numpy()
    assert np.allclose(z2, want)
    with pytest.raises(MythosLensError, match="metric"):
        token_loop_heatmap(long, "nope")


def test_rank_trajectories_lines_equal_table(trace):
    model, ids, tr = trace
    df = lens_table(apply_lens(tr.loop["resid_post"], logit_lens(model)), tr.logits, target_ids=ids)
    fig = rank_trajectories(df, "final_rank", batch=0)
    assert len(fig.data) == 7
    for tr_ in fig.data:
        p = int(tr_.name.split()[1])
        g = df[(df.batch == 0) & (df.pos == p)].sort_values("loop")
        assert list(tr_.x) == g.loop.tolist() and list(tr_.y) == g.final_rank.tolist()


def test_loop_loop_heatmaps(trace):
    _, _, tr = trace
    cka = cka_table(tr.loop["resid_post"], "debiased", site="h")
    fig = loop_loop_heatmap(cka, site="h")
    z = np.asarray(fig.data[0].z)
    for r in cka.itertuples():
        assert (
            z[list(fig.data[0].y).index(r.loop_a), list(fig.data[0].x).index(r.loop_b)] == r.value
        )
    ov = overlap_matrix(router_overlap(tr.loop["expert_ids"], tr.meta["n_experts"]))
    z = np.asarray(loop_loop_heatmap(ov).data[0].z)
    assert np.allclose(z, ov.pivot(index="loop_a", columns="loop_b", values="value").to_numpy())
    cos = lora_scale_cosine(tr.params["lora_scale"])
    assert np.asarray(loop_loop_heatmap(cos).data[0].z).shape == (4, 4)
    with pytest.raises(MythosLensError, match="several values"):
        loop_loop_heatmap(pd.concat([cka, cka.assign(site="x")]))


def test_pca_orbits_known_geometry_and_figure():
    # states on a line along channel 2: PC1 is that channel, sign-fixed, 100 % variance
    L, B, P, d = 3, 1, 2, 5
    h = torch.zeros(L, B, P, d, dtype=torch.float64)
    for t in range(L):
        h[t, 0, 0, 2] = t
        h[t, 0, 1, 2] = -t
    tab = pca_orbit_table(h)
    assert tab.explained_var_1.iloc[0] == pytest.approx(1.0)
    assert np.allclose(tab.pc1.to_numpy(), h[..., 2].reshape(-1).numpy() - 0.0)
    assert np.allclose(tab.pc2, 0.0)
    fig = pca_orbits(tab)
    assert len(fig.data) == 3  # two token lines + the loop-coloured markers
    line = fig.data[0]
    g = tab[tab.pos == 0].sort_values("loop")
    assert np.allclose(line.x, g.pc1) and np.allclose(line.y, g.pc2)
    assert (
        list(fig.data[-1].marker.color) == tab.sort_values(["batch", "pos", "loop"]).loop.tolist()
    )
    assert pca_orbit_table(h).equals(tab)  # deterministic


def test_router_and_load_figures(trace):
    _, _, tr = trace
    E = tr.meta["n_experts"]
    v = expert_visits(tr.loop["expert_ids"], E)
    z = np.asarray(router_grid(v, batch=1, slot=1).data[0].z)
    assert np.array_equal(z, tr.loop["expert_ids"][:, 1, :, 1].numpy())
    load = expert_load(tr.loop["expert_ids"], E)
    fig = load_per_loop(load)
    assert len(fig.data) == E
    for b in fig.data:
        e = int(b.name.split()[1])
        assert np.allclose(b.y, load[load.expert == e].sort_values("loop").fraction)


def test_convergence_curves_are_medians_with_iqr(trace):
    _, _, tr = trace
    df = step_table(tr.loop["resid_post"], h0=tr.stream["e"])
    fig = convergence_curves(df, ["rel_step"])
    sc = fig.data[0]
    med = df[df.metric == "rel_step"].groupby("loop").value.median()
    assert np.allclose(sc.y, med.to_numpy()) and list(sc.x) == med.index.tolist()
    q75 = df[df.metric == "rel_step"].groupby("loop").value.quantile(0.75)
    assert np.allclose(np.asarray(sc.error_y.array), (q75 - med).to_numpy())
    kl = lens_kl_table(torch.randn(3, 2, 4, 6, generator=torch.Generator().manual_seed(0)))
    assert convergence_curves(kl).data[0].name == "kl_prev"
    with pytest.raises(MythosLensError, match="columns"):
        convergence_curves(pd.DataFrame({"loop": [0]}))


def test_share_heatmap_cells_are_the_table():
    from probes.plots import share_heatmap

    df = pd.DataFrame({"depth": [1, 1, 2, 2], "loop": [0, 1, 0, 1], "s": [0.1, 0.2, 0.3, 0.4]})
    fig = share_heatmap(df, "depth", "loop", "s", title="t", xaxis_title="x", yaxis_title="y")
    hm = fig.data[0]
    assert np.allclose(np.asarray(hm.z), [[0.1, 0.2], [0.3, 0.4]])
    assert (hm.zmin, hm.zmax) == (0, 1) and list(hm.y) == [1, 2]
    with pytest.raises(MythosLensError):
        share_heatmap(df.drop(columns="s"), "depth", "loop", "s", title="t", xaxis_title="x",
                      yaxis_title="y")  # fmt: skip
