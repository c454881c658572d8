"""The VCRD training step at the paper's scale on one GPU: Qwen2.5-7B-shaped teacher, Qwen2.5-1.5B-shaped student.

Four variants run in one process, one after the other, through the real engine (``prepare`` + ``build_trainer``
+ ``VCRDTrainer.train``; nothing of the step is reimplemented here), sharing one teacher:

1. ``constant``: constant weights, SKL on the teacher prefix + SRKL on the student prefix, no judge;
2. ``offline_vcrd``: ratio weights read from the batch (as scored rollouts carry them);
3. ``online_teacher_likelihood``: ratio weights from the ``teacher_likelihood`` judge every step;
4. ``online_prm_value_head``: ratio weights from a Qwen2.5-1.5B-shaped value-head PRM (``prm_value_head``,
   saved to a temporary directory in bf16 and loaded by the judge from there, the normal way); the
   student-prefix stream is scored once before training (the static cache, reported apart from the step
   time), the teacher-prefix stream every step.

Models are built from configs with the real Qwen2.5 shapes (``AutoModelForCausalLM.from_config``, random bf16
weights made directly on the device; nothing is downloaded): student hidden 1536, 28 layers, 12 heads (2 KV),
MLP 8960, vocabulary 151,936, tied embeddings; teacher hidden 3584, 28 layers, 28 heads (4 KV), MLP 18944,
vocabulary 152,064, untied. Their tokenizer (saved with the student) is a Qwen2 byte-level tokenizer of
Qwen2.5's real vocabulary size, 151,665 tokens, which decides which logit columns the loss compares. Rollouts
are random token ids: a prompt of printable-ASCII byte tokens (so the PRM re-tokenises it to the same length)
and a response of random vocabulary ids ending in EOS.

Settings (Table 9): LoRA r 16, alpha 128, dropout 0.05 on all attention and MLP projections (the config
defaults; ``--full-finetune`` trains every weight instead), bf16 mixed precision with bf16 weights, sequence
length 1,024 (prompt 256 + response 768), ``--batch`` sequences per stream per micro-batch (default 4: 8
sequences, 8,192 tokens a step). ``--warmup`` steps (default 2) then ``--steps`` timed steps (default 5); the
per-step times are read from the run's ``metrics.jsonl``: ``step_seconds``, ``time/teacher_forward``,
``time/student_forward``, ``time/judge``, ``time/loss``, ``time/backward`` (backward + optimizer step),
``tokens_per_second``. Reported: medians of the timed steps.

**Model FLOPs per step** (MFU = model FLOPs per step / (median step time x peak dense bf16 FLOP/s)), with
``T`` the policy tokens of the step (both streams), ``L`` the sequence length, ``P`` a model's non-embedding
parameters, ``n`` layers and ``d`` the attention width (heads x head dim); the LM head (``V x H``, tied or
not) is counted apart, below:

* teacher forward: ``2 P_t T`` + attention;
* student forward: ``2 P_s T`` + attention;
* student backward: ``2 P_s T`` with LoRA (activation gradients only; the adapters' own are negligible) or
  ``4 P_s T`` with full fine-tuning, + 2 x the forward attention;
* attention, per sequence and forward: ``4 n d L^2``, halved for causal masks: ``2 n d L^2``;
* PRM judge (online variant): ``2 P_j T_j + 4 n_j d_j A_j``, counted from the passes it really runs (a hook on
  its body): ``T_j`` the tokens of its tree passes (the sequences plus one branch token per scored position),
  ``A_j`` the (query, key) pairs its tree mask allows (so its attention is counted exactly, causal or not);
  ``P_j`` = the body's non-embedding parameters (it runs no LM head). ``teacher_likelihood`` reads the
  teacher's logits: no FLOPs of its own;
* the LM head (``2 V H`` per row and forward, its backward as the body's) is counted at the decision points
  only (the response tokens: the rows whose logits the loss needs), which is what the fused-linear engine
  computes; the logits engine computes it on every token, more than this (its extra work earns no MFU);
* not counted: the loss (softmax / divergences over the vocabulary), sampling, the optimizer, LoRA's own matmuls.

Peak dense bf16 FLOP/s: ``--peak-tflops``, else from ``torch.cuda.get_device_name()``: H100 SXM / H200 989,
H100 NVL 835, H100 PCIe 756, A100 312 TFLOP/s; another GPU needs the flag. On CPU (``--device cpu --tiny``,
tiny shapes for testing the same code path) the default peak is a measured bf16 matmul throughput.

``python benchmarks/gpu_step.py [--batch 4] [--warmup 2] [--steps 5] [--full-finetune] [--json OUT.json]``
(``--loss-engine`` sets ``training.loss_engine``; by default the config default is used, and reported).
Without a CUDA device it prints ``no CUDA device: skipped`` and exits 0 (unless ``--device cpu --tiny``).
The loss engine the trainer chose is reported as ``getattr(trainer, "loss_engine", "logits")``.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

if importlib.util.find_spec("vcrd_core") is None:  # a plain checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PARTS = ("teacher_forward", "student_forward", "judge", "loss", "backward")
#: On-policy variants only: seconds spent generating the step's student rollouts and syncing the generator.
GENERATION_PARTS = ("generation", "sync")
VARIANTS = ("constant", "offline_vcrd", "online_teacher_likelihood", "online_prm_value_head")
#: Opt-in (``--variants``): online teacher_likelihood with the student rollouts generated every step.
ON_POLICY_VARIANTS = ("on_policy_hf", "on_policy_vllm")
#: Opt-in: the same steps with the teacher's top-k (``--cache-k``) precomputed, as ``training.teacher_cache`` reads
#: it (no teacher forward in the step; the one-time teacher pass is reported as ``cache_seconds``).
CACHED_VARIANTS = ("constant_cached", "online_teacher_likelihood_cached")
LABELS = {
    "constant": "constant (SKL+SRKL)",
    "offline_vcrd": "offline VCRD",
    "online_teacher_likelihood": "online teacher_likelihood",
    "online_prm_value_head": "online prm_value_head",
    "on_policy_hf": "on-policy hf, online teacher_likelihood",
    "on_policy_vllm": "on-policy vllm colocated, online teacher_likelihood",
    "constant_cached": "constant, top-k teacher cache",
    "online_teacher_likelihood_cached": "online teacher_likelihood, top-k teacher cache",
}

#: Qwen2.5-1.5B's and Qwen2.5-7B's config.json values (the architecture; dtype and ids are set below).
QWEN25_1_5B: dict[str, Any] = {
    "vocab_size": 151936,
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "max_position_embeddings": 131072,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "use_sliding_window": False,
    "sliding_window": 131072,
    "max_window_layers": 21,
    "hidden_act": "silu",
}
QWEN25_7B: dict[str, Any] = {
    **QWEN25_1_5B,
    "vocab_size": 152064,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "tie_word_embeddings": False,
    "max_window_layers": 28,
}
#: Qwen2.5's tokenizer: 151,643 regular tokens + 22 special tokens = len(tokenizer).
QWEN25_REAL_VOCAB = 151665
QWEN25_SPECIALS = 22
#: --tiny: the same code path with toy shapes (CPU testing).
TINY: dict[str, Any] = {
    "vocab_size": 320,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "use_sliding_window": False,
    "hidden_act": "silu",
}
TINY_TEACHER: dict[str, Any] = {**TINY, "vocab_size": 352, "hidden_size": 128, "tie_word_embeddings": False}
TINY_REAL_VOCAB = 300
TINY_SPECIALS = 6

#: Dense bf16 tensor-core peaks (TFLOP/s, no sparsity), matched against torch.cuda.get_device_name().
PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0))

T0 = time.perf_counter()


def log(message: str) -> None:
    """A progress line with the wall-clock time and the seconds since start (flushed: partial logs are useful)."""
    print(f"[{time.strftime('%H:%M:%S')} +{time.perf_counter() - T0:7.1f}s] {message}", flush=True)


# ----- arguments ------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu needs --tiny")
    ap.add_argument("--tiny", action="store_true", help="toy shapes (hidden 64, 2 layers, length 64) for testing")
    ap.add_argument("--batch", type=int, default=4, help="sequences per stream per micro-batch (default 4)")
    ap.add_argument("--prompt-length", type=int, default=None, help="default 256 (16 with --tiny)")
    ap.add_argument("--response-length", type=int, default=None, help="with EOS; default 768 (48 with --tiny)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps (default 5)")
    ap.add_argument("--full-finetune", action="store_true", help="train every weight (training.lora.enabled: false)")
    choices = (*VARIANTS, *ON_POLICY_VARIANTS, *CACHED_VARIANTS)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {', '.join(choices)}")
    ap.add_argument(
        "--loss-engine",
        choices=("auto", "fused_linear", "logits"),
        default=None,
        help="set training.loss_engine (default: left to the config's default)",
    )
    ap.add_argument("--compile", action="store_true", help="objective.compile: torch.compile the fused loss chunks")
    ap.add_argument("--cache-k", type=int, default=64, help="k of the *_cached variants' teacher top-k (default 64)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="peak dense bf16 TFLOP/s for MFU")
    ap.add_argument("--json", type=Path, default=None, help="write the results here as JSON")
    ap.add_argument("--workdir", type=Path, default=None, help="scratch directory (default: a new temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory (runs, PRM checkpoint)")
    args = ap.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in choices]
    if unknown or not args.variants:
        ap.error(f"--variants: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(choices)}")
    if args.prompt_length is None:
        args.prompt_length = 16 if args.tiny else 256
    if args.response_length is None:
        args.response_length = 48 if args.tiny else 768
    for name in ("batch", "prompt_length", "response_length", "steps"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        ap.error("--warmup must be >= 0")
    if args.device == "cpu" and not args.tiny:
        ap.error("--device cpu runs the tiny shapes only: add --tiny")
    return args


def peak_flops(args: argparse.Namespace, device: torch.device) -> tuple[float, str]:
    """Peak dense bf16 FLOP/s and where the number came from."""
    if args.peak_tflops is not None:
        return args.peak_tflops * 1e12, "--peak-tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in PEAK_TFLOPS:
            if key in name:
                return tflops * 1e12, f"table ({key}: {tflops:g} TFLOP/s dense bf16)"
        raise SystemExit(f"no peak bf16 FLOP/s known for '{name}': pass --peak-tflops")
    return measured_matmul_flops(), "measured bf16 matmul on this CPU"


def measured_matmul_flops(n: int = 512, repeats: int = 5) -> float:
    """The best bf16 ``n x n`` matmul throughput of this CPU (a stand-in peak for the tiny CPU mode)."""
    a = torch.randn(n, n, dtype=torch.bfloat16)
    b = torch.randn(n, n, dtype=torch.bfloat16)
    a @ b
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


# ----- models, tokenizer, data ------------------------------------------------------------------------------------


def byte_level_alphabet() -> list[str]:
    """GPT-2's byte-to-unicode characters in id order (the first 256 ids of Qwen's vocabulary)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


