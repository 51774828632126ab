"""Every API call, checked against the CLI's --format json on the same registry."""

import numpy as np
import polars as pl
import pytest

import prh
from conftest import cli, cli_json

X, Y = "modality=language", "modality=vision"


def rows(df: pl.DataFrame):
    return df.to_dicts()


def test_charts_equal_the_cli(demo):
    reg = prh.Registry(demo)
    t = reg.trend(metric="mutual_knn", x=X, y=Y, perf="bpb")
    assert t.to_dict() == cli_json(demo, "trend", "--metric", "mutual_knn", "--x", X, "--y", Y, "--perf", "bpb")
    assert t.pearson_r < -0.9 and t.n_models == 6 and t.models.height == 6
    m = reg.matrix(metric="mutual_knn", x=X, y=Y, perf="bpb")
    assert rows(m) == cli_json(demo, "matrix", "--metric", "mutual_knn", "--x", X, "--y", Y, "--perf", "bpb")
    tr = reg.trajectory(model="lm-large", against=Y, metric="mutual_knn")
    assert rows(tr) == cli_json(demo, "trajectory", "--metric", "mutual_knn", "--model", "lm-large", "--against", Y)
    assert tr.height == 24


def test_listings_and_sql_equal_the_cli(demo):
    reg = prh.Registry(demo)
    assert rows(reg.models()) == cli_json(demo, "ls", "models")
    assert rows(reg.checkpoints()) == cli_json(demo, "ls", "checkpoints")
    assert rows(reg.reps(model="lm-large")) == cli_json(demo, "ls", "reps", "--model", "lm-large")
    assert rows(reg.scores()) == cli_json(demo, "ls", "scores")
    assert rows(reg.datasets()) == cli_json(demo, "ls", "datasets")
    sql = "SELECT x_model, y_model, score FROM alignment ORDER BY score DESC, x_model, y_model"
    assert rows(reg.query(sql)) == cli_json(demo, "query", sql)


def test_align_matches_the_cli_and_uses_the_cache(demo):
    reg = prh.Registry(demo)
    calls = []
    df = reg.align(x="lm-xxl", y=["vit-g", "vit-e"], metric="mutual_knn", progress=lambda d, t: calls.append((d, t)))
    cli_rows = cli_json(demo, "align", "--metric", "mutual_knn", "--x", "lm-xxl", "--y", "vit-g,vit-e", "-q")
    assert [(r["y_model"], r["score"]) for r in rows(df)] == [(r["y_model"], r["score"]) for r in cli_rows]
    assert df["cells_computed"].sum() == 0, "the demo cached these pairs"


def test_log_aligns_a_new_checkpoint_and_trajectory_follows(demo, tmp_path):
    reg = prh.Registry(demo)
    feats = np.random.default_rng(3).standard_normal((256, 4, 32)).astype(np.float32)
    seen = []
    out = reg.log(
        feats, model="my-llm", checkpoint="step-100", step=100, dataset="demo_256",
        modality="language", scores={"bpb": 1.5}, meta={"revision": "abc"},
        against=["vit-g", "vit-e"], metric="mutual_knn", k=10, progress=lambda d, t: seen.append((d, t)),
    )
    assert set(out["y_model"]) == {"vit-g", "vit-e"} and out["cells_computed"].sum() > 0
    assert seen and seen[-1][0] == seen[-1][1], seen
    cli_scores = cli_json(demo, "ls", "scores", "--model", "my-llm")
    assert cli_scores == [{"model": "my-llm", "checkpoint": "step-100", "name": "bpb", "value": 1.5, "higher_is_better": False}]
    assert reg.checkpoints(model="my-llm").to_dicts()[0]["meta"] == {"revision": "abc"}
    # The same features again: nothing new, all cached.
    again = reg.log(feats, model="my-llm", checkpoint="step-100", dataset="demo_256", against=["vit-g", "vit-e"], progress=False)
    assert again["cells_computed"].sum() == 0
    assert all(not l["new_row"] for l in reg.last_ingest["layers"])


