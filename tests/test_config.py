import json

import pytest

from detcon.config import (
    ConfigError,
    DataConfig,
    OptimConfig,
    PretrainConfig,
    available_profiles,
    describe_fields,
    from_dict,
    load_pretrain_config,
    parse_dotted,
    parse_yaml,
    scaled_lr,
    to_dict,
    total_steps,
    warmup_steps,
)


def test_defaults_are_the_paper_values():
    cfg = PretrainConfig()
    assert cfg.method == "detcon_b"
    assert cfg.masks.num_samples == 16
    assert cfg.loss.temperature == 0.1
    assert cfg.optim.batch_size == 4096 and cfg.optim.base_lr == 0.2
    assert cfg.optim.weight_decay == 1.5e-6 and cfg.optim.base_ema == 0.996
    assert cfg.augment.blur_prob == (1.0, 0.1) and cfg.augment.solarize_prob == (0.0, 0.2)
    assert (cfg.model.head_hidden, cfg.model.head_out) == (4096, 256)


def test_unknown_key_lists_valid_keys_and_suggests():
    with pytest.raises(ConfigError) as err:
        from_dict(PretrainConfig, {"optim": {"epoch": 3}})
    msg = str(err.value)
    assert "'optim.epoch'" in msg and "Did you mean 'optim.epochs'" in msg and "batch_size" in msg


def test_wrong_type_and_range_name_the_field():
    with pytest.raises(ConfigError, match=r"optim\.batch_size='big': expected an integer"):
        from_dict(PretrainConfig, {"optim": {"batch_size": "big"}})
    with pytest.raises(ConfigError, match=r"loss\.temperature=0\.0 is out of range"):
        from_dict(PretrainConfig, {"loss": {"temperature": 0}})
    with pytest.raises(ConfigError, match=r"augment\.single_view=1: expected true or false"):
        from_dict(PretrainConfig, {"augment": {"single_view": 1}})
    with pytest.raises(ConfigError, match=r"did you mean 'detcon_b'"):
        from_dict(PretrainConfig, {"method": "detcon-b"})
    with pytest.raises(ConfigError, match=r"augment\.crop_scale"):
        from_dict(PretrainConfig, {"augment": {"crop_scale": [0.9, 0.1]}})
    with pytest.raises(ConfigError, match="mapping"):
        from_dict(PretrainConfig, {"optim": 3})


def test_zero_epochs_is_refused_not_trained_for_one_step():
    # The schedule has at least one step, so epochs=0 used to train one step silently.
    with pytest.raises(ConfigError, match=r"optim\.epochs=0\.0: expected a number > 0"):
        from_dict(PretrainConfig, {"optim": {"epochs": 0}})
    with pytest.raises(ConfigError, match=r"optim\.epochs=0\.0: expected a number > 0"):
        OptimConfig(epochs=0.0)
    assert from_dict(PretrainConfig, {"optim": {"epochs": 0.5}}).optim.epochs == 0.5


def test_cross_field_rules():
    with pytest.raises(ConfigError, match="masks.source='image'"):
        from_dict(PretrainConfig, {"method": "byol"})
    with pytest.raises(ConfigError, match="must divide"):
        from_dict(PretrainConfig, {"loss": {"negative_groups": 3}})
    with pytest.raises(ConfigError, match="needs instance annotations"):
        from_dict(
            PretrainConfig,
            {"masks": {"source": "ground_truth"}, "data": {"dataset": "imagefolder"}},
        )
    with pytest.raises(ConfigError, match=r"data.scene_classes_per_scene=5: expected at most "):
        from_dict(PretrainConfig, {"data": {"scene_classes": 4, "scene_classes_per_scene": 5}})
    ok = from_dict(
        PretrainConfig, {"method": "simclr", "masks": {"source": "image", "num_samples": 1}}
    )
    assert ok.method == "simclr"


def test_config_is_frozen_and_round_trips():
    cfg = load_pretrain_config({"optim": {"epochs": 2}}, profile="cpu")
    with pytest.raises(AttributeError):
        cfg.seed = 3  # type: ignore[misc]
    assert from_dict(PretrainConfig, to_dict(cfg)) == cfg


