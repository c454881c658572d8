"""The trainer's two loss engines (``training.loss_engine``): the fused-linear one (hidden states + lm_heads, no
``[tokens, V]`` logits) trains exactly like the logits one, is chosen by ``auto`` where the models allow it, and is
refused or skipped (with the reason) where they do not. Tiny real Qwen2 models on CPU."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import Qwen2ForCausalLM

from tests.core.training.helpers import config_dict, models, prm_run, rows, run_config, save_model
from tests.tiny_models import tiny_qwen2_config
from vcrd_core.errors import VcrdError
from vcrd_core.losses.engines import decoder_head
from vcrd_core.training.run import build_trainer, prepare

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return models(tmp_path_factory.mktemp("models"))


def train(cfg: dict[str, Any], data: Any = None, student: Any = None) -> Any:
    config = run_config(cfg)
    prepared = prepare(config, resume=False, rows=data if data is not None else rows(8))
    trainer = build_trainer(config, prepared, student=student)
    trainer.train()
    return trainer


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def both_engines(tmp_path: Path, cfg: dict[str, Any], data: Any = None) -> tuple[Any, Any]:
    """The same run on each engine, with plain SGD: Adam's ``m / sqrt(v)`` would turn float32 rounding in near-zero
    gradients into lr-sized steps, so parameters compare only without it."""
    out = []
    for engine in ("logits", "fused_linear"):
        c = dict(cfg, output={"dir": str(tmp_path / engine)})
        args = {**cfg["training"]["args"], "optim": "sgd"}
        c["training"] = {**cfg["training"], "loss_engine": engine, "args": args, "learning_rate": 0.5}
        out.append(train(c, data))
    return out[0], out[1]


def assert_same_training(tmp_path: Path, logits: Any, fused: Any) -> None:
    assert logits.loss_engine == "logits" and fused.loss_engine == "fused_linear"
    a, b = losses(tmp_path / "logits"), losses(tmp_path / "fused_linear")
    assert len(a) == len(b) == 4
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=1e-5, atol=1e-7)
    pa = {n: p for n, p in logits.model.named_parameters() if p.requires_grad}
    pb = {n: p for n, p in fused.model.named_parameters() if p.requires_grad}
    assert pa.keys() == pb.keys() and pa
    for name in pa:
        torch.testing.assert_close(pb[name], pa[name], rtol=1e-4, atol=1e-6, msg=name)
    assert a[0] != a[-1]  # the runs really trained


VARIANTS = {
    "constant": {"weighting": {"name": "constant"}, "judge": None},
    "online oracle": {},  # proposals sampled from logits built from the hidden states
    "online teacher_likelihood": {"judge": {"name": "teacher_likelihood"}, "weighting": {"name": "log_clamp"}},
    "token_mean reduction": {"objective": {"reduction": "token_mean"}},
    # a RowJudge scored inside the pass under the reductions whose coefficients are the weights themselves
    "teacher_likelihood, token_mean": {
        "judge": {"name": "teacher_likelihood"},
        "weighting": {"name": "log_clamp"},
        "objective": {"reduction": "token_mean"},
    },
    "teacher_likelihood, sequence_sum": {
        "judge": {"name": "teacher_likelihood"},
        "weighting": {"name": "ratio"},
        "objective": {"reduction": "sequence_sum"},
    },
    "gradient checkpointing": {"training": {"gradient_checkpointing": True}},  # layers rerun in backward
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fused_linear_engine_trains_like_the_logits_engine(
    tmp_path: Path, tiny: tuple[Path, Path], variant: str
) -> None:
    cfg = config_dict(tmp_path, *tiny, **VARIANTS[variant])
    assert_same_training(tmp_path, *both_engines(tmp_path, cfg))


def test_offline_weights_train_alike_on_both_engines(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    g = torch.Generator().manual_seed(1)
    data = [dict(r, weights=(torch.rand(len(r["response_token_ids"]), generator=g) * 2).tolist()) for r in rows(8)]
    cfg = config_dict(tmp_path, *tiny, scoring={"mode": "offline"})
    assert_same_training(tmp_path, *both_engines(tmp_path, cfg, data))


def test_full_fine_tuning_with_tied_embeddings_gets_the_same_lm_head_gradient(tmp_path: Path) -> None:
    """No LoRA: the student's lm_head is its (tied) embedding matrix and is trained through the fused engine."""
    teacher = save_model(tmp_path / "t", 32, 0)
    student_dir = tmp_path / "s"
    save_model(student_dir, 16, 1)
    config = Qwen2ForCausalLM.from_pretrained(student_dir).config
    config.tie_word_embeddings = True
    torch.manual_seed(5)
    Qwen2ForCausalLM(config).save_pretrained(student_dir)
    cfg = config_dict(tmp_path, teacher, student_dir, training={"lora": {"enabled": False}})
    logits, fused = both_engines(tmp_path, cfg)
    head = fused.model.get_output_embeddings().weight
    assert head is fused.model.get_input_embeddings().weight and head.requires_grad
    assert_same_training(tmp_path, logits, fused)


