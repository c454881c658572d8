"""``vcrd prm train``: a value-head process reward model fitted to Monte-Carlo labels (``vcrd prm label``).

The model is a causal LM's body (any local HF directory: the student, the teacher, another base) and a linear
value head ``v_head.summary`` (``[1, H]`` weight, ``[1]`` bias): ``r(c, a) = σ(v·h(c, a) + b)`` where ``h`` is the
body's last hidden state at the scored token. The loss is the soft binary cross-entropy

.. math::

    \\mathcal{L} = -\\frac{1}{N}\\sum_i \\big[y_i \\log r_i + (1 - y_i) \\log (1 - r_i)\\big],
    \\qquad y_i = s_i / K \\in [0, 1],

over every labelled point of the training split (the soft labels TRL's PRMTrainer does not take). A rollout is
one training sequence: all its labelled points are read from one forward pass (a causal body's state at a token
sees only the prefix through it, so this equals one pass per prefix). Full fine-tuning or LoRA (``lora_r > 0``:
PEFT on the body, the head trained in full, merged before saving), on transformers' ``Trainer`` through vcrd's
:class:`~vcrd_core.training.base.EngineTrainer` (metrics.jsonl, the non-finite guard).

Optional temperature scaling: ``T`` fitted on the validation split (soft cross-entropy of ``σ(logit(r) / T)``) and
folded into the head (``v / T``, ``b / T``), so the saved PRM is the calibrated one with no extra parameter.

The checkpoint is Skywork-o1-Open-PRM's value-head layout (body keys ``model.*``, ``v_head.summary.*``, the base's
``config.json`` and tokenizer), which the ``prm_value_head`` judge loads by path; ``vcrd-prm.json`` beside it
records the labels, base, prompt template, temperature and the fit's numbers.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from vcrd_core.config.models import TORCH_DTYPES
from vcrd_core.errors import VcrdError
from vcrd_core.judging.calibration import brier_score, fit_temperature_to_logits
from vcrd_core.prm.labels import read_labels
from vcrd_core.runs.atomic import atomic_path, atomic_write_text
from vcrd_core.runs.preflight import load_tokenizer
from vcrd_core.training.base import METRICS_FILE, EngineTrainer

PRM_INFO_FILE = "vcrd-prm.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt")


class ValueHeadPrm(torch.nn.Module):
    """A causal LM's body and a ``v_head.summary`` linear head; ``forward`` returns the logits ``v·h + b`` at the
    given ``(row, position)`` points (``[N]``) and, given ``labels``, the soft BCE."""

    def __init__(self, body: torch.nn.Module, hidden_size: int) -> None:
        super().__init__()
        self.model = body
        self.v_head = torch.nn.Module()
        self.v_head.summary = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.v_head.summary.weight)
        torch.nn.init.zeros_(self.v_head.summary.bias)

    def point_logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        picked = hidden[rows, positions].float()
        return (picked @ self.v_head.summary.weight.float().T + self.v_head.summary.bias.float()).squeeze(-1)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        label_mask: torch.Tensor,
        labels: torch.Tensor,
        **_: Any,
    ) -> dict[str, torch.Tensor]:
        rows, positions = label_mask.nonzero(as_tuple=True)
        logits = self.point_logits(input_ids, attention_mask, rows, positions)
        target = labels[rows, positions].float()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
        return {"loss": loss, "logits": logits}


def render_prompt(template: str, tokenizer: Any, problem: str) -> list[int]:
    """The PRM's prompt ids, exactly as ``prm_value_head`` renders them (``{bos}`` = the tokenizer's BOS text)."""
    text = template.format(bos=tokenizer.bos_token or "", problem=problem)
    try:
        return tokenizer.encode(text, add_special_tokens=False)
    except Exception as exc:  # tokenizers raises a bare Exception for text its vocabulary cannot encode
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VcrdError(
            f"--prompt-template {template!r}: the tokenizer cannot encode the rendered prompt {text!r} ({reason})"
        ) from None


def sequences_of(table: Any, tokenizer: Any, template: str) -> list[dict[str, Any]]:
    """One training sequence per labelled rollout: the rendered prompt + the response through its last labelled
    token, with the labels at their positions."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for row in table.to_pylist():
        groups[(row["role"], row["prompt_index"], row["sample_index"])].append(row)
    out = []
    for key in sorted(groups):
        rows = groups[key]
        prompt = render_prompt(template, tokenizer, rows[0]["problem"])
        last = max(r["position"] for r in rows)
        ids = prompt + list(rows[0]["response_token_ids"][: last + 1])
        labels = [float("nan")] * len(ids)
        for r in rows:
            labels[len(prompt) + r["position"]] = float(r["label"])
        out.append({"input_ids": ids, "labels": labels})
    return out


