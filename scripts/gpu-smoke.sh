#!/usr/bin/env bash
# GPU smoke test of the language methods at LLM scale, on one H100 / H200: at most ~8 minutes by construction
# (model writing + 3 runs of at most SMOKE_RUN_TIMEOUT = 120 s each; not yet timed on a GPU).
#
# Writes a random ~1B-parameter Llama (hidden 2048, 16 layers, 16 heads, MLP 5504, a 32 000-row vocabulary whose
# first rows the word-level authors-corpus tokenizer fills; safetensors in bf16) and forget / retain JSONL files
# from the authors corpus into a temporary directory, then runs
#
#   obliviate run --task hf --set model=... --set forget=... --set retain=... --set dtype=bf16 \
#       --method npo --set precision=bf16-mixed --set grad_checkpointing=true --set max_steps=N \
#       --device cuda --no-oracle --no-cache --quiet --json ...
#
# (1b defaults: N = 10 steps of 8 sequences × 512 tokens), then rmu (max_num_batches=N) and guard the same way,
# and prints each report's lm_run block (precision, reference, steps, peak_memory_bytes on CUDA) and the training
# throughput as a table. Exits non-zero when any run fails (the others still run).
#
#   scripts/gpu-smoke.sh                      # on a GPU machine
#   SMOKE_SIZE=tiny scripts/gpu-smoke.sh      # a tiny model on the CPU (a check of the script itself, ~1 min)
#
# Environment: SMOKE_SIZE=tiny|1b (default 1b), SMOKE_DEVICE (default cuda; cpu for tiny), SMOKE_STEPS,
# SMOKE_BATCH, SMOKE_SEQ, SMOKE_RUN_TIMEOUT (seconds per obliviate run), SMOKE_KEEP=1 keeps the work directory.
set -euo pipefail

cd "$(dirname "$0")/.."
if [[ -x .venv/bin/python ]]; then PY="$PWD/.venv/bin/python"; else PY="$(command -v python3)"; fi
SIZE="${SMOKE_SIZE:-1b}"
case "$SIZE" in
  tiny) DEVICE="${SMOKE_DEVICE:-cpu}"; STEPS="${SMOKE_STEPS:-2}"; BATCH="${SMOKE_BATCH:-4}"; SEQ="${SMOKE_SEQ:-64}"
        RUN_TIMEOUT="${SMOKE_RUN_TIMEOUT:-240}" ;;
  1b)   DEVICE="${SMOKE_DEVICE:-cuda}"; STEPS="${SMOKE_STEPS:-10}"; BATCH="${SMOKE_BATCH:-8}"; SEQ="${SMOKE_SEQ:-512}"
        RUN_TIMEOUT="${SMOKE_RUN_TIMEOUT:-120}" ;;
  *) echo "SMOKE_SIZE must be tiny or 1b, got '$SIZE'" >&2; exit 2 ;;
esac
WORK="$(mktemp -d "${TMPDIR:-/tmp}/obliviate-gpu-smoke.XXXXXX")"
if [[ "${SMOKE_KEEP:-0}" != 1 ]]; then trap 'rm -rf "$WORK"' EXIT; fi
export OBLIVIATE_QUIET=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [[ -d src/obliviate ]]; then export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"; fi

echo "gpu-smoke: size $SIZE, device $DEVICE, $STEPS steps of $BATCH x $SEQ tokens, python $PY, work $WORK"
"$PY" - "$WORK" "$SIZE" "$SEQ" "$BATCH" <<'PYEOF'
"""The model directory and the forget / retain files."""
import json
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from obliviate.models.tiny_lm import corpus_tokenizer, save_hf_dir
from obliviate.tasks.authors import generate_corpus
from transformers.utils import logging as hf_logging

hf_logging.disable_progress_bar()

work, size, seq, batch = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
start = time.perf_counter()
data = generate_corpus(200, 20, 0)
tok = corpus_tokenizer(data)
if size == "tiny":
    dims = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                vocab_size=len(tok))
else:
    dims = dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=16, intermediate_size=5504,
                vocab_size=32000)