def test_ingest_export_import_and_compare(demo, tmp_path):
    reg = prh.Registry(demo)
    bundle = tmp_path / "zoo.prh"
    report = reg.export(bundle, models=["lm-xxl", "vit-g"])
    assert bundle.exists() and report
    other = prh.init(tmp_path / "other")
    other.import_(bundle)
    assert sorted(other.models()["name"]) == ["lm-xxl", "vit-g"]
    # A file through ingest, and compare against the CLI's value.
    a = tmp_path / "a.npy"
    b = tmp_path / "b.npy"
    rng = np.random.default_rng(0)
    fa = rng.standard_normal((128, 3, 24)).astype(np.float32)
    fb = (fa[:, 1, :16] + 0.5 * rng.standard_normal((128, 16))).astype(np.float32)
    np.save(a, fa)
    np.save(b, fb)
    rep = other.ingest(a, model="file-model", dataset="ds128", modality="language")
    assert rep["layout"] == "stacked" and len(rep["layers"]) == 3
    def value(*args):
        v = cli_json(tmp_path, "compare", str(a), str(b), *args)
        return (v[0] if isinstance(v, list) else v)["value"]

    want = value("--metric", "cka")
    assert prh.compare(fa, fb, metric="cka") == pytest.approx(want, abs=1e-12)
    want = value("--metric", "mutual_knn", "--k", "5")
    assert prh.compare(fa, fb, metric="mutual_knn", k=5) == want


def test_help_tells_what_to_pass():
    doc = prh.Registry.log.__doc__
    for word in ["feats", "n × L × d", "against", "InvalidInput", "progress"]:
        assert word in doc, word
    assert issubclass(prh.NotCached, prh.Conflict) and issubclass(prh.Conflict, prh.Error)


def test_clamp_rule_picks_platonic_reps_convention_and_says_so(demo):
    # The two conventions of platonic-rep's remove_outliers: different cells, labelled, and the
    # same numbers as the CLI.
    reg = prh.Registry(demo)
    pair = dict(x="lm-xxl", y="vit-g", metric="mutual_knn")
    exact = rows(reg.align(**pair))[0]
    mean = rows(reg.align(**pair, clamp_rule="sample-mean"))[0]
    assert exact["prep"] == "clamp(q=0.95);l2"
    assert mean["prep"] == "clamp(q=0.95,rule=sample-mean);l2"
    assert mean["cells_computed"] > 0
    cli_rows = cli_json(
        demo, "align", "--metric", "mutual_knn", "--x", "lm-xxl", "--y", "vit-g",
        "--clamp-rule", "sample-mean", "-q",
    )
    assert mean["score"] == cli_rows[0]["score"] and cli_rows[0]["cells_computed"] == 0
    m = rows(reg.matrix(x="lm-xxl", y="vit-g", metric="mutual_knn", clamp_rule="sample-mean"))
    assert m[0]["vit-g"] == mean["score"]
    assert m[0]["prep"] == "clamp(q=0.95,rule=sample-mean);l2"
    q = rows(reg.matrix(x=X, y=Y, metric="mutual_knn", values="q_value", null=30))
    assert q == cli_json(
        demo, "matrix", "--metric", "mutual_knn", "--x", X, "--y", Y, "--values", "q_value",
        "--null", "30",
    )
    assert all(r["values"] == "q_value" for r in q)
    with pytest.raises(prh.InvalidInput, match="needs a permutation null"):
        reg.matrix(x=X, y=Y, metric="mutual_knn", values="q_value")
    assert prh.compare(
        np.ones((8, 4), np.float32) + np.eye(8, 4, dtype=np.float32), np.eye(8, 4, dtype=np.float32) + 1,
        clamp_rule="sample-mean", k=2,
    ) >= 0
    with pytest.raises(prh.InvalidInput, match="clamp_rule"):
        reg.align(**pair, clamp_rule="median")
