"""Table 1 strategies expand to the paper's stages; bad stage options name the key."""

import pytest

from erl_plugin.models.stages import StageError, parse_stages

MEN_MDE = ("main_encoder", "decoder")


def _opt(train: dict, **path: str) -> dict:
    return {"train": {"feature_opt": {"type": "FeatureReconstructionLoss"}, **train}, "path": path}


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("MA_A", [("teacher", ("teacher",)), ("stage1", MEN_MDE), ("stage2", ("residual_encoder",))]),
        ("MA_B", [("teacher", ("teacher",)), ("stage1", MEN_MDE), ("stage2", ("residual_encoder", "decoder"))]),
        (
            "MA_C",
            [
                ("teacher", ("teacher",)),
                ("stage1", MEN_MDE),
                ("stage2", ("residual_encoder",)),
                ("stage3", ("decoder",)),
            ],
        ),
        (
            "MA_D",
            [
                ("teacher", ("teacher",)),
                ("stage1", MEN_MDE),
                ("stage2", ("residual_encoder",)),
                ("stage3", ("residual_encoder", "decoder")),
            ],
        ),
        ("DT", [("teacher", ("teacher",)), ("joint", (*MEN_MDE, "residual_encoder"))]),
    ],
)
def test_strategies_follow_table_1(strategy: str, expected: list) -> None:
    iters = list(range(1, len(expected) + 1))
    stages = parse_stages(_opt({"strategy": strategy, "stage_iters": iters, "total_iter": sum(iters)}))
    assert [(s.name, s.train) for s in stages] == expected
    assert [s.first for s in stages] == [1 + sum(iters[:i]) for i in range(len(iters))]
    assert stages[-1].last == sum(iters)
    # L_ERL (pixel + feature) wherever the residual encoder first trains, L_pre elsewhere
    first_ren = next(s for s in stages if "residual_encoder" in s.train)
    assert first_ren.losses == ("pixel", "feature")
    assert all(s.losses == ("pixel",) for s in stages if s is not first_ren)
    assert [s.entangled for s in stages] == [s.first >= first_ren.first for s in stages]


def test_aligned_teacher_follows_stage1_and_a_loaded_teacher_needs_no_stage() -> None:
    aligned = parse_stages(
        _opt({"strategy": "MA_D", "teacher_mode": "aligned", "stage_iters": [1, 1, 1, 1], "total_iter": 4})
    )
    assert [(s.name, s.train) for s in aligned][:2] == [("stage1", MEN_MDE), ("teacher", ("teacher_encoder",))]
    loaded = parse_stages(
        _opt({"strategy": "MA_D", "stage_iters": [5, 1, 1], "total_iter": 7}, pretrain_network_t="t.pth")
    )
    assert [s.name for s in loaded] == ["stage1", "stage2", "stage3"]


def test_stage_options_override_one_stage() -> None:
    train = {"strategy": "MA_A", "stage_iters": [1, 1, 1], "total_iter": 3}
    stages = parse_stages(_opt({**train, "stage_options": {"stage2": {"optim_g": {"lr": 1e-4}}}}))
    assert stages[2].optim_g == {"lr": 1e-4} and stages[1].optim_g == {}


@pytest.mark.parametrize(
    ("train", "message"),
    [
        (
            {"stages": [{"name": "a", "iters": 2, "train": ["residual"], "losses": ["pixel"]}], "total_iter": 2},
            "train.stages[0].train: 'residual' is not allowed; allowed: main_encoder, decoder, residual_encoder",
        ),
        (
            {"strategy": "MA_D", "stage_iters": [1, 1, 1, 1], "total_iter": 5},
            "train.stage_iters: the stages' iterations 1 + 1 + 1 + 1 = 4 do not add up to train.total_iter = 5",
        ),
        (
            {
                "stages": [{"name": "s2", "iters": 2, "train": ["residual_encoder"], "losses": ["pixel", "feature"]}],
                "total_iter": 2,
            },
            "train.stages[0].losses: the feature loss needs a teacher",
        ),
        ({"strategy": "MA_E", "stage_iters": [1], "total_iter": 1}, "'MA_E' is not a strategy; allowed: MA_A"),
        ({"strategy": "MA_D", "stage_iters": [1, 1], "total_iter": 2}, "must list the iterations of 4 stages"),
        (
            {"strategy": "DT", "teacher_mode": "aligned", "stage_iters": [1, 1], "total_iter": 2},
            "aligned needs a stage1 that trains the decoder; DT has none",
        ),
        (
            {"strategy": "MA_A", "teacher_mode": "own", "stage_iters": [1, 1, 1], "total_iter": 3},
            "'own' is not allowed",
        ),
        (
            {"strategy": "MA_A", "stage_iters": [1, 1, 1], "total_iter": 3, "stage_options": {"stage4": {}}},
            "train.stage_options: unknown stage(s) ['stage4']",
        ),
        ({"total_iter": 3}, "give either strategy"),
        (
            {"strategy": "MA_A", "stage_iters": [1, 1, 1], "total_iter": 3, "feature_opt": None},
            "train.feature_opt is missing: a stage uses the feature loss",
        ),
    ],
)
def test_bad_stage_options_name_the_key(train: dict, message: str) -> None:
    with pytest.raises(StageError) as error:
        parse_stages(_opt(train))
    assert message in str(error.value)
