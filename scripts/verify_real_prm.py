"""Check vcrd's PRM judges on the real, downloaded checkpoints against their model cards' examples.

This script CANNOT run without the weights: download them yourself first (nothing is downloaded here), e.g.
``huggingface-cli download Qwen/Qwen2.5-Math-PRM-7B --local-dir /models/Qwen2.5-Math-PRM-7B`` and
``huggingface-cli download Skywork/Skywork-o1-Open-PRM-Qwen-2.5-1.5B --local-dir /models/skywork-prm-1.5b``.

Qwen2.5-Math-PRM-7B (``--qwen DIR``, judge ``prm_classifier``): the model card scores the "Sue's flamingos"
example (system prompt, query, four steps each followed by ``<extra_0>``) and prints
``[[1.0, 0.1904296875, 0.9765625, 1.0]]`` (bfloat16). The script builds the same ids the card builds (chat
template, steps joined by ``<extra_0>``), scores the last token of every step with vcrd's tree scoring and
``branch_suffix: <extra_0>`` (the branch reads at the same ``<extra_0>`` with the same prefix), and compares with
those numbers within ``--tolerance`` (default 0.02: the card's numbers are bfloat16, vcrd runs the head in
float32, and GPU kernels differ). The card was later edited ("Fix backslashes in prompt example"); the text here
is the version that printed those numbers, so a small drift on step 2 (0.19) is possible with other revisions.

Skywork-o1-Open-PRM-Qwen-2.5-1.5B (``--skywork DIR``, judge ``prm_value_head``): its model card and the
``skywork-o1-prm-inference`` README show the "Janet's ducks" example but publish NO numeric outputs, so there
are no exact numbers to compare with. The script instead reproduces Skywork's own reading — ids built like
their ``prepare_input`` (``bos + problem + "\\n"``, each step tokenized alone and followed by the ``"\\n"`` token),
one plain forward pass, ``sigmoid(v_head)`` at every step's newline — and checks that vcrd's tree scoring
(``branch_suffix: "\\n"``, scoring each step's last token) gives the same step rewards within ``--tolerance``;
it prints both for inspection. Both responses in that example are correct (answer 18).

Exit status 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

QWEN_CARD = {
    "system": "Please reason step by step, and put your final answer within \\boxed{}.",
    "query": "Sue lives in a fun neighborhood.  One weekend, the neighbors decided to play a prank on Sue.  On Friday "
    "morning, the neighbors placed 18 pink plastic flamingos out on Sue's front yard.  On Saturday morning, the "
    "neighbors took back one third of the flamingos, painted them white, and put these newly painted white flamingos "
    "back out on Sue's front yard.  Then, on Sunday morning, they added another 18 pink plastic flamingos to the "
    "collection. At noon on Sunday, how many more pink plastic flamingos were out than white plastic flamingos?",
    "response": [
        "To find out how many more pink plastic flamingos were out than white plastic flamingos at noon on Sunday, "
        "we can break down the problem into steps. First, on Friday, the neighbors start with 18 pink plastic "
        "flamingos.",
        "On Saturday, they take back one third of the flamingos. Since there were 18 flamingos, (1/3 \\times 18 = 6) "
        "flamingos are taken back. So, they have (18 - 6 = 12) flamingos left in their possession. Then, they paint "
        "these 6 flamingos white and put them back out on Sue's front yard. Now, Sue has the original 12 pink "
        "flamingos plus the 6 new white ones. Thus, by the end of Saturday, Sue has (12 + 6 = 18) pink flamingos and "
        "6 white flamingos.",
        "On Sunday, the neighbors add another 18 pink plastic flamingos to Sue's front yard. By the end of Sunday "
        "morning, Sue has (18 + 18 = 36) pink flamingos and still 6 white flamingos.",
        "To find the difference, subtract the number of white flamingos from the number of pink flamingos: "
        "(36 - 6 = 30). Therefore, at noon on Sunday, there were 30 more pink plastic flamingos out than white "
        "plastic flamingos. The answer is (\\boxed{30}).",
    ],
    "expected": [1.0, 0.1904296875, 0.9765625, 1.0],
}

SKYWORK_PROBLEM = (
    "Janet\u2019s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for her "
    "friends every day with four. She sells the remainder at the farmers' market daily for $2 per fresh duck egg. "
    "How much in dollars does she make every day at the farmers' market?"
)
SKYWORK_RESPONSES = [
    "To determine how much money Janet makes every day at the farmers' market, we need to follow these steps:\n"
    "1. **Calculate the total number of eggs laid by the ducks per day.**\n   Janet's ducks lay 16 eggs per day.\n"
    "2. **Determine the number of eggs Janet uses each day.**\n   - She eats 3 eggs for breakfast every morning.\n"
    "   - She bakes muffins for her friends every day with 4 eggs.\n   So, the total number of eggs used per day "
    "is:\n   \\[\n   3 + 4 = 7 \\text{ eggs}\n   \\]\n3. **Calculate the number of eggs Janet sells at the farmers' "
    "market each day.**\n   Subtract the number of eggs used from the total number of eggs laid:\n   \\[\n   "
    "16 - 7 = 9 \\text{ eggs}\n   \\]\n4. **Determine how much money Janet makes from selling the eggs.**\n   She "
    "sells each egg for $2, so the total amount of money she makes is:\n   \\[\n   9 \\times 2 = 18 \\text{ "
    "dollars}\n   \\]\nTherefore, the amount of money Janet makes every day at the farmers' market is "
    "\\(\\boxed{18}\\).",
    "To find out how much Janet makes every day at the farmers' market, we need to follow these steps:\n1. Calculate "
    "the total number of eggs laid by the ducks: \n   - Janet's ducks lay 16 eggs per day.\n2. Calculate the total "
    "number of eggs consumed by Janet and used for baking:\n   - Janet eats 3 eggs for breakfast.\n   - She bakes 4 "
    "eggs for muffins.\n   - Total eggs used: 3 (breakfast) + 4 (baking) = 7 eggs.\n3. Calculate the remaining "
    "number of eggs for sale:\n   - Total eggs laid: 16\n   - Eggs used: 7\n   - Remaining eggs: 16 - 7 = 9 eggs\n"
    "4. Calculate the total amount of money made at the farmers' market:\n   - Price per egg: $2\n   - Number of "
    "eggs sold: 9\n   - Total money made: 9 * $2 = $18\nTherefore, Janet makes $\\boxed{18}$ dollars every day at "
    "the farmers' market.",
]


def _load(name: str, path: Path, args: argparse.Namespace, **params: object):
    import torch
    from transformers import AutoTokenizer

    import vcrd_core
    from vcrd_core import JudgeContext, VcrdError

    if not path.is_dir():
        raise VcrdError(f"{path} is not a directory; download the checkpoint first (this script downloads nothing)")
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}[args.dtype]
    judge = vcrd_core.create("judges", name, {"path": str(path), "attn_implementation": args.attn, **params})
    # the judge's own tokenizer stands in for the policy's: the vocabulary rule holds trivially
    judge.load(
        JudgeContext(
            tokenizer=AutoTokenizer.from_pretrained(str(path), local_files_only=True), device=args.device, dtype=dtype
        )
    )
    return judge


def _score_before(judge, ids: list[int], before: list[int]) -> list[float]:
    """Tree-score the tokens just before the given positions (each branch reads after the judge's suffix)."""
    import torch

    input_ids = torch.tensor([ids])
    mask = torch.ones_like(input_ids)
    score = torch.zeros_like(input_ids, dtype=torch.bool)
    score[0, [p - 1 for p in before]] = True
    actual, _ = judge.score_positions(input_ids, mask, input_ids, score)
    return [float(actual[0, p - 1]) for p in before]


def check_qwen(path: Path, args: argparse.Namespace) -> bool:
    judge = _load("prm_classifier", path, args, branch_suffix="<extra_0>")
    tok = judge.tokenizer
    messages = [
        {"role": "system", "content": QWEN_CARD["system"]},
        {"role": "user", "content": QWEN_CARD["query"]},
        {"role": "assistant", "content": "<extra_0>".join(QWEN_CARD["response"]) + "<extra_0>"},
    ]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    ids = tok.encode(text)
    sep = tok.encode("<extra_0>")[0]
    seps = [i for i, t in enumerate(ids) if t == sep]
    got = _score_before(judge, ids, seps)
    expected = QWEN_CARD["expected"]
    ok = len(got) == len(expected) and all(abs(g - e) <= args.tolerance for g, e in zip(got, expected, strict=False))
    print(f"Qwen2.5-Math-PRM  card: {expected}")
    print(f"Qwen2.5-Math-PRM  vcrd: {[round(g, 4) for g in got]}  -> {'OK' if ok else 'MISMATCH'}")
    return ok


def check_skywork(path: Path, args: argparse.Namespace) -> bool:
    import torch

    judge = _load("prm_value_head", path, args, branch_suffix="\n")
    tok = judge.tokenizer
    step_id = tok.encode("\n")[-1]
    ok = True
    for k, response in enumerate(SKYWORK_RESPONSES):
        # Skywork's prepare_input: bos + problem + "\n", then every step tokenized alone, each followed by "\n"
        ids = tok.encode((tok.bos_token or "") + SKYWORK_PROBLEM + "\n")
        flags = []
        for step in response.split("\n"):
            ids += (tok.encode(step) if step else []) + [step_id]
            flags.append(len(ids) - 1)
        with torch.inference_mode():
            hidden = judge.body(input_ids=torch.tensor([ids], device=judge.head["v_head.summary.weight"].device))
            reference = [float(r) for r in judge.head_scores(hidden.last_hidden_state[0, flags])]
        steps_with_text = [f for f, step in zip(flags, response.split("\n"), strict=True) if step]
        got = _score_before(judge, ids, steps_with_text)
        ref = [r for r, step in zip(reference, response.split("\n"), strict=True) if step]
        worst = max(abs(g - r) for g, r in zip(got, ref, strict=True))
        this_ok = worst <= args.tolerance
        ok &= this_ok
        print(f"Skywork PRM response {k}: step rewards (one full pass) {[round(r, 4) for r in ref]}")
        print(f"Skywork PRM response {k}: vcrd tree scores            {[round(g, 4) for g in got]}")
        print(f"  max |difference| = {worst:.2e} -> {'OK' if this_ok else 'MISMATCH'}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--qwen", type=Path, help="local directory of Qwen/Qwen2.5-Math-PRM-7B")
    parser.add_argument("--skywork", type=Path, help="local directory of Skywork/Skywork-o1-Open-PRM-Qwen-2.5-1.5B")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--dtype", choices=["bfloat16", "float32", "float16"], default="bfloat16")
    parser.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa")
    parser.add_argument("--tolerance", type=float, default=0.02)
    args = parser.parse_args(argv)
    if args.qwen is None and args.skywork is None:
        parser.error("give --qwen DIR and/or --skywork DIR (downloaded weights; this script downloads nothing)")
    import torch

    from vcrd_core import VcrdError

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    ok = True
    try:
        if args.qwen is not None:
            ok &= check_qwen(args.qwen, args)
        if args.skywork is not None:
            ok &= check_skywork(args.skywork, args)
    except VcrdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