def test_profiles_and_dotted_overrides():
    assert {"cpu", "paper"} <= set(available_profiles())
    cpu = load_pretrain_config(parse_dotted(["method=detcon_s", "optim.epochs=2"]), profile="cpu")
    assert cpu.profile == "cpu" and cpu.model.backbone == "small" and cpu.method == "detcon_s"
    assert cpu.optim.epochs == 2.0
    with pytest.raises(ConfigError, match="unknown profile"):
        load_pretrain_config({}, profile="gpu")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_dotted(["method"])
    # two overrides of one key, as a value and as a section: a TypeError traceback before
    with pytest.raises(ConfigError, match="optim.epochs is set to a value by an earlier"):
        parse_dotted(["optim.epochs=2", "optim.epochs.x=1"])
    with pytest.raises(ConfigError, match="optim.epochs is a section set key by key"):
        parse_dotted(["optim.epochs.x=1", "optim.epochs=2"])


def test_a_yaml_syntax_error_is_one_line_naming_where():
    from detcon.config import parse_yaml

    with pytest.raises(ConfigError) as err:
        parse_yaml("optim: {epochs: 1", "abl.yaml")
    assert str(err.value).startswith("abl.yaml: not valid YAML at line 1, column 18: ")
    assert "\n" not in str(err.value)


def test_derived_values_are_computed_not_stored():
    optim = OptimConfig(batch_size=4096, epochs=1000)
    assert scaled_lr(optim) == pytest.approx(3.2)
    n = 1_281_167  # ImageNet train
    # The release repeats the dataset before batching (detcon_b_config.py): floor(E * N / B),
    # not E * floor(N / B) = 312,000.
    assert total_steps(optim, n) == 312_784
    assert warmup_steps(optim, n) == 10 * n // 4096 == 3127  # epochs // 100 warmup epochs
    assert warmup_steps(OptimConfig(batch_size=4096, epochs=1000, warmup_epochs=0), n) == 0
    # The release's default is resolved when the config is made: a run that spells it out is
    # the same config (same digest, so `detcon run` reuses one for the other).
    assert optim.warmup_epochs == 10.0
    assert OptimConfig(batch_size=4096, epochs=1000, warmup_epochs=10) == optim
    assert (
        load_pretrain_config({"optim": {"epochs": 250}}, profile="paper").optim.warmup_epochs == 2
    )
    # A small batch at the paper's per-step lr takes a large base lr.
    small = load_pretrain_config({"optim": {"batch_size": 8, "base_lr": 102.4}}, profile="cpu")
    assert scaled_lr(small.optim) == pytest.approx(3.2)
    assert total_steps(OptimConfig(batch_size=32, epochs=4), 1000) == 125  # 4000 // 32
    assert total_steps(OptimConfig(batch_size=32, epochs=0.01), 1000) == 1  # at least one
    # the release's float count, num_epochs * images_per_epoch // batch_size (28999.999... // 100),
    # not the exact one (290): what a count in exact arithmetic would change
    assert total_steps(OptimConfig(batch_size=100, epochs=0.29), 100_000) == 289
    with pytest.raises(ConfigError, match="larger than the dataset"):
        total_steps(OptimConfig(batch_size=64), 10)


def test_every_field_is_documented():
    fields = describe_fields(PretrainConfig)
    assert len(fields) > 40
    assert all(help_text for _, help_text in fields), [n for n, h in fields if not h]


def test_yaml_keys_given_twice_are_an_error_naming_key_and_lines(tmp_path, monkeypatch):
    """PyYAML keeps the last of two equal keys: a second `grid:` silently dropped the first."""
    from detcon import config
    from detcon.config import load_yaml

    path = tmp_path / "c.yaml"
    path.write_text("method: byol\noptim:\n  epochs: 2\n  epochs: 3\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: line 4: the key 'epochs' is given twice"):
        load_yaml(path)
    path.write_text("optim: {epochs: 2, epochs: 3}\n")  # flow style, one line
    with pytest.raises(ConfigError, match=r"line 1: the key 'epochs' is given twice"):
        load_yaml(path)
    with pytest.raises(ConfigError, match=r"method=\{a: 1, a: 2\}.*'a' is given twice"):
        parse_dotted(["method={a: 1, a: 2}"])
    # A packaged profile with a duplicate key is refused the same way.
    monkeypatch.setattr(config, "available_profiles", lambda: ["cpu", "dup"])
    real_files = config.resources.files

    class Dup:
        def joinpath(self, name):
            return self

        def read_text(self):
            return "seed: 1\nseed: 2\n"

    monkeypatch.setattr(
        config.resources,
        "files",
        lambda pkg: Dup() if pkg == "detcon.profiles" else real_files(pkg),
    )
    with pytest.raises(ConfigError, match=r"profile 'dup'.*line 2: the key 'seed' is given twice"):
        config.profile_overrides("dup")