def build_tokenizer(real_vocab: int, n_specials: int) -> Any:
    """A Qwen2 byte-level tokenizer with ``real_vocab`` tokens: the 256 byte characters, filler words, then the
    special tokens (``<|endoftext|>`` first, as in Qwen2.5, where it is also pad and EOS). No merges: text encodes
    to one token per byte, which is all the PRM judge's re-tokenisation of the printable-ASCII prompts needs."""
    from transformers import Qwen2Tokenizer

    alphabet = byte_level_alphabet()
    letters = "abcdefghijklmnopqrstuvwxyz"
    n_fill = real_vocab - n_specials - len(alphabet)
    fillers = []
    for i in range(n_fill):  # "Ġ" + 4 letters: unique, decodable, never a single byte character
        word = ""
        for _ in range(4):
            i, r = divmod(i, 26)
            word += letters[r]
        fillers.append("Ġ" + word)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    specials += [f"<|extra_{k}|>" for k in range(n_specials - len(specials))]
    vocab = {tok: i for i, tok in enumerate([*alphabet, *fillers, *specials])}
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], extra_special_tokens=specials[1:])
    if len(tok) != real_vocab:
        raise RuntimeError(f"tokenizer has {len(tok)} tokens, expected {real_vocab}")
    return tok


def qwen2_config(shape: dict[str, Any], tokenizer: Any) -> Any:
    from transformers import Qwen2Config

    eos = tokenizer.eos_token_id
    return Qwen2Config(**shape, bos_token_id=eos, eos_token_id=eos, pad_token_id=None)


