"""`compress eval --kernels` on a compressed 2:4 export of a random-weight Llama (GPU), with a meta block.

Usage: python -m benchmarks.eval_kernels --tokenizer DIR --text persuasion.txt --json benchmarks/results/eval-kernels-1b-h200.json
       python -m benchmarks.eval_kernels --tiny --json /tmp/tiny.json   # a small random model: a quick GPU check
Default shape: hidden 2048, MLP 8192, 16 layers, 16 heads / 4 KV heads, with the tokenizer's vocabulary
(the default model's, SmolLM2, unless --tokenizer). Runs `compress prune --method magnitude --pattern 2:4
--export compressed` and `compress eval --kernels` on it in child processes; writes the eval report.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks._meta import meta
from benchmarks._tiny import tiny_model


def compress(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", "from compress.cli import app; app()", *args],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"compress {' '.join(args)} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout)


def random_llama(where: Path, tokenizer_dir: str, args) -> str:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                         max_position_embeddings=max(4096, args.context), tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.float16)
    model.save_pretrained(where)
    tokenizer.save_pretrained(where)
    return str(where)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the default model's)")
    parser.add_argument("--text", default=None, help="held-out text file (default: Persuasion, the default text)")
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=8192)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--max-tokens", type=int, default=65536)
    parser.add_argument("--tiny", action="store_true", help="2 layers, hidden 256, the tests' tokenizer and text")
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    run_meta = meta()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.tiny:
            tokenizer, args.text = tiny_model(tmp / "tiny")
            args.layers, args.hidden, args.intermediate, args.heads, args.kv_heads = 2, 256, 512, 4, 2
            args.context, args.max_tokens = 64, 512
        else:
            from compress.defaults.assets import default_model_dir

            tokenizer = args.tokenizer or str(default_model_dir())
        model = random_llama(tmp / "random", tokenizer, args)
        text = ["--text", args.text] if args.text else []
        compress("prune", model, "--method", "magnitude", "--pattern", "2:4", "--device", "cuda", "--dtype", "float16",
                 "--export", "compressed", "--out", str(tmp / "pruned"), "--json", "-q", *text)
        report = compress("eval", str(tmp / "pruned"), "--kernels", "--device", "cuda", "--dtype", "float16", *text,
                          "--context", str(args.context), "--max-tokens", str(args.max_tokens), "--json", "-q")
    shape = {k: getattr(args, k) for k in ("layers", "hidden", "intermediate", "heads", "kv_heads")}
    result = {"meta": {**run_meta, "shape": shape}, **report}
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