def test_yaml_merge_keys_still_work_and_tags_are_still_refused(tmp_path):
    from detcon.config import load_yaml

    path = tmp_path / "c.yaml"
    path.write_text("base: &b {epochs: 2, base_lr: 0.1}\noptim:\n  <<: *b\n  epochs: 3\n")
    assert load_yaml(path)["optim"] == {"epochs": 3, "base_lr": 0.1}
    path.write_text("method: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML.*python/object"):
        load_yaml(path)


def test_yaml_octal_and_base_60_ints_are_refused():
    # YAML 1.1 read `--set seed=010` as seed 8 and `--set optim.epochs=1:30` as 90 epochs
    with pytest.raises(ConfigError, match=r"'010' reads as 8 in YAML 1.1 \(octal\)"):
        parse_yaml("seed: 010", "--set")
    with pytest.raises(ConfigError, match=r"'1:30' reads as 90 in YAML 1.1 \(base 60\)"):
        parse_yaml("epochs: 1:30", "--set")
    assert parse_yaml("a: 10\nb: 0\nc: 0x10\nd: '010'\ne: -3", "x") == {
        "a": 10,
        "b": 0,
        "c": 16,
        "d": "010",
        "e": -3,
    }


def test_scene_difficulty_is_configuration():
    """The synthetic scenes' difficulty lives in the config (cpu recipe), checked like any field,
    and becomes the SceneSpec that pretraining and evaluation generate scenes with."""
    from detcon.data.synthetic import SceneSpec

    cfg = load_pretrain_config(
        {
            "data": {
                "scene_classes": 4,
                "scene_objects": [2, 6],
                "scene_radius": [0.1, 0.3],
                "scene_texture_contrast": [0.5, 0.9],
            }
        },
        profile="cpu",
    )
    spec = SceneSpec.from_config(cfg.data)
    assert (spec.num_object_classes, spec.min_objects, spec.max_objects) == (4, 2, 6)
    assert spec.radius_range == (0.1, 0.3)
    assert spec.texture_contrast == (0.5, 0.9)
    assert SceneSpec.from_config(DataConfig()) == SceneSpec()  # the defaults agree
    with pytest.raises(ConfigError, match=r"data.scene_objects=\(6, 2\)"):
        load_pretrain_config({"data": {"scene_objects": [6, 2]}}, profile="cpu")
    with pytest.raises(ConfigError, match=r"data.scene_texture_contrast=\(0.9, 0.5\)"):
        load_pretrain_config({"data": {"scene_texture_contrast": [0.9, 0.5]}}, profile="cpu")
    with pytest.raises(ConfigError, match="scene_classes"):
        load_pretrain_config({"data": {"scene_classes": 9}}, profile="cpu")


def test_a_store_per_source_is_filled_in_for_fh_and_mcg_only():
    from detcon.config import load_pretrain_config

    def store(source):
        masks = {"source": source, "store": "stores/{source}-coco"}
        return load_pretrain_config({"masks": masks}, profile="cpu").masks.store

    assert (store("fh"), store("mcg")) == ("stores/fh-coco", "stores/mcg-coco")
    assert store("grid") == store("ground_truth") == store("image") == ""
    plain = load_pretrain_config({"masks": {"source": "fh", "store": "s/x"}}, profile="cpu")
    assert plain.masks.store == "s/x"


def test_exponent_numbers_without_a_dot_are_numbers():
    # YAML 1.1 read `--set optim.weight_decay=1e-6` as the string '1e-6': "expected a number,
    # got str". Only our loader changes: yaml.safe_load keeps PyYAML's reading.
    import yaml

    assert parse_dotted(["optim.weight_decay=1e-6"]) == {"optim": {"weight_decay": 1e-6}}
    cfg = load_pretrain_config(parse_dotted(["optim.weight_decay=5e-5"]), profile="cpu")
    assert cfg.optim.weight_decay == 5e-5
    assert parse_yaml("[1.5e6, -2E+2, 1e, e5, 1.0e-6]", "x") == [1.5e6, -200.0, "1e", "e5", 1e-6]
    assert yaml.safe_load("1e-6") == "1e-6"