def build_model(config: Any, device: torch.device, seed: int) -> Any:
    """Random bf16 weights made directly on ``device`` (no CPU copy, no download)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    return model


@dataclass
class ModelCost:
    """What the FLOPs model needs of one model."""

    non_embedding: int
    lm_head: int  # V x H when the model runs its LM head, else 0
    layers: int
    attention_width: int  # heads x head dim

    @property
    def flops_params(self) -> int:
        return self.non_embedding + self.lm_head

    def as_dict(self) -> dict[str, int]:
        return {**self.__dict__, "flops_params": self.flops_params}


def model_cost(model: Any, *, lm_head: bool) -> ModelCost:
    cfg = model.config
    non_embedding = sum(
        p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n and "lm_head" not in n
    )
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return ModelCost(
        non_embedding=int(non_embedding),
        lm_head=int(cfg.vocab_size * cfg.hidden_size) if lm_head else 0,
        layers=int(cfg.num_hidden_layers),
        attention_width=int(cfg.num_attention_heads * head_dim),
    )


def write_prm(path: Path, config: Any, tokenizer: Any, device: torch.device, seed: int) -> ModelCost:
    """A value-head PRM directory as Skywork's ship: a causal-LM body (bf16 safetensors), ``v_head.summary.*``
    in a shard of its own (model.safetensors.index.json), a reward-model architecture name, the tokenizer."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    model = build_model(config, device, seed)
    cost = model_cost(model.model, lm_head=False)
    model.save_pretrained(path)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    gen = torch.Generator().manual_seed(seed + 1)
    head = {
        "v_head.summary.weight": (torch.randn(1, config.hidden_size, generator=gen) * 0.02).to(torch.bfloat16),
        "v_head.summary.bias": torch.zeros(1, dtype=torch.bfloat16),
    }
    save_file(head, str(path / "model-v_head.safetensors"), metadata={"format": "pt"})
    index_file = path / "model.safetensors.index.json"
    if index_file.is_file():
        index = json.loads(index_file.read_text())
    else:
        with safe_open(str(path / "model.safetensors"), framework="pt") as handle:
            index = {"metadata": {}, "weight_map": dict.fromkeys(handle.keys(), "model.safetensors")}
    index["weight_map"].update(dict.fromkeys(head, "model-v_head.safetensors"))
    index_file.write_text(json.dumps(index))
    cfg = json.loads((path / "config.json").read_text())
    cfg["architectures"] = ["Qwen2ForPrmModel"]
    (path / "config.json").write_text(json.dumps(cfg))
    tokenizer.save_pretrained(path)
    return cost


