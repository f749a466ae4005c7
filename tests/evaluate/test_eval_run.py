"""evaluate_run end to end at smoke size (quick settings): every task, eval.json, determinism,
the random-vs-pretrained switch, errors, and the ``detcon evaluate`` command."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from detcon.atomic import save_torch, write_json
from detcon.config import load_pretrain_config, to_dict
from detcon.evaluate import cpu_settings, evaluate_run
from detcon.models import build_backbone

torch.set_num_threads(1)

QUICK = cpu_settings(quick=True)

EXPECTED = {
    "segmentation": {"miou", "pixel_acc"},
    "depth": {"rmse", "delta1"},
    "linear": {"top1", "presence_map"},
    "detection": {"ap_bb", "ap50_bb", "ap_mk", "ap50_mk"},
}


def make_run_dir(path, seed=1):
    cfg = load_pretrain_config({"model": {"small_width": 8}}, profile="cpu")
    path.mkdir(parents=True, exist_ok=True)
    write_json(path / "config.json", to_dict(cfg))
    torch.manual_seed(seed)
    save_torch(path / "backbone.pt", build_backbone(cfg.model).state_dict())
    return path


def check_ranges(results):
    for name, metrics in results.items():
        for metric, value in metrics.items():
            assert math.isfinite(value), (name, metric, value)
            if metric == "rmse":
                assert value >= 0
            else:
                assert 0.0 <= value <= 1.0, (name, metric, value)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    run = make_run_dir(tmp_path_factory.mktemp("run"))
    messages = []
    results = evaluate_run(run, settings=QUICK, progress=messages.append)
    return run, results, messages


def test_every_task_returns_finite_metrics_in_range(full_run):
    _, results, messages = full_run
    assert {k: set(v) for k, v in results.items()} == EXPECTED
    check_ranges(results)
    assert any("detection: done" in m for m in messages)


def test_eval_json_is_written_atomically_with_the_results(full_run):
    run, results, _ = full_run
    stored = json.loads((run / "eval.json").read_text())
    # make_run_dir writes no record of the encoder's training step: unknown, not finished.
    assert stored.pop("encoder") == {"step": None, "planned_steps": None, "finished": False}
    probe = stored.pop("probe")
    assert (probe["profile"], probe["split"], probe["seed"]) == ("cpu", None, 0)
    assert stored == results
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


def test_an_unfinished_run_is_evaluated_with_a_warning_and_its_step_recorded(tmp_path, capsys):
    run = make_run_dir(tmp_path / "run")
    write_json(run / "backbone.json", {"step": 3, "planned_steps": 6})  # pretrain --stop-after 3
    evaluate_run(run, settings=QUICK, tasks=("linear",))
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert "has not finished pretraining" in err and "from step 3 of 6" in err
    stored = json.loads((run / "eval.json").read_text())
    assert stored["encoder"] == {"step": 3, "planned_steps": 6, "finished": False}
    # Finished now: no warning; the entry measured on the step-3 encoder is not kept beside it.
    write_json(run / "backbone.json", {"step": 6, "planned_steps": 6})
    write_json(run / "train_summary.json", {"steps": 6, "final_loss": 1.0})
    evaluate_run(run, settings=QUICK, tasks=("depth",))
    assert capsys.readouterr().err == ""
    stored = json.loads((run / "eval.json").read_text())
    assert stored["encoder"] == {"step": 6, "planned_steps": 6, "finished": True}
    assert set(stored) == {"depth", "encoder", "probe"}
    # The random baseline has no training step to record.
    evaluate_run(run, settings=QUICK, tasks=("depth",), backbone="random")
    assert "encoder" not in json.loads((run / "eval_random.json").read_text())


def test_same_run_and_seed_give_the_same_metrics_and_other_tasks_are_kept(full_run, tmp_path):
    run, results, _ = full_run
    again = evaluate_run(
        run, settings=QUICK, tasks=("linear", "segmentation"), out_name="again.json"
    )
    assert again == {k: results[k] for k in ("segmentation", "linear")}
    # A later partial evaluation keeps the other tasks of an existing result file.
    stored = json.loads((run / "eval.json").read_text())
    evaluate_run(run, settings=QUICK, tasks=("linear",))
    assert json.loads((run / "eval.json").read_text()) == stored


def test_random_backbone_is_the_baseline_in_its_own_file(full_run):
    run, results, _ = full_run
    random = evaluate_run(run, settings=QUICK, tasks=("linear", "depth"), backbone="random")
    check_ranges(random)
    assert (run / "eval_random.json").is_file()
    assert random["depth"] != results["depth"]
    # The run's own eval.json is untouched by the baseline.
    assert json.loads((run / "eval.json").read_text())["depth"] == pytest.approx(results["depth"])


def test_supervised_backbone_is_the_ceiling_in_its_own_file(full_run):
    """The random initialisation trained with the segmentation labels, then probed frozen."""
    import dataclasses

    from detcon.evaluate.backbones import backbone_state, load_run_config
    from detcon.evaluate.context import EvalContext
    from detcon.evaluate.data import DataStore
    from detcon.evaluate.segmentation import supervised_state

    run, _, _ = full_run
    messages = []
    sup = evaluate_run(
        run,
        settings=QUICK,
        tasks=("segmentation",),
        backbone="supervised",
        progress=messages.append,
    )
    check_ranges(sup)
    stored = json.loads((run / "eval_supervised.json").read_text())
    assert stored.pop("probe")["seed"] == 0 and stored == sup
    assert any("supervised: done" in m for m in messages)
    # the trained weights start from the random floor's and move
    model_cfg = load_run_config(run).model
    random = backbone_state(run, model_cfg, backbone="random", seed=0)
    ctx = EvalContext(model_cfg, random, DataStore(), None)
    trained = supervised_state(ctx, QUICK.supervised)
    assert trained.keys() == random.keys()
    assert any(not torch.equal(trained[k], random[k]) for k in random if "conv" in k)
    with pytest.raises(ValueError, match="no supervised recipe"):
        evaluate_run(
            run,
            settings=dataclasses.replace(QUICK, supervised=None),
            tasks=("linear",),
            backbone="supervised",
        )


def test_split_scores_other_scenes(full_run):
    """The cpu profile reports on 'test' scenes; recipes are chosen with split='val'."""
    from detcon.evaluate.settings import with_eval_split

    run, results, _ = full_run
    assert cpu_settings().segmentation[0].data.val_split == "test"
    assert with_eval_split(QUICK, "val").linear[0].data.val_split == "val"
    with pytest.raises(ValueError, match="'train' is the split synthetic's probes train on"):
        with_eval_split(QUICK, "train")  # it would score on the probes' own training scenes
    val = evaluate_run(run, settings=QUICK, tasks=("linear",), split="val", out_name="val.json")
    test = evaluate_run(run, settings=QUICK, tasks=("linear",), split="test", out_name="t.json")
    assert test == {"linear": results["linear"]}  # the profile's own split is 'test'
    assert val != test


def test_bad_inputs_fail_before_any_work(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        evaluate_run(tmp_path, settings=QUICK)
    run = make_run_dir(tmp_path / "run")
    (run / "backbone.pt").unlink()
    with pytest.raises(FileNotFoundError, match="backbone.pt"):
        evaluate_run(run, settings=QUICK)
    with pytest.raises(ValueError, match=r"\(did you mean 'segmentation'\?\)"):
        evaluate_run(run, settings=QUICK, tasks=("segmentaton",), backbone="random")
    with pytest.raises(ValueError, match="profile"):
        evaluate_run(run, profile="laptop", backbone="random")
    assert not (run / "eval.json").exists() and not (run / "eval_random.json").exists()


def test_cli_evaluate_and_its_error_message(tmp_path, capsys):
    from detcon.cli import main

    run = make_run_dir(tmp_path / "run")
    assert main(["evaluate", str(run), "--quick", "--tasks", "linear", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "linear: top1=" in out and (run / "eval.json").is_file()
    assert main(["evaluate", str(tmp_path / "missing"), "--quick"]) == 2
    assert "does not exist" in capsys.readouterr().err
    # results probed on another split are kept unless --replace; a bad split is refused early
    stored = (run / "eval.json").read_text()
    argv = ["evaluate", str(run), "--quick", "--tasks", "linear", "--quiet", "--split", "val"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "holds results probed otherwise (each dataset's own split" in err
    assert "now val" in err and "eval_val.json" in err
    assert (run / "eval.json").read_text() == stored
    assert main([*argv, "--out-name", "eval_val.json"]) == 0
    assert main([*argv, "--replace"]) == 0
    assert json.loads((run / "eval.json").read_text())["probe"]["split"] == "val"
    capsys.readouterr()
    assert main([*argv[:-1], "tset", "--replace", "--tasks", "depth"]) == 2
    assert "split='tset': expected one of 'train', 'val', 'test'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse's exit 2, before any probe (numpy's, after)
        main(["evaluate", str(run), "--quick", "--seed", "-1"])
    assert "argument --seed: '-1': expected a whole number >= 0" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--quick", "--tasks", ""]) == 2  # it ran all four
    assert "--tasks '': expected a comma-separated subset" in capsys.readouterr().err


def test_cli_evaluate_probes_a_run_at_its_own_profile(tmp_path, monkeypatch):
    """A paper run was probed on the cpu profile's synthetic tasks unless --profile said paper."""
    from detcon.cli import main
    from detcon.evaluate import cli as eval_cli
    from detcon.evaluate import run as run_module

    run = make_run_dir(tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    asked = []
    monkeypatch.setattr(
        run_module, "evaluate_run", lambda *a, **kw: asked.append(kw["profile"]) or {}
    )
    for profile, argv in (("cpu", []), ("paper", []), ("cpu", ["--profile", "cpu"])):
        (run / "config.json").write_text(json.dumps({**config, "profile": profile}))
        assert main(["evaluate", str(run), "--quiet", *argv]) == 0
    assert asked == ["cpu", "paper", "cpu"]
    assert eval_cli._run_profile(tmp_path / "missing") == "cpu"


def test_profile_settings_are_complete_data():
    from detcon.evaluate import get_settings

    for profile in ("cpu", "paper"):
        for quick in (False, True):
            s = get_settings(profile, quick)
            names = [
                e.name
                for kind in ("segmentation", "depth", "linear", "detection")
                for e in s.for_task(kind)
            ]
            assert len(names) == len(set(names))  # each is one key of eval.json
            hash(s)  # frozen all the way down
    paper = get_settings("paper")
    assert [e.name for e in paper.segmentation] == ["segmentation_voc", "segmentation_cityscapes"]
    assert paper.detection[0].train_backbone and paper.detection[0].sync_bn


def test_runs_are_scored_on_scenes_made_like_their_own(tmp_path, monkeypatch):
    """evaluate_run generates the synthetic evaluation scenes with the run's scene difficulty."""
    import detcon.evaluate.run as run_module
    from detcon.data.synthetic import SceneSpec
    from detcon.evaluate.settings import with_scene_difficulty

    # the cpu profile's scenes, with 3 classes
    spec = SceneSpec(
        num_object_classes=3,
        min_objects=2,
        max_objects=4,
        radius_range=(0.11, 0.25),
        texture_contrast=(0.5, 0.9),
    )
    moved = with_scene_difficulty(QUICK, spec)
    assert all(s.data.difficulty == spec for s in (*moved.segmentation, *moved.linear))
    assert moved.supervised.data.difficulty == spec
    used = []

    def spy(settings, difficulty):
        used.append(difficulty)
        return with_scene_difficulty(settings, difficulty)

    monkeypatch.setattr(run_module, "with_scene_difficulty", spy)
    cfg = load_pretrain_config({"model": {"small_width": 8}, "data": {"scene_classes": 3}}, "cpu")
    run = tmp_path / "run"
    run.mkdir()
    write_json(run / "config.json", to_dict(cfg))
    evaluate_run(run, settings=QUICK, tasks=("segmentation",), backbone="random")
    assert used == [spec]


def test_references_are_computed_once_per_architecture_scenes_and_seed(tmp_path):
    """Grid points that share an architecture, scenes, settings and seed reuse the floor."""
    a, b = make_run_dir(tmp_path / "a", seed=1), make_run_dir(tmp_path / "b", seed=2)
    cache = tmp_path / "refs"
    logs: list[str] = []
    first = evaluate_run(
        a, settings=QUICK, tasks=("linear",), backbone="random", reference_cache=cache
    )
    again = evaluate_run(
        b,
        settings=QUICK,
        tasks=("linear",),
        backbone="random",
        reference_cache=cache,
        progress=logs.append,
    )
    assert again == first and any("reused" in m for m in logs)
    stored = json.loads((b / "eval_random.json").read_text())
    assert stored.pop("probe")["seed"] == 0 and stored == first
    evaluate_run(
        b, settings=QUICK, tasks=("linear",), backbone="random", seed=5, reference_cache=cache
    )
    assert len(list(cache.glob("*.json"))) == 2  # another seed is another reference


def test_entries_probed_on_another_split_or_seed_are_replaced_not_mixed(tmp_path, capsys):
    """A file holding segmentation probed on ``val`` does not keep it beside linear probed on
    ``test`` (or at another probe seed): nothing in the file could tell them apart."""
    run = make_run_dir(tmp_path / "run")
    evaluate_run(run, settings=QUICK, tasks=("linear",), split="val")
    stored = json.loads((run / "eval.json").read_text())
    assert stored["probe"]["split"] == "val"
    evaluate_run(run, settings=QUICK, tasks=("depth",), split="val")
    assert {"linear", "depth"} <= set(json.loads((run / "eval.json").read_text()))
    capsys.readouterr()
    evaluate_run(run, settings=QUICK, tasks=("depth",))  # each dataset's own split: test
    stored = json.loads((run / "eval.json").read_text())
    assert set(stored) == {"depth", "encoder", "probe"} and stored["probe"]["split"] is None
    assert "probed otherwise" in capsys.readouterr().err
    # the profile's own split named (`--split test` at the cpu profile) is the same probe: the
    # file's entries stand (it was refused as "probed otherwise")
    evaluate_run(run, settings=QUICK, tasks=("linear",), split="test")
    stored = json.loads((run / "eval.json").read_text())
    assert (
        set(stored) == {"depth", "linear", "encoder", "probe"} and stored["probe"]["split"] is None
    )
    evaluate_run(run, settings=QUICK, tasks=("linear",), seed=3)
    stored = json.loads((run / "eval.json").read_text())
    assert set(stored) == {"linear", "encoder", "probe"} and stored["probe"]["seed"] == 3


def test_a_file_from_before_probe_records_keeps_its_entries(tmp_path):
    run = make_run_dir(tmp_path / "run")
    write_json(run / "eval_random.json", {"depth": {"delta1": 0.5, "rmse": 1.0}})
    evaluate_run(run, settings=QUICK, tasks=("linear",), backbone="random")
    assert set(json.loads((run / "eval_random.json").read_text())) == {"depth", "linear", "probe"}


def test_a_reference_asked_for_twice_at_once_is_computed_once(tmp_path, monkeypatch):
    """Two points of one seed evaluated side by side (two lanes, a job array): the second waits
    for the first's reference instead of training the same ceiling again."""
    import threading
    import time

    from detcon.evaluate import run as run_module

    a, b = make_run_dir(tmp_path / "a", seed=1), make_run_dir(tmp_path / "b", seed=2)
    cache = tmp_path / "refs"
    calls = []
    real = run_module._RUNNERS["linear"]

    def slow(ctx, settings):
        calls.append(settings.name)
        time.sleep(1.0)  # the other evaluation starts while this one computes
        return real(ctx, settings)

    monkeypatch.setitem(run_module._RUNNERS, "linear", slow)
    messages: list[str] = []
    kwargs = dict(
        settings=QUICK,
        tasks=("linear",),
        backbone="random",
        reference_cache=cache,
        progress=messages.append,
    )
    threads = [threading.Thread(target=evaluate_run, args=(d,), kwargs=kwargs) for d in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    # the one that waited said whom for (minutes of silence at the ceiling before)
    waited = [m for m in messages if m.startswith("random reference: waiting for random-")]
    assert len(waited) == 1 and f"being computed by pid {os.getpid()} on host" in waited[0]
    assert json.loads((a / "eval_random.json").read_text()) == json.loads(
        (b / "eval_random.json").read_text()
    )


def test_references_side_by_side_take_the_free_one_first(tmp_path, monkeypatch):
    """Two points evaluating the same floor and ceiling at once: the second trains the ceiling
    while the first still computes the floor, instead of waiting for it, and each reference is
    computed once."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from detcon.evaluate import ReferenceBusyError, evaluate_references
    from detcon.evaluate import run as run_module

    a, b = make_run_dir(tmp_path / "a", seed=1), make_run_dir(tmp_path / "b", seed=2)
    cache = tmp_path / "refs"
    computed = []  # "run:backbone" of each reference computed, not read from the cache
    entered, release = threading.Event(), threading.Event()
    real_run, real_linear = run_module.evaluate_run, run_module._RUNNERS["linear"]

    def spy(run_dir, *, backbone="pretrained", **kwargs):
        messages = []
        results = real_run(run_dir, backbone=backbone, progress=messages.append, **kwargs)
        if not any("reused" in m for m in messages):
            computed.append(f"{Path(run_dir).name}:{backbone}")
        return results

    def held(ctx, settings):  # point a's floor stays in progress (its lock held) until released
        if threading.current_thread().name.startswith("a") and not computed:
            entered.set()
            release.wait(timeout=60)
        return real_linear(ctx, settings)

    monkeypatch.setattr(run_module, "evaluate_run", spy)
    monkeypatch.setitem(run_module._RUNNERS, "linear", held)
    kwargs = dict(settings=QUICK, tasks=("linear",), reference_cache=cache)
    both = ["random", "supervised"]
    with ThreadPoolExecutor(1, "a") as pool_a, ThreadPoolExecutor(1, "b") as pool_b:
        try:
            first = pool_a.submit(evaluate_references, a, both, **kwargs)
            assert entered.wait(timeout=60)
            with pytest.raises(ReferenceBusyError, match="random reference"):
                run_module.evaluate_run(b, backbone="random", wait=False, **kwargs)
            second = pool_b.submit(evaluate_references, b, both, **kwargs)
            for _ in range(600):  # up to 60 s
                if computed or second.done():
                    break
                time.sleep(0.1)
            if second.done():
                second.result()  # an error in point b: raised here, not hidden
            # point b has computed the ceiling while a still holds the floor: it did not wait
            assert computed == ["b:supervised"]
        finally:
            release.set()
        for point in (first, second):
            point.result(timeout=120)  # re-raises its error
    assert sorted(computed) == ["a:random", "b:supervised"]  # each computed once
    for name in ("eval_random.json", "eval_supervised.json"):
        assert json.loads((a / name).read_text()) == json.loads((b / name).read_text())
    assert evaluate_references(a, [], reference_cache=cache) == {}
    with pytest.raises(ValueError, match="'pretrained'"):
        evaluate_references(a, ["pretrained"], reference_cache=cache)
    with pytest.raises(ValueError, match="out_name"):
        evaluate_references(a, "random", reference_cache=cache, out_name="x.json")


def test_a_probe_that_diverges_is_recorded_and_the_other_tasks_go_on(tmp_path, monkeypatch, capsys):
    """A head whose loss turns non-finite on an encoder's features (seen on briefly pretrained
    SimCLR encoders in detection) is a result about that encoder, not a failure of the point:
    eval.json says so in place of the task's metrics, the other tasks are measured, and the
    readers of eval.json skip it."""
    from detcon.evaluate import run as run_module
    from detcon.evaluate.training import optimizer_step
    from detcon.results import _eval_rows

    def diverging(ctx, settings):
        weight = torch.nn.Parameter(torch.ones(1))
        loss = weight * float("nan")
        optimizer = torch.optim.SGD([weight], lr=0.1)
        optimizer_step(optimizer, loss, name=settings.name, step=3, steps=10, log=ctx.log)

    monkeypatch.setitem(run_module._RUNNERS, "detection", diverging)
    run = make_run_dir(tmp_path / "run")
    results = evaluate_run(run, settings=QUICK, tasks=("linear", "detection"))
    message = "detection: non-finite loss nan at step 3"
    assert results["detection"] == {"diverged": message}
    assert set(results["linear"]) == EXPECTED["linear"]
    stored = json.loads((run / "eval.json").read_text())
    assert stored["detection"] == {"diverged": message} and stored["linear"] == results["linear"]
    err = capsys.readouterr().err
    assert f"warning: {message}: the detection probe diverged" in err
    from detcon.cli import main

    assert main(["evaluate", str(run), "--quick", "--tasks", "linear,detection", "--quiet"]) == 0
    assert f"detection: diverged: {message}" in capsys.readouterr().out
    rows = _eval_rows(stored, "pretrained", "eval.json")
    assert {(r["task"], r["metric"]) for r in rows} == {
        ("linear", "top1"),
        ("linear", "presence_map"),
    }
    # the linear probe's L-BFGS does not stop on NaN: features that are not finite (an
    # encoder whose activations overflow) are a diverged probe, not top1 0.0
    from detcon.evaluate.features import FeatureBank

    real = FeatureBank.pooled
    monkeypatch.setattr(FeatureBank, "pooled", lambda self, *a: real(self, *a) * float("inf"))
    results = evaluate_run(run, settings=QUICK, tasks=("linear",), out_name="eval_nan.json")
    assert results["linear"] == {
        "diverged": "linear: the encoder's features hold NaN or infinite values"
    }


def test_an_unknown_split_is_refused_before_any_probe_trains(tmp_path, monkeypatch):
    from detcon.evaluate import run as run_module

    run = make_run_dir(tmp_path / "run")
    monkeypatch.setitem(run_module._RUNNERS, "depth", lambda ctx, s: pytest.fail("a probe ran"))
    with pytest.raises(ValueError, match="split='tset': expected one of 'train', 'val', 'test'"):
        evaluate_run(run, settings=QUICK, tasks=("depth",), split="tset")


@pytest.mark.parametrize(
    "backbone, out_name, match",
    [
        ("random", "eval.json", "holds the pretrained backbone's results"),
        ("pretrained", "eval_random.json", "holds the random backbone's results"),
        ("supervised", "eval_random.json", "holds the random backbone's results"),
        ("pretrained", "../x.json", "expected a file name in the run directory"),
        ("pretrained", "sub/x.json", "expected a file name in the run directory"),
        ("pretrained", ".", "expected a file name in the run directory"),
    ],
)
def test_an_out_name_of_another_backbone_or_outside_the_run_is_refused(
    tmp_path, backbone, out_name, match
):
    # --backbone random --out-name eval.json replaced the trained encoder's results with the
    # floor's, under the old encoder record: reports and export took them for the encoder's.
    run = make_run_dir(tmp_path / "run")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(ValueError, match=match):
        evaluate_run(run, settings=QUICK, tasks=("linear",), backbone=backbone, out_name=out_name)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_a_run_directory_that_is_a_file_is_named_as_such(tmp_path):
    (tmp_path / "run").write_text("")
    with pytest.raises(NotADirectoryError, match="is a file, expected a folder"):
        evaluate_run(tmp_path / "run", settings=QUICK, tasks=("linear",))


def test_an_evaluation_cut_off_goes_on_from_its_last_finished_task(full_run, tmp_path, monkeypatch):
    """A job's time limit during a long evaluation must not throw away the tasks it finished."""
    import detcon.evaluate.run as run_module

    run, results, _ = full_run
    copy = make_run_dir(tmp_path / "copy")  # the same seed: the same weights as full_run's
    runners = dict(run_module._RUNNERS)
    calls = []

    def cut_off(ctx, s):
        raise KeyboardInterrupt  # a kill after the first task

    def counted(kind):
        def runner(ctx, s):
            calls.append(s.name)
            return runners[kind](ctx, s)

        return runner

    monkeypatch.setitem(run_module._RUNNERS, "depth", counted("depth"))
    monkeypatch.setitem(run_module._RUNNERS, "linear", cut_off)
    with pytest.raises(KeyboardInterrupt):
        evaluate_run(copy, settings=QUICK, tasks=("depth", "linear"))
    assert not (copy / "eval.json").exists()  # the result file says nothing until complete
    assert (copy / ".eval.json.partial").is_file()
    # what kills while writing the results or the partial ones leave; another file's is kept
    stale = [copy / ".eval.json.2a70ee38.tmp", copy / "..eval.json.partial.0f3a9c1e.tmp"]
    others = copy / ".eval_random.json.5b6c7d8e.tmp"
    for path in (*stale, others):
        path.write_text("{")
    monkeypatch.setitem(run_module._RUNNERS, "linear", counted("linear"))
    messages = []
    again = evaluate_run(copy, settings=QUICK, tasks=("depth", "linear"), progress=messages.append)
    assert calls == ["depth", "linear"]  # depth was not run a second time
    assert any("depth: taken from the evaluation cut off" in m for m in messages)
    assert again == {k: results[k] for k in ("depth", "linear")}  # as one uninterrupted run
    assert not (copy / ".eval.json.partial").exists()
    assert not any(p.exists() for p in stale) and others.exists()
    # kept only for the same encoder and probe: other weights (or a seed) evaluate every task
    monkeypatch.setitem(run_module._RUNNERS, "linear", cut_off)
    with pytest.raises(KeyboardInterrupt):
        evaluate_run(copy, settings=QUICK, tasks=("depth", "linear"))
    calls.clear()
    make_run_dir(copy, seed=2)
    monkeypatch.setitem(run_module._RUNNERS, "linear", counted("linear"))
    evaluate_run(copy, settings=QUICK, tasks=("depth", "linear"))
    assert calls == ["depth", "linear"]


def test_evaluating_a_finished_point_again_refreshes_its_summary(tmp_path):
    """Reports, exports and the claims read a point's summary.json: a re-evaluation by hand
    (`detcon evaluate --replace`, a task added) never reached them."""
    run = make_run_dir(tmp_path / "abl" / "r")
    point = {"ablation": "abl", "run_id": "r", "profile": "cpu", "params": {"method": "detcon_b"}}
    write_json(run / "point.json", point)
    write_json(
        run / "summary.json",
        {
            **{k: point[k] for k in point if k != "params"},
            "method": "detcon_b",
            "eval.linear.top1": 0.999,
        },
    )
    results = evaluate_run(run, settings=QUICK, tasks=("linear",))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["eval.linear.top1"] == results["linear"]["top1"] != 0.999
    assert summary["method"] == "detcon_b" and summary["run_id"] == "r"
    floor = evaluate_run(run, settings=QUICK, tasks=("linear",), backbone="random")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["eval_random.linear.top1"] == floor["linear"]["top1"]
    # a run directory of no launcher point gets none
    other = make_run_dir(tmp_path / "plain")
    evaluate_run(other, settings=QUICK, tasks=("linear",))
    assert not (other / "summary.json").exists()
