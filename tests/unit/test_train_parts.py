"""Trainer parts in-process: learning-rate schedule, resumable sampler, checkpoints, plot, progress."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from trainkit import make_project, prepare_data  # noqa: E402

from llmctl.config.model import ModelConfig  # noqa: E402
from llmctl.errors import LlmctlError  # noqa: E402
from llmctl.model.transformer import Transformer  # noqa: E402
from llmctl.train.checkpoint import Checkpointer  # noqa: E402
from llmctl.train.schedule import lr_at  # noqa: E402


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_schedule_warms_up_then_decays_to_the_floor(kind):
    kw = dict(peak=1.0, warmup=10, max_steps=110, kind=kind, min_ratio=0.1)
    lrs = [lr_at(s, **kw) for s in range(110)]
    assert lrs[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert lrs[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lr_at(110, **kw) == pytest.approx(0.1)
    mid = lr_at(60, **kw)
    assert mid == pytest.approx(0.55)  # half-way: cosine and linear both at the midpoint
    if kind == "cosine":
        assert lr_at(35, **kw) > 0.55 + (1 - 0.55) / 2  # cosine stays high longer than linear
    assert lr_at(50, peak=1.0, warmup=0, max_steps=100, kind="constant", min_ratio=0.1) == 1.0


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("proj"), docs=20)
    prepare_data(root)
    return root / "data" / "tiny"


def test_sampler_serves_each_window_once_per_epoch_and_resumes_exactly(data):
    from collections import Counter

    import numpy as np

    from llmctl.data.shards import TokenStore
    from llmctl.train.loader import WindowSampler

    store = TokenStore(data, "train")
    a = WindowSampler(store, 64, seed=3)
    n = a.windows
    whole = store.read(0, store.tokens)
    windows = Counter(tuple(whole[w * 64:w * 64 + 65].tolist()) for w in range(n))
    served = Counter()
    for _ in range(n):
        x, y = a.next_batch(1)
        assert np.array_equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one
        served[tuple(x[0].tolist()) + (int(y[0, -1]),)] += 1
    assert served == windows  # one epoch = every window exactly once
    a.position = 5
    # resume: a fresh sampler with the saved state continues with the very same batches
    state = a.state_dict()
    b = WindowSampler(store, 64, seed=3)
    b.load_state_dict(state)
    for _ in range(n // 4 + 2):  # across the epoch boundary
        xa, _ = a.next_batch(4)
        xb, _ = b.next_batch(4)
        assert np.array_equal(xa, xb)
    with pytest.raises(LlmctlError, match="but the data has"):
        WindowSampler(store, 32, seed=3).load_state_dict(state)


def test_one_epoch_is_a_permutation_of_the_windows(data):
    from llmctl.data.shards import TokenStore
    from llmctl.train.loader import WindowSampler

    s = WindowSampler(TokenStore(data, "train"), 64, seed=5)
    order = [s._window(i) for i in range(s.windows)]
    assert sorted(order) == list(range(s.windows))
    assert order != list(range(s.windows))
    assert [s._window(i) for i in range(s.windows, 2 * s.windows)] != order  # a new order each epoch


def _model(hidden=32, seed=0):
    torch.manual_seed(seed)
    c = ModelConfig(name="m", template="llama", layers=2, hidden=hidden, heads=4, kv_heads=2,
                    vocab_size=64, max_seq_len=16, tie_embeddings=True)
    m = Transformer(c)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    x = torch.randint(0, 64, (2, 8))
    m(x, x).backward()
    opt.step()
    return m, opt


HASHES = {"model_hash": "a", "config_hash": "b", "model_name": "m", "model_shape": "s"}


def test_checkpoint_round_trip_latest_pointer_and_pruning(tmp_path):
    m, opt = _model()
    ck = Checkpointer(tmp_path / "ck", keep_last=2)
    assert ck.latest() is None
    for step in (10, 20, 30):
        ck.save(step, m, opt, {**HASHES, "data": {"position": step}})
    assert (tmp_path / "ck" / "latest").read_text().strip() == "step-00000030"
    assert [p.name for p in ck.complete()] == ["step-00000020", "step-00000030"]
    m2, opt2 = _model(seed=1)
    state = ck.load(ck.latest(), m2, opt2, HASHES, "cpu")
    assert state["step"] == 30 and state["data"] == {"position": 30}
    for a, b in zip(m.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    sa, sb = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert all(torch.equal(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"]) for k in sa)


def test_a_checkpoint_of_another_model_is_refused_and_left_alone(tmp_path):
    m, opt = _model()
    ck = Checkpointer(tmp_path / "ck")
    path = ck.save(5, m, opt, dict(HASHES))
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    other, oopt = _model(hidden=64)
    with pytest.raises(LlmctlError, match="another model"):
        ck.load(path, other, oopt, {**HASHES, "model_hash": "zzz"}, "cpu")
    with pytest.raises(LlmctlError, match="another training config"):
        ck.load(path, m, opt, {**HASHES, "config_hash": "zzz"}, "cpu")
    with pytest.raises(LlmctlError, match="model.safetensors"):
        ck.load(path, other, oopt, HASHES, "cpu")  # same hashes but wrong shapes
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before


class Evil:
    def __reduce__(self):
        return (print, ("pickle code ran",))


def test_loading_never_runs_pickled_code(tmp_path, capsys):
    m, opt = _model()
    ck = Checkpointer(tmp_path / "ck")
    path = ck.save(1, m, opt, dict(HASHES))
    torch.save({"state": {}, "param_groups": [], "x": Evil()}, path / "optimizer.pt")
    with pytest.raises(LlmctlError, match="optimizer.pt: .* bytes, state.json records"):
        ck.load(path, m, opt, HASHES, "cpu")  # the digests catch it first
    with pytest.raises(LlmctlError, match="cannot load optimizer"):
        ck.load(path, m, opt, HASHES, "cpu", verify=False, warn=lambda _: None)
    assert "pickle code ran" not in capsys.readouterr().out


def test_every_file_is_verified_at_load_and_named_when_it_changed(tmp_path):
    from llmctl.train.checkpoint import verify_files

    m, opt = _model()
    ck = Checkpointer(tmp_path / "ck")
    path = ck.save(1, m, opt, dict(HASHES))
    files = json.loads((path / "state.json").read_text())["files"]
    assert sorted(files) == ["model.safetensors", "optimizer.pt", "rng.pt"]
    assert verify_files(path) == []
    original = (path / "rng.pt").read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0x01  # one bit, same size: only the sha256 sees it
    (path / "rng.pt").write_bytes(bytes(damaged))
    with pytest.raises(LlmctlError, match=r"step-00000001/rng.pt: contents differ from the sha256") as e:
        ck.load(path, m, opt, HASHES, "cpu")
    assert "--skip-verify" in e.value.hint
    warned = []
    ck.load(path, m, opt, HASHES, "cpu", verify=False, warn=warned.append)
    assert warned == [f"{path}: files not verified (--skip-verify)"]
    (path / "rng.pt").write_bytes(original[:-10])
    assert verify_files(path) == [f"{path / 'rng.pt'}: {len(original) - 10} bytes, state.json records "
                                  f"{len(original)}"]
    (path / "rng.pt").unlink()
    assert verify_files(path) == [f"{path / 'rng.pt'}: missing (state.json lists it)"]


def test_a_checkpoint_from_before_digests_loads_with_a_warning(tmp_path):
    m, opt = _model()
    ck = Checkpointer(tmp_path / "ck")
    path = ck.save(1, m, opt, dict(HASHES))
    state = json.loads((path / "state.json").read_text())
    del state["files"]
    (path / "state.json").write_text(json.dumps(state))
    warned = []
    assert ck.load(path, m, opt, HASHES, "cpu", warn=warned.append)["step"] == 1
    assert len(warned) == 1 and "no file digests" in warned[0]


def test_nonfinite_tensors_are_named_and_large_finite_ones_are_not():
    from llmctl.train.nonfinite import nonfinite_tensors

    big = torch.full((4, 4), 1e30)  # its sum of squares overflows float32; it is finite all the same
    nan, inf = torch.zeros(3), torch.zeros(2, 2)
    nan[1] = float("nan")
    inf[0, 0], inf[1, 1] = float("inf"), -float("inf")
    ids = torch.tensor([1, 2])  # not floating point: never counted
    assert nonfinite_tensors([("big", big), ("nan", nan), ("ids", ids), ("inf", inf)]) == [("nan", 1),
                                                                                           ("inf", 2)]
    assert nonfinite_tensors([("a", torch.ones(3, dtype=torch.bfloat16))]) == []


def test_nonfinite_policies():
    import math

    from llmctl.train.nonfinite import NonFiniteGuard, step_is_finite

    nan = float("nan")
    assert step_is_finite(1.0, 2.0) and not step_is_finite(nan, 2.0) and not step_is_finite(1.0, math.inf)
    assert step_is_finite(1.0, math.inf, scaled=True)  # the loss scaler's business
    stop = NonFiniteGuard("stop", 10)
    e = stop.after(7, 1.5, nan, "step-00000005")
    assert e.message.startswith("step 7: the gradient norm is not finite (loss 1.5, gradient norm nan)")
    assert "`latest` still points at step-00000005" in e.message
    skip = NonFiniteGuard("skip", 2, skipped=1)
    assert skip.after(8, nan, nan, None) is None
    e = skip.after(9, nan, 1.0, None)
    assert "step 9: the loss is not finite" in e.message and "3 steps so far" in e.message
    assert "max_skipped_steps = 2" in e.message and "no checkpoint was written" in e.message


def test_the_nonfinite_policy_is_checked_in_the_config(tmp_path):
    from llmctl.config.base import load_config
    from llmctl.config.train import TrainConfig
    from llmctl.errors import ConfigError

    base = '[model]\nname = "m"\nconfig_file = "m.json"\n[training]\n'
    good = tmp_path / "good.toml"
    good.write_text(base + 'nonfinite = "skip"\nmax_skipped_steps = 3\n')
    t = load_config(good, TrainConfig).training
    assert (t.nonfinite, t.max_skipped_steps) == ("skip", 3)
    assert load_config(_write(tmp_path / "d.toml", base), TrainConfig).training.nonfinite == "stop"
    for bad, key in (('nonfinite = "ignore"', "training.nonfinite"),
                     ("max_skipped_steps = -1", "training.max_skipped_steps")):
        with pytest.raises(ConfigError, match=key):
            load_config(_write(tmp_path / "bad.toml", base + bad + "\n"), TrainConfig)


def _write(path, text):
    path.write_text(text)
    return path


def test_a_broken_latest_pointer_is_an_error_and_partial_writes_are_cleaned(tmp_path):
    m, opt = _model()
    ck = Checkpointer(tmp_path / "ck")
    ck.save(1, m, opt, dict(HASHES))
    (tmp_path / "ck" / ".tmp-step-00000002-999").mkdir()
    assert [p.name for p in ck.clean_partial()] == [".tmp-step-00000002-999"]
    (tmp_path / "ck" / "latest").write_text("step-00000009\n")
    with pytest.raises(LlmctlError, match="not a complete checkpoint"):
        ck.latest()


def test_loss_plot_is_a_png_with_the_falling_curve(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    from llmctl.train.plot import plot_losses

    out = plot_losses([(s, 5.0 - s / 50) for s in range(1, 101)], [(50, 4.2), (100, 3.4)], tmp_path / "l.png")
    img = imread(out)  # rows top to bottom, RGBA floats
    h, w = img.shape[:2]
    blue = (abs(img[..., 0] - 31 / 255) < 0.02) & (abs(img[..., 1] - 119 / 255) < 0.02) & \
           (abs(img[..., 2] - 180 / 255) < 0.02)
    red = (abs(img[..., 0] - 214 / 255) < 0.02) & (abs(img[..., 1] - 39 / 255) < 0.02)
    assert blue.sum() > 300 and red.sum() > 50
    cols = blue.any(axis=0).nonzero()[0]
    left, right = cols[:10], cols[-10:]
    first_y = min(blue[:, c].nonzero()[0].min() for c in left)
    last_y = max(blue[:, c].nonzero()[0].max() for c in right)
    assert first_y < last_y  # the line falls from left to right (y grows downwards)
    assert list(tmp_path.iterdir()) == [out]  # no temporary file left behind


def test_progress_summary_from_metrics(tmp_path):
    from llmctl.train.progress import summarize

    assert summarize(tmp_path)["started"] is False
    recs = [{"kind": "start", "step": 0, "max_steps": 100},
            {"kind": "train", "step": 40, "max_steps": 100, "loss": 3.0, "tokens_per_s": 1000.0, "mfu": 0.4,
             "step_time_s": 3.0, "memory_gb": 1.0},
            {"kind": "train", "step": 50, "max_steps": 100, "loss": 2.5, "tokens_per_s": 1200.0, "mfu": 0.5,
             "step_time_s": 1.0, "memory_gb": 1.0},
            {"kind": "eval", "step": 50, "val_loss": 2.7},
            {"kind": "end", "step": 50, "reason": "preempted"},
            {"kind": "start", "step": 50, "max_steps": 100}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n{cut by a ki")
    s = summarize(tmp_path)
    assert (s["step"], s["loss"], s["val_loss"], s["tokens_per_s"], s["mfu"]) == (50, 2.5, 2.7, 1200.0, 0.5)
    assert s["eta_s"] == pytest.approx(50 * 2.0)  # 50 steps left at the mean of 3 s and 1 s
    assert s["restarts"] == 1 and s["finished"] is False