def rollout_rows(n: int, prompt_length: int, response_length: int, tokenizer: Any, offline: bool) -> list[dict]:
    """``n`` slots, each with a teacher and a student rollout of random ids (the trainer's row interface)."""
    gen = torch.Generator().manual_seed(0)
    regular = len(tokenizer) - len(tokenizer.all_special_ids)
    eos = int(tokenizer.eos_token_id)
    rows = []
    for i in range(n):
        for role in ("teacher", "student"):
            prompt = torch.randint(0, 94, (prompt_length,), generator=gen).tolist()  # '!'..'~' byte tokens
            response = [*torch.randint(0, regular, (response_length - 1,), generator=gen).tolist(), eos]
            row = {"prompt_index": i, "sample_index": 0, "role": role, "prompt_token_ids": prompt,
                   "response_token_ids": response}  # fmt: skip
            if offline:
                row["weights"] = (0.5 + torch.rand(response_length, generator=gen)).tolist()
            rows.append(row)
    return rows


# ----- one variant ------------------------------------------------------------------------------------------------


def variant_sections(
    name: str, prm_path: Path | None, args: argparse.Namespace | None = None
) -> tuple[dict[str, Any], bool]:
    """The config sections of a variant and whether its rollouts carry weights."""
    if name in ON_POLICY_VARIANTS:
        assert args is not None
        backend = name.removeprefix("on_policy_")
        generator: dict[str, Any] = {"name": backend}
        if backend == "vllm":  # the student exists in memory only: a dummy load, then the first sync sends it
            generator["params"] = {"gpu_memory_utilization": 0.25, "max_model_len": args.prompt_length +
                                   args.response_length, "engine_kwargs": {"load_format": "dummy"}}  # fmt: skip
        return {
            "judge": {"name": "teacher_likelihood"},
            "on_policy": {"schedule": "steps", "generator": generator},
            "rollouts": {"max_new_tokens": args.response_length, "temperature": 1.0},
        }, False
    name = name.removesuffix("_cached")  # the cache changes where the teacher comes from, not the sections
    if name == "constant":
        return {"weighting": {"name": "constant"}, "judge": None}, False
    if name == "offline_vcrd":
        return {"scoring": {"mode": "offline"}, "judge": {"name": "teacher_likelihood"}}, True
    if name == "online_teacher_likelihood":
        return {"judge": {"name": "teacher_likelihood"}}, False
    return {"judge": {"name": "prm_value_head", "params": {"path": str(prm_path)}}}, False


def run_config(
    args: argparse.Namespace, root: Path, teacher_dir: Path, student_dir: Path, name: str, prm: Path | None
) -> tuple[Any, bool]:
    from vcrd_core.config.loader import validate_components
    from vcrd_core.config.models import RunConfig

    sections, offline = variant_sections(name, prm, args)
    total = args.warmup + args.steps
    engine = {} if args.loss_engine is None else {"loss_engine": args.loss_engine}
    train_args: dict[str, Any] = {"disable_tqdm": True, "dataloader_num_workers": 0, "save_strategy": "no"}
    if args.device == "cpu":
        train_args["use_cpu"] = True
    cfg: dict[str, Any] = {
        "seed": 0,
        "models": {
            "teacher": {"path": str(teacher_dir), "dtype": "bfloat16"},
            "student": {"path": str(student_dir), "dtype": "bfloat16"},
        },
        "data": {
            "train": str(root / "prompts.jsonl"),
            "template": "plain",
            "max_prompt_length": args.prompt_length,
            "max_length": args.prompt_length + args.response_length,
        },
        "training": {
            "max_steps": total,
            "per_device_batch_size": args.batch,
            "mixed_precision": "bf16",
            "lr_scheduler": "constant",
            "warmup_ratio": 0.0,
            "logging_steps": 100_000,
            "max_nonfinite_steps": total + 1,  # random weights: a skipped step is reported, never fatal
            "lora": {"enabled": not args.full_finetune},  # r, alpha, dropout: the Table 9 defaults
            "args": train_args,
            **engine,
        },
        "output": {"dir": str(root / "runs" / name)},
        **sections,
    }
    if args.compile:
        cfg["objective"] = {**cfg.get("objective", {}), "compile": True}
    config = RunConfig.model_validate(cfg)
    validate_components(config)
    return config, offline