def test_prm_online_trains_alike_on_both_engines(tmp_path: Path) -> None:
    prm, teacher, student, data = prm_run(tmp_path)
    judge = {"name": "prm_value_head", "params": {"path": str(prm)}}
    cfg = config_dict(tmp_path, teacher, student, judge=judge, weighting={"name": "log_clamp"})
    assert_same_training(tmp_path, *both_engines(tmp_path, cfg, data))


def test_auto_chooses_fused_linear_for_plain_causal_lms(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no fallback warning
        trainer = train(config_dict(tmp_path, *tiny, training={"max_steps": 1}))
    assert trainer.loss_engine == "fused_linear" and trainer.loss_engine_reason == ""


class DoubledLogits(Qwen2ForCausalLM):
    """A real model whose logits are not lm_head(hidden states): 2 x lm_head(h) (like a logit scale)."""

    def forward(self, input_ids: Any = None, attention_mask: Any = None, logits_to_keep: Any = 0, **kwargs: Any) -> Any:
        out = super().forward(input_ids, attention_mask, logits_to_keep=logits_to_keep, **kwargs)
        out.logits = out.logits * 2
        return out


def doubled_student() -> DoubledLogits:
    torch.manual_seed(1)
    return DoubledLogits(tiny_qwen2_config(17, hidden_size=16, max_positions=128)).float()


def test_auto_falls_back_to_logits_when_the_check_sees_other_logits(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    cfg = config_dict(tmp_path, *tiny, training={"max_steps": 1})
    with pytest.warns(
        UserWarning, match=r"using the logits engine: the student's logits differ from lm_head\(hidden\)"
    ):
        trainer = train(cfg, student=doubled_student())
    assert trainer.loss_engine == "logits"


def test_forced_fused_linear_on_an_unsupported_model_is_one_line_error(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    cfg = config_dict(tmp_path, *tiny, training={"max_steps": 1, "loss_engine": "fused_linear"})
    with pytest.raises(VcrdError, match="fused_linear is not possible here: the student's logits differ") as err:
        train(cfg, student=doubled_student())
    assert "\n" not in str(err.value) and "use auto or logits" in str(err.value)


def test_decoder_head_names_what_it_cannot_read() -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import Gemma2Config, Gemma2ForCausalLM

    gemma = Gemma2ForCausalLM(
        Gemma2Config(
            vocab_size=17,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
            final_logit_softcapping=30.0,
        )
    )
    assert decoder_head(gemma) == "Gemma2ForCausalLM transforms its logits (final_logit_softcapping=30.0)"
    qwen = Qwen2ForCausalLM(tiny_qwen2_config(17, hidden_size=16, max_positions=32))
    found = decoder_head(qwen)
    assert not isinstance(found, str) and found.head is qwen.lm_head and found.decoder is qwen.model
    lora_head = get_peft_model(qwen, LoraConfig(r=2, target_modules=["lm_head", "q_proj"]))
    reason = decoder_head(lora_head)
    assert isinstance(reason, str) and reason.startswith("Qwen2ForCausalLM's lm_head is not a plain torch.nn.Linear")
    plain = get_peft_model(
        Qwen2ForCausalLM(tiny_qwen2_config(17, hidden_size=16, max_positions=32)),
        LoraConfig(r=2, target_modules=["q_proj"]),
    )
    assert not isinstance(decoder_head(plain), str)


def test_compiled_fused_engine_trains_like_the_logits_engine(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    cfg = config_dict(tmp_path, *tiny, objective={"compile": True})
    logits, fused = both_engines(tmp_path, cfg)
    assert fused.objective.compile
    assert_same_training(tmp_path, logits, fused)


def test_float32_weights_under_bf16_mixed_precision_use_the_fused_engine_in_bf16(
    tmp_path: Path, tiny: tuple[Path, Path]
) -> None:
    """fp32 master weights, bf16 autocast: the fused lm_head matmuls run in bf16, as the models' own would."""
    cfg = config_dict(tmp_path, *tiny, judge={"name": "teacher_likelihood"}, weighting={"name": "log_clamp"},
                      training={"mixed_precision": "bf16"})  # fmt: skip
    logits, fused = both_engines(tmp_path, cfg)
    assert logits.loss_engine == "logits" and fused.loss_engine == "fused_linear", fused.loss_engine_reason
    a, b = losses(tmp_path / "logits"), losses(tmp_path / "fused_linear")
    # bf16 logits on both engines: equal up to the order of float32 sums (a float32 lm_head would differ by ~1e-3)
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=2e-4, atol=1e-6)


def test_auto_keeps_float16_models_on_the_logits_engine(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    cfg = config_dict(tmp_path, *tiny, training={"max_steps": 1})
    cfg["models"]["teacher"]["dtype"] = "float16"
    with pytest.warns(UserWarning, match="logits engine: float16 logits: the fused engine's logit gradients would"):
        trainer = train(cfg)
    assert trainer.loss_engine == "logits"