def test_a_bound_on_one_side_only_reads_as_one():
    # "expected 1 <= value <= None" for a cluster profile's nodes: 0
    from detcon.launch.plan import ClusterProfile

    with pytest.raises(ConfigError, match=r"nodes=0 is out of range: expected 1 <= value \("):
        from_dict(ClusterProfile, {"nodes": 0})


def test_a_config_path_that_is_a_folder_or_not_utf8_is_named_as_such(tmp_path):
    # both read "does not exist" or a bare "'utf-8' codec can't decode"
    from detcon.config import load_yaml

    with pytest.raises(ConfigError, match="is a folder, expected a YAML or JSON file"):
        load_yaml(tmp_path)
    (tmp_path / "c.yaml").write_bytes(b"\xff\xfemethod: byol\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: not a text file in UTF-8"):
        load_yaml(tmp_path / "c.yaml")


@pytest.mark.parametrize(
    "overrides, match",
    [
        # each passed `detcon run --dry-run` and was refused only when training started
        ({"augment": {"crop_scale": [0.0, 1.0]}}, r"augment.crop_scale=\(0.0, 1.0\): expected a"),
        ({"augment": {"crop_ratio": [0.0, 2.0]}}, r"augment.crop_ratio=\(0.0, 2.0\): expected a"),
        # any value in (-1, 0) silently meant the release's default warmup
        ({"optim": {"warmup_epochs": -0.5}}, r"warmup_epochs=-0.5: expected -1 .* or a number"),
        # LARS refused it as "LARS: momentum=1.0", not naming the key, after start-up
        (
            {"optim": {"optimizer": "lars", "momentum": 1.0}},
            r"optim.momentum=1: expected a number in \[0, 1\)",
        ),
    ],
)
def test_configs_that_only_training_would_refuse_are_refused_when_made(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_pretrain_config(overrides, profile="cpu")


def test_the_release_default_warmup_and_an_empty_data_root():
    cfg = load_pretrain_config({"optim": {"warmup_epochs": -1, "epochs": 350}}, profile="cpu")
    assert cfg.optim.warmup_epochs == 3.0  # int(350 // 100), not the profile's 2
    from detcon.data.pretrain import build_base_dataset

    folder = load_pretrain_config({"data": {"dataset": "imagefolder"}}, profile="cpu")
    with pytest.raises(ValueError, match=r"reads its images from data.root, which is empty"):
        build_base_dataset(folder)  # it read the current directory


def test_the_profile_is_chosen_not_overridden(tmp_path, capsys):
    # `--set profile=paper` at --profile cpu made a run whose evaluation defaulted to the paper
    # tasks with the cpu profile's values; a grid point could do the same.
    from detcon.cli import main
    from detcon.config import load_yaml

    out = tmp_path / "run"  # were the check to go, it would train here, not in the checkout
    code = main(["pretrain", "--profile", "cpu", "--set", "profile=paper", "--out", str(out)])
    assert code == 2 and "--set profile=paper: choose the profile with --profile" in (
        capsys.readouterr().err.replace("\n", " ")
    )
    # a run's own config.json keeps its profile (the resume command the errors advise)
    paper = tmp_path / "config.json"
    paper.write_text(json.dumps(to_dict(load_pretrain_config({}, profile="paper"))))
    assert load_pretrain_config(load_yaml(paper), profile="cpu") == load_pretrain_config(
        {}, profile="paper"
    )
    ablation = tmp_path / "pp.yaml"
    ablation.write_text("name: pp\ndescription: t\ngrid: {point: {profile: paper}}\n")
    assert main(["run", str(ablation), "--runs-dir", str(tmp_path / "r"), "--dry-run"]) == 2
    assert "a grid point sets 'profile'" in capsys.readouterr().err


def test_sigterm_and_an_early_ctrl_c_stop_a_command_with_one_line(monkeypatch, capsys):
    # SIGTERM ended a command at once, without its clean-up (a launch left its lane workers
    # running); Ctrl-C while the commands were imported printed a 38-line traceback
    import os
    import signal

    from detcon import cli

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(cli, "_cmd_config", lambda args: os.kill(os.getpid(), signal.SIGTERM))
    assert cli.main(["config"]) == 128 + signal.SIGTERM
    assert capsys.readouterr().err == "detcon config: terminated (SIGTERM)\n"
    assert signal.getsignal(signal.SIGTERM) == before  # put back

    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_load_extra_commands", interrupted)
    assert cli.main(["run", "x.yaml"]) == 130
    assert capsys.readouterr().err == "detcon run: interrupted\n"