class _Collator:
    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        length = max(len(i["input_ids"]) for i in items)
        n = len(items)
        ids = torch.full((n, length), self.pad_id, dtype=torch.long)
        mask = torch.zeros(n, length, dtype=torch.long)
        labels = torch.full((n, length), float("nan"))
        for b, item in enumerate(items):
            m = len(item["input_ids"])
            ids[b, :m] = torch.tensor(item["input_ids"])
            mask[b, :m] = 1
            labels[b, :m] = torch.tensor(item["labels"])
        label_mask = ~torch.isnan(labels)
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "label_mask": label_mask,
            "labels": torch.nan_to_num(labels, nan=0.0),
        }


class PrmTrainer(EngineTrainer):
    """The soft-BCE step of the value-head PRM, timed as one forward."""

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        t0 = time.perf_counter()
        outputs = model(**inputs)
        self._times.student_forward += time.perf_counter() - t0
        self._times.tokens += int(inputs["attention_mask"].sum())
        return (outputs["loss"], outputs) if return_outputs else outputs["loss"]


@torch.no_grad()
def predict(model: ValueHeadPrm, sequences: list[dict[str, Any]], pad_id: int, batch_size: int) -> tuple[list, list]:
    """``(logits, labels)`` at every labelled point of ``sequences``, in order."""
    model.eval()
    collate = _Collator(pad_id)
    device = next(model.parameters()).device
    logits, labels = [], []
    for start in range(0, len(sequences), batch_size):
        batch = collate(sequences[start : start + batch_size])
        rows, positions = batch["label_mask"].nonzero(as_tuple=True)
        out = model.point_logits(
            batch["input_ids"].to(device), batch["attention_mask"].to(device), rows.to(device), positions.to(device)
        )
        logits += out.cpu().tolist()
        labels += batch["labels"][rows, positions].tolist()
    return logits, labels


def _load_tokenizer(base: Path, tokenizer_path: str | None) -> tuple[Any, Path]:
    source = Path(tokenizer_path) if tokenizer_path else base
    return load_tokenizer(str(source), "--tokenizer" if tokenizer_path else "--base"), source