@dataclass
class JudgeCounter:
    """Tokens and allowed (query, key) pairs of the judge body's passes, per optimizer step (a forward pre-hook)."""

    tokens: int = 0
    pairs: Any = 0
    per_step: list[tuple[int, int]] = field(default_factory=list)

    def hook(self, module: Any, args: tuple, kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        if ids is None:
            return
        self.tokens += int(ids.numel())
        if mask is not None and mask.dim() == 4:  # additive float mask: 0 where a query may attend
            self.pairs = self.pairs + (mask == 0).sum()
        else:  # a plain causal pass
            length = ids.shape[-1]
            self.pairs = self.pairs + ids.shape[0] * length * (length + 1) // 2

    def close_step(self) -> None:
        self.per_step.append((self.tokens, int(self.pairs)))
        self.tokens, self.pairs = 0, 0


def step_callbacks(counter: JudgeCounter | None, metrics_file: Path, total: int) -> Any:
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if counter is not None:
                counter.tokens, counter.pairs = 0, 0

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if counter is not None:
                counter.close_step()
            try:
                last = json.loads(metrics_file.read_text().splitlines()[-1])
                log(f"  step {state.global_step}/{total}: {last['step_seconds']:.3f} s")
            except (OSError, IndexError, KeyError, ValueError):
                log(f"  step {state.global_step}/{total} done")

    return Progress()


def policy_flops(args: argparse.Namespace, teacher: ModelCost, student: ModelCost) -> dict[str, float]:
    n_seq = 2 * args.batch
    length = args.prompt_length + args.response_length
    tokens = n_seq * length

    def attention(cost: ModelCost) -> float:  # causal: half of 4 n d L^2 per sequence
        return n_seq * 2.0 * cost.layers * cost.attention_width * length**2

    backward = 4 if args.full_finetune else 2
    points = n_seq * args.response_length  # the decision points: the only rows whose logits the loss needs
    return {
        "tokens": float(tokens),
        "teacher_forward": 2.0 * (teacher.non_embedding * tokens + teacher.lm_head * points) + attention(teacher),
        "student_forward": 2.0 * (student.non_embedding * tokens + student.lm_head * points) + attention(student),
        "student_backward": float(backward) * (student.non_embedding * tokens + student.lm_head * points)
        + 2 * attention(student),
    }


def hook_count(model: Any) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def run_variant(
    name: str,
    args: argparse.Namespace,
    device: torch.device,
    root: Path,
    dirs: dict[str, Path],
    teacher: Any,
    student_config: Any,
    tokenizer: Any,
    costs: dict[str, ModelCost],
) -> dict[str, Any]:
    from vcrd_core.training.run import build_trainer, prepare

    config, offline = run_config(args, root, dirs["teacher"], dirs["student"], name, dirs.get("prm"))
    total = args.warmup + args.steps
    rows = rollout_rows(args.batch * total, args.prompt_length, args.response_length, tokenizer, offline)
    prepared = prepare(config, resume=False, rows=rows)
    cache_seconds = None
    if name in CACHED_VARIANTS:
        t0 = time.perf_counter()
        config, prepared = with_teacher_cache(config, prepared, rows, teacher, args, device, len(tokenizer))
        cache_seconds = time.perf_counter() - t0
        log(f"{name}: teacher top-{args.cache_k} of {len(rows)} rollouts in {cache_seconds:.1f} s")
    # accelerate wraps a prepared model's forward (autocast, fp32 outputs): unwrap the shared teacher first
    teacher.__dict__.pop("forward", None)
    teacher.__dict__.pop("_original_forward", None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    student = build_model(student_config, device, seed=1)  # fresh per variant: LoRA is applied once
    costs["student"] = model_cost(student, lm_head=True)
    trainer = build_trainer(config, prepared, teacher=None if cache_seconds is not None else teacher, student=student)
    build_seconds = time.perf_counter() - t0
    bodies = [getattr(s.judge, "body", None) for s in trainer.plan.streams.values()]
    body = next((b for b in bodies if b is not None), None)  # a PRM's transformer body (streams share the judge)
    counter, handle = None, None
    if body is not None:
        counter = JudgeCounter()
        handle = body.register_forward_pre_hook(counter.hook, with_kwargs=True)
        costs["judge"] = model_cost(body, lm_head=False)
    metrics_file = Path(prepared.out) / "metrics.jsonl"
    trainer.add_callback(step_callbacks(counter, metrics_file, total))
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    log(f"{name}: trainer built in {build_seconds:.1f} s ({trainable / 1e6:.1f} M trainable parameters)")
    hooks_before = hook_count(teacher)
    try:
        trainer.train()
    finally:
        if handle is not None:
            handle.remove()
    # the trainer resolves its loss engine on the first batch; absent attribute: a trainer without a choice
    engine = str(getattr(trainer, "loss_engine", "logits"))
    reason = str(getattr(trainer, "loss_engine_reason", "") or "")
    log(f"{name}: loss engine {engine}" + (f" ({reason})" if reason else ""))
    if hook_count(teacher) != hooks_before:
        log(f"{name}: WARNING the shared teacher has {hook_count(teacher) - hooks_before:+d} hooks after training")
    peak_memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    steps = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    timed = steps[args.warmup :]
    step = median([s["step_seconds"] for s in timed])
    parts = {p: median([s.get(f"time/{p}", 0.0) for s in timed]) for p in (*PARTS, *GENERATION_PARTS)}
    tps = median([s["tokens_per_second"] for s in timed])
    flops = policy_flops(args, costs["teacher"], costs["student"])
    if cache_seconds is not None:
        flops["teacher_forward"] = 0.0  # the step runs no teacher (its one pass is cache_seconds)
    flops["judge"] = 0.0
    judge_tokens = judge_pairs = 0.0
    if counter is not None and counter.per_step:
        judge_steps = counter.per_step[args.warmup :] or counter.per_step
        judge_tokens = median([float(t) for t, _ in judge_steps])
        judge_pairs = median([float(a) for _, a in judge_steps])
        j = costs["judge"]
        flops["judge"] = 2.0 * j.flops_params * judge_tokens + 4.0 * j.layers * j.attention_width * judge_pairs
    total_flops = sum(v for k, v in flops.items() if k != "tokens")
    result = {
        "loss_engine": engine,
        "loss_engine_reason": reason,
        "steps": len(steps),
        "step_seconds": step,
        "step_seconds_timed": [s["step_seconds"] for s in timed],
        "tokens_per_second": tps,
        "tokens_per_step": flops["tokens"],
        "measured_tokens_per_step": median([s["tokens_per_second"] * s["step_seconds"] for s in timed]),
        "time_seconds": parts,
        "time_share": {p: v / step for p, v in parts.items()},
        "static_scoring_seconds": float(trainer.static_scoring_seconds),
        "trainer_build_seconds": build_seconds,
        "trainable_parameters": int(trainable),
        "peak_memory_gib": peak_memory,
        "judge_tokens_per_step": judge_tokens,
        "judge_attention_pairs_per_step": judge_pairs,
        "flops_per_step": {**{k: v for k, v in flops.items() if k != "tokens"}, "total": total_flops},
        "nonfinite_steps": int(max((s.get("nonfinite_steps", 0) for s in steps), default=0)),
        "final_loss": steps[-1].get("loss") if steps else None,
        "cache_seconds": cache_seconds,
    }
    if name in ON_POLICY_VARIANTS:
        result["generation_tokens_per_second"] = median([s["on_policy/tokens_per_second"] for s in timed])
        result["generated_tokens_per_step"] = median(
            [s["on_policy/tokens_per_second"] * s["time/generation"] for s in timed]
        )
        if name == "on_policy_vllm":
            result["standalone_vllm_tokens_per_second"] = standalone_vllm_speed(config, tokenizer, rows, args)
    del trainer, student, body, bodies, prepared
    return result


def with_teacher_cache(
    config: Any,
    prepared: Any,
    rows: list[dict],
    teacher: Any,
    args: argparse.Namespace,
    device: torch.device,
    vocab: int,
) -> tuple[Any, Any]:
    """What ``vcrd teacher-cache`` + ``training.teacher_cache`` give a run, in memory (the benchmark's teacher and
    rollouts exist only here): one no-grad teacher pass over the rows, their top-k per decision point, attached to
    the prepared dataset; the config then names a cache, so the trainer builds no teacher."""
    import dataclasses

    import numpy as np

    from vcrd_core.rollouts.teacher_cache import TeacherCache, sequence_digest, teacher_topk_batches

    cached: dict[tuple[str, int, int], tuple[Any, Any, Any]] = {}
    digests: dict[tuple[str, int, int], int] = {}
    passes = teacher_topk_batches(
        teacher, rows, k=args.cache_k, vocab=vocab, temperature=1.0, pad_id=0, device=device, batch_size=args.batch
    )
    for part, sparse, counts in passes:
        offset = 0
        for r, n in zip(part, counts, strict=True):
            key = (r["role"], int(r["prompt_index"]), int(r["sample_index"]))
            sl = slice(offset, offset + n)
            cached[key] = (sparse.ids[sl].int().cpu().numpy(), sparse.logp[sl].half().cpu().numpy(),
                           sparse.tail[sl].cpu().numpy().astype(np.float32))  # fmt: skip
            digests[key] = sequence_digest(r["prompt_token_ids"], r["response_token_ids"])
            offset += n
    cache = TeacherCache(Path("in-memory"), {"k": sparse.k, "temperature": 1.0}, cached, digests)
    prepared.dataset.set_teacher_cache(cache)
    config = config.model_copy(update={"training": config.training.model_copy(update={"teacher_cache": "in-memory"})})
    return config, dataclasses.replace(prepared, plan=dataclasses.replace(prepared.plan, config=config))


def standalone_vllm_speed(config: Any, tokenizer: Any, rows: list[dict], args: argparse.Namespace) -> float:
    """Tokens/s of a separate vLLM engine (dummy weights, same shapes, same sampling) on the same prompts, the
    reference the colocated engine's generation is compared with (goal: within 1.1x)."""
    from vcrd_core.plugins.registry import create
    from vcrd_core.rollouts.generator import GeneratorContext, Sampling

    spec = config.on_policy.generator_spec()
    gen = create("generators", "vllm", spec.params)
    path = config.models.student.path
    gen.load(GeneratorContext(path, tokenizer, path, len(tokenizer), "bfloat16", extra={"seed": 0}))
    prompts = [r["prompt_token_ids"] for r in rows if r["role"] == "student"][: args.batch]
    sampling = Sampling(max_new_tokens=args.response_length, temperature=1.0, seed=0)
    gen.generate(prompts, sampling)
    speeds = []
    for _ in range(3):
        t0 = time.perf_counter()
        out = gen.generate(prompts, sampling)
        speeds.append(sum(len(o[0].token_ids) for o in out) / (time.perf_counter() - t0))
    gen.close()
    return median(speeds)


# ----- report -----------------------------------------------------------------------------------------------------


def fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None or not math.isfinite(value) else format(value, spec)


def report(results: dict[str, Any]) -> None:
    variants = results["variants"]
    print()
    print(
        f"device: {results['device']}; torch {results['torch']}, transformers {results['transformers']}, "
        f"peft {results['peft']}, python {results['python']}"
    )
    s = results["settings"]
    training = "full fine-tuning" if s["full_finetune"] else f"LoRA r {s['lora_r']} alpha {s['lora_alpha']:g}"
    print(
        f"{training}, bf16{', objective.compile' if s.get('compile') else ''}; "
        f"{s['batch']} sequences/stream x 2 streams x {s['sequence_length']} tokens "
        f"(prompt {s['prompt_length']} + response {s['response_length']}); {s['warmup']} warm-up + {s['steps']} "
        f"timed steps (medians); peak {s['peak_tflops']:g} TFLOP/s ({s['peak_source']})"
    )
    engines = {f"{v['loss_engine']}" + (f" ({v['loss_engine_reason']})" if v["loss_engine_reason"] else "")
               for v in variants.values() if "loss_engine" in v}  # fmt: skip
    print(f"loss engine (getattr(trainer, 'loss_engine', 'logits')): {'; '.join(sorted(engines)) or 'n/a'}")
    print()
    print(
        "| variant | step (s) | vs constant | tokens/s | teacher fwd | student fwd | judge | loss | backward+opt "
        "| peak mem (GiB) | TFLOP/step | MFU | static scoring (s, once) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, v in variants.items():
        if "error" in v:
            print(f"| {LABELS[name]} | failed: {v['error']} |" + " |" * 11)
            continue
        shares = " | ".join(f"{v['time_share'][p]:.0%}" for p in PARTS)
        print(
            f"| {LABELS[name]} | {v['step_seconds']:.3f} | {fmt(v['ratio_vs_constant'], '.2f')}x "
            f"| {v['tokens_per_second']:,.0f} | {shares} | {fmt(v['peak_memory_gib'], '.1f')} "
            f"| {v['flops_per_step']['total'] / 1e12:.4g} | {v['mfu']:.1%} | {v['static_scoring_seconds']:.2f} |"
        )
    print()
    print("Model FLOPs per step (TFLOP): " + "; ".join(results["flops_formula"]))
    print("| variant | teacher fwd | student fwd | student bwd | judge | judge tokens/step | total |")
    print("|---|---|---|---|---|---|---|")
    for name, v in variants.items():
        if "error" in v:
            continue
        f = v["flops_per_step"]
        print(
            f"| {LABELS[name]} | {f['teacher_forward'] / 1e12:.4g} | {f['student_forward'] / 1e12:.4g} "
            f"| {f['student_backward'] / 1e12:.4g} | {f['judge'] / 1e12:.4g} | {v['judge_tokens_per_step']:,.0f} "
            f"| {f['total'] / 1e12:.4g} |"
        )
    on_policy = {n: v for n, v in variants.items() if n in ON_POLICY_VARIANTS and "error" not in v}
    if on_policy:
        print()
        print("| on-policy variant | step (s) | generation (s) | sync (s) | generation share | sync share "
              "| generation tok/s | standalone vLLM tok/s |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|")
        for name, v in on_policy.items():
            t = v["time_seconds"]
            alone = v.get("standalone_vllm_tokens_per_second")
            print(
                f"| {LABELS[name]} | {v['step_seconds']:.3f} | {t['generation']:.3f} | {t['sync']:.3f} "
                f"| {t['generation'] / v['step_seconds']:.0%} | {t['sync'] / v['step_seconds']:.1%} "
                f"| {v['generation_tokens_per_second']:,.0f} | {fmt(alone, ',.0f')} |"
            )
    m = results["models"]
    print(
        "P + V*H (non-embedding + LM head, M): "
        + ", ".join(f"{k} {c['flops_params'] / 1e6:,.1f}" for k, c in m.items())
        + f"; setup {results['setup_seconds']:.1f} s, total {results['total_seconds']:.1f} s"
    )


# ----- main -------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: skipped", flush=True)
        return 0
    device = torch.device(args.device, 0) if args.device == "cuda" else torch.device("cpu")
    peak, peak_source = peak_flops(args, device)

    import peft
    import transformers

    transformers.logging.set_verbosity_warning()
    device_name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({platform.processor() or platform.machine()})"
    )
    log(f"device {device_name}; torch {torch.__version__}, transformers {transformers.__version__}")
    root = Path(tempfile.mkdtemp(prefix="vcrd-gpu-step-", dir=args.workdir))
    dirs = {"teacher": root / "teacher", "student": root / "student"}
    results: dict[str, Any] = {
        "device": device_name,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
        "flops_formula": [
            "teacher fwd 2*(P_t*T + V_t*H_t*N) + attn",
            "student fwd 2*(P_s*T + V_s*H_s*N) + attn",
            f"student bwd {4 if args.full_finetune else 2}*(P_s*T + V_s*H_s*N) + 2*attn",
            "P non-embedding parameters, T tokens, N decision points (the LM head's rows)",
            "attn 2*n*d*L^2 per sequence (causal)",
            "judge 2*P_j*T_j + 4*n_j*d_j*A_j (its tree passes)",
        ],
    }
    try:
        from vcrd_core.config.models import LoraConfig

        lora = LoraConfig()
        setup_t0 = time.perf_counter()
        real_vocab, n_specials = (TINY_REAL_VOCAB, TINY_SPECIALS) if args.tiny else (QWEN25_REAL_VOCAB, QWEN25_SPECIALS)
        tokenizer = build_tokenizer(real_vocab, n_specials)
        log(f"tokenizer: {len(tokenizer)} tokens")
        student_config = qwen2_config(TINY if args.tiny else QWEN25_1_5B, tokenizer)
        teacher_config = qwen2_config(TINY_TEACHER if args.tiny else QWEN25_7B, tokenizer)
        for key, cfg in (("teacher", teacher_config), ("student", student_config)):
            dirs[key].mkdir(parents=True)
            cfg.save_pretrained(dirs[key])
        tokenizer.save_pretrained(dirs["student"])  # the run's tokenizer (models.tokenizer defaults to the student)
        (root / "prompts.jsonl").write_text('{"prompt": "unused: rollouts are passed in"}\n')
        costs: dict[str, ModelCost] = {}
        if "online_prm_value_head" in args.variants:
            dirs["prm"] = root / "prm"
            t0 = time.perf_counter()
            costs["judge"] = write_prm(dirs["prm"], student_config, tokenizer, device, seed=2)
            size = sum(f.stat().st_size for f in dirs["prm"].glob("*.safetensors")) / 2**30
            log(f"PRM judge checkpoint written ({size:.2f} GiB bf16) in {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        teacher = build_model(teacher_config, device, seed=0)
        costs["teacher"] = model_cost(teacher, lm_head=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        log(f"teacher built: {sum(p.numel() for p in teacher.parameters()) / 1e9:.2f} B parameters in "
            f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
        results["setup_seconds"] = time.perf_counter() - setup_t0
        results["settings"] = {
            "batch": args.batch,
            "prompt_length": args.prompt_length,
            "response_length": args.response_length,
            "sequence_length": args.prompt_length + args.response_length,
            "warmup": args.warmup,
            "steps": args.steps,
            "full_finetune": args.full_finetune,
            "lora_r": lora.r,
            "lora_alpha": lora.alpha,
            "lora_dropout": lora.dropout,
            "mixed_precision": "bf16",
            "tiny": args.tiny,
            "loss_engine_setting": args.loss_engine or "config default",
            "compile": args.compile,
            "tokenizer_vocab": len(tokenizer),
            "peak_tflops": peak / 1e12,
            "peak_source": peak_source,
        }
        variants: dict[str, Any] = {}
        results["variants"] = variants
        for name in args.variants:
            log(f"{name}: start")
            try:
                variants[name] = run_variant(name, args, device, root, dirs, teacher, student_config, tokenizer, costs)
                v = variants[name]
                memory = "" if v["peak_memory_gib"] is None else f", peak memory {v['peak_memory_gib']:.1f} GiB"
                static = f"static scoring {v['static_scoring_seconds']:.2f} s"
                log(f"{name}: median step {v['step_seconds']:.3f} s{memory}, {static}")
            except Exception as exc:  # one failing variant (e.g. out of memory) still leaves the others' numbers
                traceback.print_exc()
                first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
                variants[name] = {"error": f"{type(exc).__name__}: {first}"}
                log(f"{name}: FAILED ({variants[name]['error']})")
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        base = variants.get("constant", {}).get("step_seconds")
        for v in variants.values():
            if "error" not in v:
                v["ratio_vs_constant"] = v["step_seconds"] / base if base else None
                v["mfu"] = v["flops_per_step"]["total"] / (v["step_seconds"] * peak)
        results["models"] = {k: c.as_dict() for k, c in costs.items()}
        results["total_seconds"] = time.perf_counter() - T0
        report(results)
    finally:
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2) + "\n")
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    failed = [n for n, v in results.get("variants", {}).items() if "error" in v]
    if failed:
        log(f"failed variants: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