assert len(tok) <= dims["vocab_size"]
config = LlamaConfig(**dims, num_key_value_heads=dims["num_attention_heads"], max_position_embeddings=2048,
                     tie_word_embeddings=False, attention_dropout=0.0, bos_token_id=tok.bos_token_id,
                     eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
device = "cuda" if size != "tiny" and torch.cuda.is_available() else "cpu"  # random init is fast on the GPU
torch.manual_seed(0)
with torch.device(device):
    model = LlamaForCausalLM(config)
model = model.to(torch.bfloat16).cpu()
save_hf_dir(model, tok, work / "model")
n_params = sum(p.numel() for p in model.parameters())
del model

# records of exactly seq − 2 words (BOS + words + EOS = seq tokens), cut from the biographies' word stream;
# 2 × batch per side (the methods cycle through them for the step budget)
ids = []
for r in data.train:
    ids += tok(" " + r.text, add_special_tokens=False)["input_ids"]
n, need, texts, pos = seq - 2, 4 * batch, [], 0
while len(texts) < need:
    if pos + n > len(ids):
        pos = 0
    text = tok.decode(ids[pos:pos + n])
    pos += n
    if len(tok(text, add_special_tokens=False)["input_ids"]) == n:
        texts.append(text)
for role, part in (("forget", texts[:need // 2]), ("retain", texts[need // 2:])):
    (work / f"{role}.jsonl").write_text("".join(json.dumps({"text": t, "subject": f"{role}-{i}"}) + "\n"
                                                for i, t in enumerate(part)))
print(f"model: LlamaForCausalLM {dims}, {n_params:,} parameters ({2 * n_params / 2**30:.2f} GiB in bf16); "
      f"{need // 2} forget + {need // 2} retain records of {seq} tokens; written in {time.perf_counter() - start:.0f} s")
(work / "params.txt").write_text(str(n_params))
PYEOF

TASK=(--task hf --set "model=$WORK/model" --set "forget=$WORK/forget.jsonl" --set "retain=$WORK/retain.jsonl"
      --set dtype=bf16 --set "max_length=$SEQ" --set "eval_batch_size=$BATCH")
TRAIN=(--set precision=bf16-mixed --set grad_checkpointing=true --set "batch_size=$BATCH")
declare -A EXTRA=(
  [npo]="--set max_steps=$STEPS"
  [rmu]="--set max_num_batches=$STEPS"
  [guard]=""
)
FAILED=()
for METHOD in npo rmu guard; do
  if [[ "$METHOD" == guard ]]; then SETTINGS=(); else SETTINGS=("${TRAIN[@]}"); fi
  # shellcheck disable=SC2206
  MORE=(${EXTRA[$METHOD]})
  echo "--- $METHOD"
  T0=$SECONDS
  if timeout --kill-after=10 "$RUN_TIMEOUT" "$PY" -m obliviate run "${TASK[@]}" --method "$METHOD" \
      ${SETTINGS[@]+"${SETTINGS[@]}"} ${MORE[@]+"${MORE[@]}"} --device "$DEVICE" --no-oracle --no-cache --quiet \
      --json "$WORK/$METHOD.json" > "$WORK/$METHOD.log" 2>&1; then
    echo "$METHOD: ok in $((SECONDS - T0)) s (the whole obliviate process)"
  else
    rc=$?
    echo "$METHOD: FAILED (exit $rc$([[ $rc == 124 ]] && echo ", timed out after $RUN_TIMEOUT s")); last lines:"
    tail -n 15 "$WORK/$METHOD.log" | sed 's/^/    /'
    FAILED+=("$METHOD")
  fi
done

"$PY" - "$WORK" "$SEQ" <<'PYEOF'
"""Each report's lm_run block and the throughput, as a table."""
import json
import sys
from pathlib import Path

work, seq = Path(sys.argv[1]), int(sys.argv[2])
rows = []
for method in ("npo", "rmu", "guard"):
    path = work / f"{method}.json"
    if not path.is_file():
        rows.append((method, "no report", "", "", "", "", "", ""))
        continue
    rep = json.loads(path.read_text())
    run = rep.get("lm_run") or {}
    secs = (rep.get("time_s") or {}).get("unlearn")
    steps, batch = run.get("steps"), run.get("batch_size")
    # sequences processed per step: the forget batch, and RMU's retain batch as well (its frozen-reference
    # pass on the retain batch is not counted)
    per_step = (2 if method == "rmu" else 1) * (batch or 0)
    tokens = steps * per_step * seq if steps and batch else None
    peak = run.get("peak_memory_bytes")
    rows.append((method, run.get("precision", "–"), run.get("reference", "–"),
                 f"{run.get('trainable_parameters', 0):,}" if run else "–", str(steps or "–"),
                 "–" if peak is None else f"{peak / 2**30:.2f}", "–" if secs is None else f"{secs:.1f}",
                 f"{tokens / secs:,.0f}" if tokens and secs else "–"))
    if run:
        print(f"{method} lm_run: {json.dumps(run)}")
    elif "guard" in rep:
        g = {f"{k}.{k2}": v2 for k, v in rep["guard"].items() if isinstance(v, dict)
             for k2, v2 in v.items() if isinstance(v2, (int, float, str, bool))}
        print(f"{method}: no lm_run (GUARD trains a prompt detector, not the weights): {json.dumps(g)[:500]}")
head = ("method", "precision", "reference", "trainable", "steps", "peak GiB", "unlearn s", "tokens/s")
widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
for r in [head, tuple("-" * w for w in widths), *rows]:
    print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)))
print(f"(params {int((work / 'params.txt').read_text()):,}; tokens/s = steps × sequences per step × {seq} tokens "
      "/ the report's time_s.unlearn, which includes setup such as NPO's reference pass)")
PYEOF

if (( ${#FAILED[@]} )); then
  echo "gpu-smoke: FAILED: ${FAILED[*]}" >&2
  exit 1
fi
echo "gpu-smoke: all runs passed"
