import pytest

from detcon.config import (
    ConfigError,
    OptimConfig,
    PretrainConfig,
    available_profiles,
    describe_fields,
    from_dict,
    load_pretrain_config,
    parse_dotted,
    scaled_lr,
    steps_per_epoch,
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
    assert "'optim.epoch'" in msg and "Did you mean 'epochs'" in msg and "batch_size" in msg


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


def test_derived_values_are_computed_not_stored():
    optim = OptimConfig(batch_size=4096, epochs=1000)
    assert scaled_lr(optim) == pytest.approx(3.2)
    n = 1_281_167  # ImageNet train
    assert steps_per_epoch(optim, n) == 312
    assert total_steps(optim, n) == 312_000
    assert warmup_steps(optim, n) == 10 * 312  # epochs // 100 warmup epochs
    assert warmup_steps(OptimConfig(batch_size=4096, epochs=1000, warmup_epochs=0), n) == 0
    with pytest.raises(ConfigError, match="larger than the dataset"):
        steps_per_epoch(OptimConfig(batch_size=64), 10)


def test_every_field_is_documented():
    fields = describe_fields(PretrainConfig)
    assert len(fields) > 40
    assert all(help_text for _, help_text in fields), [n for n, h in fields if not h]
