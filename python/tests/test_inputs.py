"""Array inputs: dtypes, layouts, views, bad inputs refused with nothing written, the GIL
released, Python and the CLI writing one registry at once, and no extra copy of big arrays."""

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import prh
from conftest import BIN, cli, cli_json


def feats(n=64, layers=3, d=16, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal((n, layers, d)).astype(dtype)


def snapshot(reg):
    return [cli(reg, "ls", w, "--format", "json") for w in ("models", "checkpoints", "reps", "scores", "datasets")]


def test_dtypes_and_layouts(empty):
    reg = prh.Registry(empty)
    for i, dt in enumerate([np.float16, np.float32, np.float64]):
        reg.log(feats(dtype=dt), model=f"m{i}", dataset="ds", modality="language")
    reps = reg.reps()
    assert sorted(set(reps["dtype"])) == ["f16", "f32", "f64"]
    assert set(reps["layout"]) == {"stacked"}
    # A list of layers of different widths: one clamp threshold per layer (layout "layers").
    x = feats(layers=1)[:, 0]
    reg.log([x, x[:, :8].copy(), np.ascontiguousarray(x[:, ::2])], model="widths", dataset="ds", modality="vision")
    r = reg.reps(model="widths")
    assert list(r["d"]) == [16, 8, 8] and set(r["layout"]) == {"layers"}


def test_sample_ids_are_checked_against_the_datasets_order(empty):
    reg = prh.Registry(empty)
    ids = [f"img_{i:03d}" for i in range(64)]
    reg.log(feats(), model="a", dataset="wit", modality="vision", sample_ids=ids)
    assert cli(empty, "dataset", "ids", "wit").split() == ids
    digest = cli_json(empty, "dataset", "ls")[0]["ids_digest"]
    reg.log(feats(seed=1), model="b", dataset="wit", modality="vision", sample_ids=digest)
    before = snapshot(empty)
    scrambled = ids[1:] + ids[:1]
    with pytest.raises(prh.Conflict, match="the same 64 samples in another order"):
        reg.log(feats(seed=2), model="c", dataset="wit", modality="vision", sample_ids=scrambled)
    assert snapshot(empty) == before


def test_views_are_read_in_place_or_copied_correctly(empty, tmp_path):
    reg = prh.Registry(empty)
    base = feats(layers=4)
    view = base[:, ::2, :]  # strided, no copy needed
    reg.log(view, model="strided", dataset="ds", modality="language")
    rev = base[::-1]  # negative strides: copied once
    reg.log(rev, model="reversed", dataset="ds", modality="language")
    np.save(tmp_path / "same.npy", np.ascontiguousarray(view))
    rep = reg.ingest(tmp_path / "same.npy", model="from-file", dataset="ds", modality="language")
    hashes = lambda m: list(reg.reps(model=m)["hash"])
    assert hashes("strided") == hashes("from-file"), "a view stores the same bytes as the file"
    assert hashes("reversed") != hashes("strided")


def test_bf16_through_ml_dtypes(empty):
    import ml_dtypes
    reg = prh.Registry(empty)
    x = feats().astype(ml_dtypes.bfloat16)
    reg.log(x, model="bf", dataset="ds", modality="language")
    assert set(reg.reps(model="bf")["dtype"]) == {"bf16"}
    # Same values in f32 align perfectly with the bf16 copy.
    score = prh.compare(x, x.astype(np.float32), metric="mutual_knn")
    assert score == 1.0


@pytest.mark.parametrize(
    "bad, kind, needle",
    [
        (np.full((64, 16), np.nan, dtype=np.float32), prh.InvalidInput, "NaN"),
        (np.zeros(64, dtype=np.float32), prh.InvalidInput, "n × d"),
        (np.zeros((64, 16), dtype=np.int64), prh.InvalidInput, "floating point"),
        (np.ones((63, 16), dtype=np.float32), prh.InvalidInput, "n = 64"),
        ([np.ones((64, 4), np.float32), np.ones((32, 4), np.float32)], prh.InvalidInput, "n"),
        ([], prh.InvalidInput, "empty"),
    ],
)
def test_bad_inputs_are_refused_and_nothing_is_written(empty, bad, kind, needle):
    reg = prh.Registry(empty)
    reg.log(feats(), model="ok", dataset="ds", modality="language")
    before = snapshot(empty)
    with pytest.raises(kind) as e:
        reg.log(bad, model="bad", dataset="ds", modality="language")
    assert needle in str(e.value), str(e.value)
    assert "\n" not in str(e.value), "one line, as the CLI prints"
    assert snapshot(empty) == before


def test_errors_name_what_to_do(empty, tmp_path):
    with pytest.raises(prh.NotFound):
        prh.Registry(tmp_path / "nowhere")
    reg = prh.Registry(empty)
    reg.log(feats(), model="a", dataset="ds", modality="language")
    reg.log(feats(seed=1), model="b", dataset="ds", modality="vision")
    with pytest.raises(prh.NotCached) as e:
        reg.matrix(metric="cka", x="a", y="b")
    assert "prh align --metric cka --x a --y b" in str(e.value)
    assert reg.matrix(metric="cka", x="a", y="b", compute=True).height == 1
    with pytest.raises(prh.InvalidInput, match="metric"):
        reg.align(x="a", y="b", metric="no_such_metric")


def test_each_error_kind_has_its_class_and_survives_pickling(empty, tmp_path):
    """The Python side of the error-kind table (tests/errors.rs has the exit codes and HTTP
    statuses): each kind raised the way a user meets it, as its own class."""
    import pickle

    reg = prh.Registry(empty)
    reg.log(feats(), model="a", dataset="ds", modality="language")
    reg.log(feats(seed=1), model="b", dataset="ds", modality="vision")
    cases = [
        (prh.NotFound, "no model named no-such-model", lambda: reg.align(x="no-such-model", y="b", metric="cka")),
        (prh.InvalidInput, "unknown metric", lambda: reg.align(x="a", y="b", metric="no_such_metric")),
        (prh.Conflict, "registered with modality language, not vision", lambda: reg.log(feats(), model="a", checkpoint="2", dataset="ds", modality="vision")),
        (prh.NotCached, "no complete cached alignment", lambda: reg.matrix(metric="cka", x="a", y="b")),
        (prh.Unsupported, "S3-compatible object stores only", lambda: prh.init(str(tmp_path / "g"), blobs="gs://b/p")),
        (prh.BackendError, "Not a directory", lambda: prh.init(str(tmp_path / "file" / "reg"))),
    ]
    (tmp_path / "file").write_text("x")
    for cls, words, call in cases:
        with pytest.raises(cls, match=words) as e:
            call()
        err = e.value
        assert type(err).__module__ == "prh", type(err)
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is cls and str(back) == str(err), (cls, back)
    # NotCached carries its hint line: the command that fills the cells.
    with pytest.raises(prh.NotCached) as e:
        reg.matrix(metric="cka", x="a", y="b")
    assert "\nhint: fill them with `prh align --metric cka --x a --y b`" in str(e.value)


def test_an_error_in_a_worker_process_reaches_the_parent_as_its_class(empty):
    """A multiprocessing worker's prh error pickles back to the parent as prh.NotFound (it was
    lost before: the classes lived in the unimportable module `_prh`)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        with pytest.raises(prh.NotFound, match="no model named ghost"):
            pool.apply(_align_ghost, (str(empty),))


def test_every_metric_option_reaches_python(empty):
    """kernel, sigma, cca_dim, ridge and ties are parsed by the CLI's parser: the same numbers
    as `prh align` with those flags, and an unknown option is refused by name."""
    reg = prh.Registry(empty)
    reg.log(feats(), model="a", dataset="ds", modality="language")
    reg.log(feats(seed=1), model="b", dataset="ds", modality="vision")
    cases = [
        ("cka", {"kernel": "rbf", "sigma": 2.5}, ["--kernel", "rbf", "--sigma", "2.5"]),
        ("svcca", {"cca_dim": 4}, ["--cca-dim", "4"]),
        ("linear_r2", {"ridge": 0.25}, ["--ridge", "0.25"]),
        ("mutual_knn", {"ties": "expected", "k": 5}, ["--ties", "expected", "--k", "5"]),
    ]
    for metric, params, flags in cases:
        got = reg.align(x="a", y="b", metric=metric, **params)
        want = cli_json(empty, "align", "--x", "a", "--y", "b", "--metric", metric, *flags)
        assert got["score"][0] == want[0]["score"], (metric, params)
        default = reg.align(x="a", y="b", metric=metric)
        assert default["score"][0] != got["score"][0], f"{params} changed nothing"
    with pytest.raises(prh.InvalidInput, match="unknown option.*sigmaa"):
        reg.align(x="a", y="b", metric="cka", kernel="rbf", sigmaa=2.0)
    with pytest.raises(prh.InvalidInput, match="kernel must be linear or rbf"):
        reg.align(x="a", y="b", metric="cka", kernel="poly")


def _align_ghost(path):
    prh.Registry(path).align(x="ghost", y="ghost", metric="cka")


def test_the_gil_is_released_while_prh_works(empty):
    """A thread counts while `log` works: with the GIL released it keeps most of the rate it
    reaches while the main thread sleeps (measured 90-98 % over 5 runs); with the GIL held it
    runs only while `log`'s Python part does (measured 8.5 % on a build without the release)."""
    import time

    reg = prh.Registry(empty)
    big = feats(n=2048, layers=24, d=512)
    ticks = [0]
    stop = threading.Event()

    def count():
        while not stop.is_set():
            ticks[0] += 1

    t = threading.Thread(target=count)
    t.start()
    time.sleep(0.05)  # the thread is running
    before, t0 = ticks[0], time.perf_counter()
    time.sleep(0.3)
    idle_rate = (ticks[0] - before) / (time.perf_counter() - t0)
    before, t0 = ticks[0], time.perf_counter()
    reg.log(big, model="big", dataset="ds2048", modality="language", progress=False)
    took = time.perf_counter() - t0
    during_rate = (ticks[0] - before) / took
    stop.set()
    t.join()
    share = during_rate / idle_rate
    print(f"counting thread during log: {share:.1%} of its idle rate ({took:.2f} s call)")
    assert took > 0.05, f"log took {took:.3f} s: too short to tell"
    assert share > 0.4, f"the counting thread ran at {share:.1%} of its idle rate during log"


def test_python_and_the_cli_write_one_registry_at_once(empty, tmp_path):
    reg = prh.Registry(empty)
    reg.log(feats(), model="seed", dataset="ds", modality="vision")
    files = []
    for i in range(16):
        f = tmp_path / f"cli{i}.npy"
        np.save(f, feats(seed=100 + i))
        files.append(f)
    # Two CLI ingests start right before each Python write (started all at once, the CLI
    # processes finished before the first Python write: nothing ran at once). After each
    # Python write, how many CLI ingests had finished: a count strictly between 0 and 16
    # means a CLI commit came before that Python commit and another after it.
    procs, finished = [], []
    for i in range(8):
        procs += [
            subprocess.Popen([BIN, "--registry", str(empty), "ingest", str(f), "--model", f"cli{j}",
                              "--dataset", "ds", "--modality", "language"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
            for j, f in list(enumerate(files))[2 * i:2 * i + 2]
        ]
        reg.log(feats(seed=200 + i), model=f"py{i}", dataset="ds", modality="language", against="seed", progress=False)
        finished.append(sum(p.poll() is not None for p in procs))
    for p in procs:
        assert p.wait() == 0, p.stderr.read()
    assert any(0 < f < 16 for f in finished), f"the writers did not interleave: {finished}"
    names = set(reg.models()["name"])
    assert names >= {f"cli{i}" for i in range(16)} | {f"py{i}" for i in range(8)}
    cli(empty, "verify")


def test_a_large_array_is_logged_without_an_extra_copy(empty):
    # In a fresh process: peak RSS over the array's own size stays well below one more copy.
    code = f"""
import resource, numpy as np, prh
x = np.random.default_rng(0).standard_normal((1024, 16, 4096), dtype=np.float32)  # 256 MiB
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
prh.Registry({str(empty)!r}).log(x, model="big", dataset="big", modality="language", progress=False)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((peak - base) * 1024, x.nbytes)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    extra, size = map(int, out.stdout.split())
    print(f"peak RSS above the array while logging it: {extra / 2**20:.1f} MiB for a {size / 2**20:.0f} MiB array")
    assert extra < size / 4, (extra, size)


def test_the_example_trains_logs_and_plots(tmp_path):
    import sklearn  # noqa: F401  (the example needs it; a missing one is a failure, not a skip)
    example = os.path.join(os.path.dirname(__file__), "..", "examples", "train_and_log.py")
    out = subprocess.run([sys.executable, example, "--registry", str(tmp_path / "reg"), "--epochs", "4",
                          "--plot", str(tmp_path / "trajectory.svg")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "trajectory" in out.stdout and (tmp_path / "trajectory.svg").stat().st_size > 1000


@pytest.mark.parametrize(
    "arr, needle",
    [
        (np.float32(1.0), "n × d"),
        (np.zeros((8, 2, 2, 4), np.float32), "n × d"),
        (np.zeros((64, 4), bool), "floating point"),
        (np.zeros((64, 4), np.int32), "floating point"),
        (np.array([[1.0, 2.0]] * 64, dtype=object), "floating point"),
        (np.zeros((64, 4), np.complex64), "floating point"),
        # Views that claim far more elements than their buffer holds.
        (np.lib.stride_tricks.as_strided(np.zeros(16, np.float32), shape=(1 << 20, 1 << 20), strides=(0, 0)), "overlap"),
        (np.lib.stride_tricks.as_strided(np.zeros(16, np.float32), shape=(64, 64), strides=(4, 4)), "overlap"),
        (np.full((64, 4), np.inf, np.float32), "NaN or Inf"),
        (np.zeros((0, 4), np.float32), "empty"),
        (np.zeros((64, 0), np.float32), "empty"),
    ],
    ids=["0-d", "4-d", "bool", "int32", "object", "complex", "strided-huge", "strided-overlap", "inf", "no-rows", "no-columns"],
)
def test_hostile_arrays_are_refused_with_a_prh_error_and_nothing_written(empty, arr, needle):
    reg = prh.Registry(empty)
    reg.log(feats(), model="ok", dataset="ds", modality="language")
    before = snapshot(empty)
    with pytest.raises(prh.InvalidInput) as e:
        reg.log(arr, model="bad", dataset="other", modality="language", progress=False)
    assert needle in str(e.value), str(e.value)
    assert snapshot(empty) == before


def test_threads_log_at_once(empty):
    reg = prh.Registry(empty)
    errors = []

    def log(i):
        try:
            reg.log(feats(seed=300 + i), model=f"t{i}", dataset="ds", modality="language", progress=False)
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=log, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert set(reg.models()["name"]) == {f"t{i}" for i in range(6)}
    cli(empty, "verify")


def test_a_process_forked_after_prh_worked_can_log(empty):
    # In a fresh interpreter (a hang there cannot hang pytest): the parent logs, forks, the
    # child logs too (as a DataLoader worker would), the parent goes on.
    code = f"""
import os, sys, time, numpy as np, prh
reg = prh.Registry({str(empty)!r})
x = np.random.default_rng(0).standard_normal((64, 3, 16)).astype(np.float32)
reg.log(x, model="parent", dataset="ds", modality="language", progress=False)
pid = os.fork()
if pid == 0:
    prh.Registry({str(empty)!r}).log(x * 2, model="child", dataset="ds", modality="language", progress=False)
    os._exit(0)
t = time.time()
while True:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        break
    if time.time() - t > 60:
        os.kill(pid, 9)
        sys.exit("the forked child hung")
    time.sleep(0.05)
assert os.waitstatus_to_exitcode(status) == 0, status
reg.log(x * 3, model="after", dataset="ds", modality="language", progress=False)
print(sorted(reg.models()["name"]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "'child'" in out.stdout and "'after'" in out.stdout, out.stdout


def test_names_are_one_whatever_the_unicode_spelling(empty):
    """'café' with a combining accent (as macOS file names and some keyboards give it) and
    precomposed is one model, from Python as from the CLI."""
    reg = prh.Registry(empty)
    nfc, nfd = "caf\u00e9", "cafe\u0301"
    reg.log(feats(), model=nfd, checkpoint="s1", step=1, dataset="ds", modality="language")
    reg.log(feats(seed=1), model=nfc, checkpoint="s2", step=2, dataset="ds")
    reg.log(feats(seed=2), model="vit", dataset="ds", modality="vision")
    assert list(reg.models()["name"]) == [nfc, "vit"]
    for name in (nfc, nfd):
        assert reg.reps(model=name).height == 6
        assert reg.align(x=name, y="vit", metric="cka").height == 1