def save_prm(model: ValueHeadPrm, config: Any, out: Path, tokenizer_dir: Path) -> None:
    """The Skywork value-head layout: ``model.*`` body keys + ``v_head.summary.*`` in ``model.safetensors``."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    for stale in [out / "model.safetensors.index.json", *out.glob("model-*-of-*.safetensors")]:
        stale.unlink(missing_ok=True)  # shards of an earlier model here: the loader would prefer them
    state = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.model.state_dict().items()}
    state["v_head.summary.weight"] = model.v_head.summary.weight.detach().float().cpu().contiguous()
    state["v_head.summary.bias"] = model.v_head.summary.bias.detach().float().cpu().contiguous()
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    config_dict = config.to_dict()
    config_dict["architectures"] = ["VcrdValueHeadPrm"]
    atomic_write_text(out / "config.json", json.dumps(config_dict, indent=2) + "\n")
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copyfile(tokenizer_dir / name, out / name)


def train_prm(
    labels: str | Path,
    base: str | Path,
    out: str | Path,
    *,
    tokenizer_path: str | None = None,
    prompt_template: str = "{bos}{problem}\n",
    epochs: float = 3.0,
    learning_rate: float = 1e-4,
    batch_size: int = 16,
    lora_r: int = 0,
    temperature_scaling: bool = True,
    seed: int = 0,
    dtype: str = "float32",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Fit the PRM (see the module docstring) and save it to ``out``; returns what ``vcrd-prm.json`` records."""
    from transformers import AutoConfig, AutoModelForCausalLM, TrainingArguments, set_seed

    out, base = Path(out), Path(base)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise VcrdError(f"--out '{out}' is not empty; choose another directory or pass --overwrite")
    if not (base / "config.json").is_file():
        raise VcrdError(f"--base '{base}' is not an HF model directory (no config.json)")
    if "{problem}" not in prompt_template:
        raise VcrdError(f"--prompt-template {prompt_template!r} must contain {{problem}} (the policy prompt text)")
    if dtype not in TORCH_DTYPES:
        raise VcrdError(f"--dtype {dtype!r}: valid: {', '.join(TORCH_DTYPES)}")
    tokenizer, tokenizer_dir = _load_tokenizer(base, tokenizer_path)
    train_rows = read_labels(labels, "train")
    try:
        validation_rows = read_labels(labels, "validation")
    except VcrdError:
        validation_rows = None
    train_seqs = sequences_of(train_rows, tokenizer, prompt_template)
    val_seqs = sequences_of(validation_rows, tokenizer, prompt_template) if validation_rows is not None else []
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise VcrdError(f"the tokenizer at '{tokenizer_dir}' has neither a pad nor an EOS token")

    set_seed(seed)
    config = AutoConfig.from_pretrained(str(base), local_files_only=True)
    lm = AutoModelForCausalLM.from_pretrained(str(base), dtype=TORCH_DTYPES[dtype], local_files_only=True)
    if lm.base_model_prefix != "model":
        raise VcrdError(
            f"--base '{base}': its body is '{lm.base_model_prefix}', but the Skywork value-head layout that "
            "prm_value_head loads keys it 'model.' (Llama, Qwen2, Mistral, Gemma, ... bodies); use such a base"
        )
    body = getattr(lm, lm.base_model_prefix)
    embeddings = int(lm.get_input_embeddings().weight.shape[0])
    largest = max((max(q["input_ids"]) for q in train_seqs + val_seqs), default=-1)
    if largest >= embeddings:
        raise VcrdError(
            f"--base '{base}' embeds {embeddings} token ids but the labelled responses hold id {largest}: the "
            "labels' token ids are the policy tokenizer's, so the base must use that tokenizer (--tokenizer)"
        )
    model = ValueHeadPrm(body, int(config.hidden_size))
    if lora_r > 0:
        from peft import LoraConfig, get_peft_model

        model.model = get_peft_model(body, LoraConfig(r=lora_r, lora_alpha=2 * lora_r, target_modules="all-linear"))
    work = out / "trainer"
    args = TrainingArguments(
        output_dir=str(work),
        per_device_train_batch_size=batch_size,
        num_train_epochs=epochs,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,  # a float in [0, 1) is a ratio in transformers 5
        logging_steps=10,
        save_strategy="no",
        report_to=[],
        seed=seed,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
    )
    out.mkdir(parents=True, exist_ok=True)
    trainer = PrmTrainer(
        model=model,
        args=args,
        train_dataset=train_seqs,
        data_collator=_Collator(int(pad_id)),
        metrics_file=work / METRICS_FILE,
    )
    start = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - start
    if lora_r > 0:
        model.model = model.model.merge_and_unload()

    info: dict[str, Any] = {
        "labels": str(labels),
        "base": str(base),
        "prompt_template": prompt_template,
        "lora_r": lora_r,
        "epochs": epochs,
        "learning_rate": learning_rate,
        "train_points": int(train_rows.num_rows),
        "train_sequences": len(train_seqs),
        "train_loss": float(result.training_loss),
        "train_seconds": round(seconds, 3),
        "sequences_per_second": len(train_seqs) * epochs / seconds if seconds > 0 else None,
        "temperature": 1.0,
    }
    if val_seqs:
        logits, targets = predict(model, val_seqs, int(pad_id), batch_size)
        info["validation_points"] = len(targets)
        info["validation_brier"] = brier_score(torch.sigmoid(torch.tensor(logits, dtype=torch.float64)), targets)
        if temperature_scaling:
            t = fit_temperature_to_logits(logits, targets)  # on the head's own logits, unclipped
            info["temperature"] = t
            with torch.no_grad():  # sigmoid(z / T): fold 1/T into the head
                model.v_head.summary.weight.div_(t)
                model.v_head.summary.bias.div_(t)
            folded, _ = predict(model, val_seqs, int(pad_id), batch_size)  # the head as saved
            scaled = torch.sigmoid(torch.tensor(folded, dtype=torch.float64))
            info["validation_brier_scaled"] = brier_score(scaled, targets)
    save_prm(model, config, out, tokenizer_dir)
    atomic_write_text(out / PRM_INFO_FILE, json.dumps(info, indent=2) + "\n")
    return info
