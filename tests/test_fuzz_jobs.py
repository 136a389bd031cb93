"""Real (non-dry) jobs of every command on tiny models, with odd input at every option: hypothesis-drawn values
and hand-picked ones (negative, 10**30, nan/inf, empty, `[x]`, rich markup, unicode, paths with brackets and
spaces, an out whose parent is a file, an out holding someone else's file).

Every case runs the console entry point in-process (compress.cli.entry.main, as the `compress` script does)
with its working directory in one tmp tree, WORLD, that also holds every input (the model, text, channel file,
graph data and checkpoint, recipes). Each case must:

- exit 0 or 2, never 1, never a traceback;
- on exit 2 print exactly one plain line on stderr ("error: ..."), nothing on stdout, no ANSI escapes, no rich
  markup eaten (a bracketed value that the message echoes appears as typed), and change nothing at all;
- on exit 0 write its requested output and change nothing else in WORLD (files by size, mtime, mode and
  content hash; directories by mode), the inputs included.

The helpers (snapshot, invoke, check, run_case) live here once; the tests per command only say what to run.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import signal
import stat
import string
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from tests.conftest import TEXT, save_tiny_model

CASE_SECONDS = 30  # a case still running after this fails (a huge value accepted as a work size)

# ---------------------------------------------------------------------------------------------- the world


@dataclass
class World:
    root: Path
    model: str  # relative to root, which is every case's working directory
    text: str
    channels: str  # a channel file with projected labels and a position prior
    graphs: str  # a packed .pt of 40 MUTAG graphs
    graph_checkpoint: str
    prune_recipe: str  # prune, attention (a channel file), eval
    llmc_recipe: str  # llm-compressor's SparseGPT recipe
    run: str  # a prune job's output folder, with its report.json
    count: int = 0

    def fresh(self, stem: str = "out") -> str:
        """A name in root that no case used before."""
        self.count += 1
        return f"{stem}-{self.count}"


class JobTimeout(BaseException):
    """A case ran past CASE_SECONDS (BaseException: the CLI's `except Exception` must not swallow it)."""


@dataclass
class Outcome:
    argv: list
    code: int
    stdout: str
    stderr: str

    def __str__(self):
        return f"argv={self.argv!r}\nexit {self.code}\nstdout={self.stdout[-2000:]!r}\nstderr={self.stderr[-3000:]!r}"


def invoke(argv: list[str], cwd: Path, seconds: float = CASE_SECONDS) -> Outcome:
    """The `compress` console script in-process, in `cwd`, stdout and stderr captured."""
    from compress.cli.entry import main

    stdout, stderr = io.StringIO(), io.StringIO()

    def alarm(signum, frame):
        raise JobTimeout(f"still running after {seconds} s: {argv!r}")

    previous_handler = signal.signal(signal.SIGALRM, alarm)
    previous_dir = os.getcwd()
    signal.setitimer(signal.ITIMER_REAL, seconds)
    code = 0
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                main(list(argv))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except Exception:  # what the console script would print as a traceback
                import traceback

                traceback.print_exc()
                code = 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        os.chdir(previous_dir)
    return Outcome(list(argv), code, stdout.getvalue(), stderr.getvalue())


_hashes: dict = {}


def _digest(path: Path, info: os.stat_result) -> str:
    key = (str(path), info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    if key not in _hashes:
        _hashes[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return _hashes[key]


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under root: files by mode, size, mtime and sha256; directories by mode; links by target."""
    entries = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            info = path.lstat()
            rel = path.relative_to(root).as_posix()
            if stat.S_ISLNK(info.st_mode):
                entries[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                entries[rel] = ("dir", info.st_mode)
            else:
                entries[rel] = ("file", info.st_mode, info.st_size, info.st_mtime_ns, _digest(path, info))
    return entries


def _inside(rel: str, outputs: list[str]) -> bool:
    """`rel` is an output, inside one, or a directory above one (created on the way to it)."""
    for out in outputs:
        if rel == out or rel.startswith(out + "/") or out.startswith(rel + "/"):
            return True
    return False


ANSI = re.compile(r"\x1b|\x9b")


def _markup_eaten(argv: list[str], message: str) -> list[str]:
    """Arguments holding rich markup whose markup-stripped form is in the message while the argument is not."""
    from rich.errors import MarkupError
    from rich.text import Text

    eaten = []
    for arg in argv:
        if "[" not in arg:
            continue
        try:
            plain = Text.from_markup(arg).plain
        except MarkupError:
            continue
        typed = (arg, repr(arg)[1:-1])
        if plain != arg and len(plain.strip()) >= 4 and plain in message and not any(t in message for t in typed):
            eaten.append(arg)
    return eaten


def _normal(root: Path, path: str) -> str | None:
    """`path` as typed (relative to root, the working directory) -> relative to root, or None outside it."""
    full = Path(os.path.normpath(root / os.path.expanduser(path)))
    try:
        return full.relative_to(root).as_posix()
    except ValueError:
        return None


def check(outcome: Outcome, before: dict, after: dict, outputs: list[str], expect: list[str]) -> None:
    """The contract of every case (see the module docstring). `outputs`: paths (relative to root) the case may
    write; `expect`: paths that must exist after exit 0."""
    text = outcome.stdout + outcome.stderr
    assert outcome.code in (0, 2), f"exit {outcome.code} (0 or 2 expected)\n{outcome}"
    assert "Traceback" not in text, f"a traceback\n{outcome}"
    if outcome.code == 2:
        assert outcome.stdout == "", f"exit 2 printed on stdout\n{outcome}"
        assert outcome.stderr.endswith("\n") and len(outcome.stderr.splitlines()) == 1, \
            f"exit 2 must print exactly one line\n{outcome}"
        assert outcome.stderr.startswith("error: "), f"exit 2 line does not start with 'error: '\n{outcome}"
        assert not ANSI.search(outcome.stderr), f"ANSI escapes in the error line\n{outcome}"
        eaten = _markup_eaten(outcome.argv, outcome.stderr)
        assert not eaten, f"rich markup of {eaten!r} eaten in the error line\n{outcome}"
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        assert not changed, f"exit 2 but these changed: {changed}\n{outcome}"
        return
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    stray = [k for k in changed if not _inside(k, outputs)]
    assert not stray, f"exit 0 but changed outside the requested output {outputs}: {stray}\n{outcome}"
    removed = [k for k in before if k not in after]
    assert not removed, f"exit 0 but these were removed: {removed}\n{outcome}"
    missing = [p for p in expect if p not in after]
    assert not missing, f"exit 0 but the requested output is missing: {missing}\n{outcome}"
    if "--json" in outcome.argv and outcome.argv[0] != "bench":  # bench's --json names a file
        json.loads(outcome.stdout)


def run_case(world: World, argv: list[str], outputs: list[str | None] = (), expect: list[str] = ()) -> Outcome:
    """Snapshot WORLD, run, snapshot, check; then remove what the case created (the world as it was)."""
    outputs = [o for o in outputs if o is not None]
    before = snapshot(world.root)
    outcome = invoke(argv, world.root)
    after = snapshot(world.root)
    try:
        check(outcome, before, after, outputs, list(expect))
    finally:
        for rel in sorted(set(after) - set(before), key=len):  # shortest first: a created dir takes its content
            path = world.root / rel
            if path.is_symlink() or path.is_file():
                path.unlink(missing_ok=True)
            elif path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
    return outcome


# ---------------------------------------------------------------------------------------------- values

HUGE = str(10**30)
NUMBERS = ["-1", "0", HUGE, "-" + HUGE, str(2**63), "nan", "-nan", "inf", "-inf", "1e309", "1.5", "0x10", "1_000"]
STRINGS = ["", " ", "[x]", "[bold]", "[bold]zqxv[/bold]", "zq[x]xv", "[/x]", "[red]zqxv", "é[ü]☃ 💥", "\u202e",
           "-", "--", "=", "'", '"', "\\", "2:4", "0:4", "4:2", "3:7", "*", "(", "a\tb"]
PATHS = ["", ".", "afile", "afile/out", "someone", "someone/notes.txt", "nowhere/deeper/x", "out [a] b é",
         "zq[bold]xv dir", "zq[bold]xv[/bold] dir", "~", "inputs"]
printable = string.ascii_letters + string.digits + string.punctuation + " []éü☃💥\u202e"
text = st.text(alphabet=printable, max_size=16)
numbers = st.one_of(st.integers(-10**6, 10**6).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr))
values = st.one_of(st.sampled_from(NUMBERS + STRINGS), text, numbers)
small = st.one_of(st.sampled_from(NUMBERS + STRINGS), st.integers(-3, 4).map(str))  # options that size the work
path_text = text.filter(lambda s: ".." not in s and not s.startswith(("/", "~")))
paths = st.one_of(st.sampled_from(PATHS), path_text)
HAND = {"number": ["-1", HUGE, "nan", "inf", ""], "string": ["", "[x]", "[bold]zqxv[/bold]", "é[ü]☃ 💥"],
        "path": ["", "afile/out", "someone", "out [a] b é", "zq[bold]xv dir"]}

JOBS = settings(max_examples=12, deadline=None, derandomize=True, database=None,
                phases=[Phase.explicit, Phase.generate],  # no shrinking: a failing job can take CASE_SECONDS
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.filter_too_much])


# values a job accepts, so that draws also reach real work with odd neighbours (the rest mostly exit 2)
CHOICES = {"--method": ["magnitude", "wanda", "sparsegpt", "ria"], "prune.method": ["magnitude", "sparsegpt", "ria"],
           "--pattern": ["2:4", "4:8", "1:4"], "prune.pattern": ["4:8", "1:2"], "--permute": ["heuristic", "learned", "global"],
           "--mask-rule": ["block", "row"], "--dtype": ["float32", "bfloat16", "float16"], "--device": ["cpu"],
           "--export": ["compressed", "hf"], "--split": ["random", "cluster", "coactivation", "carve"], "--router": ["analytic", "par"],
           "--active": ["0.25", "0.5", "0.75", "1"],
           "--scale": ["experts", "top-k"], "--train": ["router+experts", "router"], "--mode": ["q", "k", "qk"],
           "--channels": ["1/8", "2", "0.25"], "--tokens": ["1/2", "3", "top-p:0.9"], "--labels": ["projection"],
           "--weight-pattern": ["2:4", "1:4"], "--weight-method": ["wanda", "ria", "sparsegpt", "magnitude"],
           "--targets": ["mlp", "self_attn", "q_proj|up_proj"], "--ignore": ["down_proj", "layers\\.0\\."],
           "attention.mode": ["q", "k"], "attention.projection": ["true", "false"],
           "mask_structure": ["4:8", "0:0"], "targets": ["re:.*mlp.*"], "ignore": ["re:.*down_proj"],
           "--prompt": ["é ☃ [bold]x", "x" * 40]}
numbers_near = st.one_of(st.floats(0, 1).map(repr), st.integers(0, 64).map(str))
sizes_near = st.integers(0, 4).map(str)


def drawn(options: dict[str, str], odd: bool = True):
    """(option, value) with the value drawn for the option's kind (number, size (bounded), string, path), or one
    that it accepts; odd=False: mostly accepted values (the neighbours of an odd one)."""
    kinds = {"number": st.one_of(values, numbers_near), "size": st.one_of(small, sizes_near), "string": values,
             "path": paths}
    if not odd:
        kinds = {"number": numbers_near, "size": sizes_near, "string": values, "path": paths}

    def value(option):
        choices = [st.sampled_from(CHOICES[option])] if option in CHOICES else []
        return st.one_of(*choices, kinds[options[option]]) if odd or not choices else choices[0]

    return st.sampled_from(sorted(options)).flatmap(lambda o: st.tuples(st.just(o), value(o)))


def hand_picked(options: dict[str, str]) -> list:
    kind = {"size": "number"}
    return [(option, value) for option, k in sorted(options.items()) for value in HAND[kind.get(k, k)]]


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """2 cores shared with pytest: one intra-op thread is several times faster for these tiny jobs."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    import torch

    root = tmp_path_factory.mktemp("fuzz jobs")
    inputs = root / "inputs"
    inputs.mkdir()
    model = save_tiny_model(inputs / "model [in] é")
    text_path = inputs / "text [t] é.txt"
    text_path.write_text(TEXT)
    (root / "afile").write_text("a file, not a directory\n")
    (root / "someone").mkdir()
    (root / "someone" / "notes.txt").write_text("someone else's work\n")

    w = World(root=root, model=model.relative_to(root).as_posix(), text=text_path.relative_to(root).as_posix(),
              channels="inputs/ch [c].json", graphs="inputs/graphs [g].pt", graph_checkpoint="inputs/gps [g]",
              prune_recipe="inputs/prune-attention.yaml", llmc_recipe="inputs/llmc.yaml", run="inputs/run [r] é")
    outcome = invoke(["attention", "calibrate", w.model, "--out", w.channels, "--projection", "--text", w.text,
                      "--nsamples", "2", "--seqlen", "32", "--device", "cpu", "-q"], root)
    assert outcome.code == 0, str(outcome)

    from compress.graph.data import load_graphs, pack

    data = load_graphs("mutag")
    graphs = (data.train + data.valid + data.test)[:40]
    torch.save({"meta": {"encoder": data.encoder, "node_dims": data.node_dims, "edge_dims": data.edge_dims,
                         "num_classes": data.num_classes}, "graphs": pack(graphs)}, root / w.graphs)
    outcome = invoke(["graph", "train", "--data", w.graphs, "--epochs", "2", "--channels", "8", "--layers", "2",
                      "--heads", "2", "--device", "cpu", "--out", w.graph_checkpoint, "-q"], root)
    assert outcome.code == 0, str(outcome)

    (root / w.prune_recipe).write_text(
        f"calibrate: {{nsamples: 2, seqlen: 16, text: {json.dumps(w.text)}}}\n"
        "stages:\n"
        "  - prune: {method: wanda, pattern: '2:4'}\n"
        "  - attention: {channel_file: recipe-channels.json}\n"
        f"  - eval: {{context: 16, tokens: 48, text: {json.dumps(w.text)}}}\n")
    shutil.copyfile(Path(__file__).parent.parent / "recipes" / "llmcompressor-sparsegpt-2of4.yaml",
                    root / w.llmc_recipe)
    outcome = invoke(["prune", w.model, "--text", w.text, *CALIBRATION, "--device", "cpu", "--out", w.run, "-q"], root)
    assert outcome.code == 0, str(outcome)
    return w


# ---------------------------------------------------------------------------------------------- the commands
# Each command: its options by kind, and case(world, option, value) -> (argv, outputs, expect).

CALIBRATION = ["--nsamples", "2", "--seqlen", "16"]


def with_out(w: World, argv: list, option: str, value: str, stem: str = "out", suffix: str = "") -> tuple[list, str]:
    """argv + a fresh --out (unless the case fuzzes --out itself) + the fuzzed option; and the output typed."""
    out = w.fresh(stem) + suffix
    if option != "--out":
        argv = argv + ["--out", out]
    return argv + [option, value], value if option == "--out" else out


def checkpoint_out(w: World, out: str) -> tuple[list, list]:
    """(outputs, expect) of a command that writes a checkpoint directory with compression.json."""
    rel = _normal(w.root, out)
    return [rel], [f"{rel}/compression.json"]

PRUNE = {"--method": "string", "--pattern": "string", "--sparsity": "number", "--targets": "string",
         "--ignore": "string", "--text": "path", "--dataset": "string", "--text-field": "string", "--nsamples": "size",
         "--seqlen": "number", "--seed": "number", "--blocksize": "number", "--damp": "number",
         "--ria-alpha": "number", "--mask-rule": "string", "--calib-batch": "size", "--permute": "string",
         "--perm-blocks": "size", "--perm-steps": "size", "--perm-block-size": "number", "--perm-iters": "size",
         "--perm-tokens": "size", "--dtype": "string",
         "--device": "string", "--device-map": "string", "--max-memory": "string", "--offload-folder": "path",
         "--out": "path", "--export": "string", "--eval-text": "path", "--eval-dataset": "string",
         "--eval-context": "number", "--eval-tokens": "number"}


def prune_case(w: World, option: str, value: str):
    argv, out = with_out(w, ["prune", w.model, "--text", w.text, *CALIBRATION, "--device", "cpu", "--eval",
                             "--eval-text", w.text, "--eval-context", "16", "--eval-tokens", "48", "-q"], option, value)
    outputs, expect = checkpoint_out(w, out)
    return argv, outputs + ([_normal(w.root, value)] if option == "--offload-folder" else []), expect


EVAL = {"--text": "path", "--dataset": "string", "--text-field": "string", "--context": "number",
        "--max-tokens": "number", "--dtype": "string", "--device": "string", "--device-map": "string",
        "--max-memory": "string", "--offload-folder": "path", "model": "path"}


def eval_case(w: World, option: str, value: str):
    argv = ["eval", w.model if option != "model" else value, "--text", w.text, "--context", "16",
            "--max-tokens", "48", "--device", "cpu", "-q", "--json"]
    if option != "model":
        argv += [option, value]
    return argv, ([_normal(w.root, value)] if option == "--offload-folder" else []), []


DOUBLE_SPARSITY = {"--double-sparsity": "path", "--channels": "string", "--tokens": "string",
                   "--dense-layers": "number", "--label-bits": "number", "--sink": "number", "--recent": "number",
                   "--labels": "string", "--context": "number"}


def double_sparsity_case(w: World, option: str, value: str):
    argv = ["eval", w.model, "--text", w.text, "--context", "16", "--max-tokens", "48", "--device", "cpu", "-q",
            "--double-sparsity", w.channels, "--dense-layers", "1", "--position-prior", option, value]
    return argv, [], []


FACTORIZE = {"--experts": "size", "--top-k": "size", "--granularity": "size", "--split": "string",
             "--scale": "string", "--train": "string", "--expert-steps": "size", "--expert-lr": "number",
             "--expert-batch": "size", "--distill-top": "size", "--distill-weight": "number",
             "--lm-weight": "number", "--steps": "size", "--lr": "number", "--batch-tokens": "size",
             "--par-weight": "number", "--balance-weight": "number", "--text": "path", "--nsamples": "size",
             "--seqlen": "number", "--seed": "number", "--calib-batch": "size", "--dtype": "string",
             "--device": "string", "--out": "path", "--eval-context": "number", "--eval-tokens": "number",
             "--active": "number", "--shared": "size", "--router": "string", "--activity-top": "size"}


def factorize_case(w: World, option: str, value: str):
    argv, out = with_out(w, ["factorize", w.model, "--text", w.text, *CALIBRATION, "--device", "cpu", "--experts", "2",
                             "--top-k", "1", "--steps", "2", "--batch-tokens", "16", "--expert-steps", "2",
                             "--expert-batch", "2", "--distill-top", "8", "--eval", "--eval-text", w.text,
                             "--eval-context", "16", "--eval-tokens", "48", "-q"], option, value)
    return (argv, *checkpoint_out(w, out))


CALIBRATE = {"--mode": "string", "--text": "path", "--dataset": "string", "--text-field": "string",
             "--nsamples": "size", "--seqlen": "number", "--seed": "number", "--dtype": "string",
             "--device": "string", "--out": "path"}


def _channel_outputs(w: World, out: str) -> list:
    from compress.attention.calibration.projection import projection_path

    rel = _normal(w.root, out)
    return [rel, None if rel in (None, ".") else projection_path(rel).as_posix()]


def calibrate_case(w: World, option: str, value: str):
    argv, out = with_out(w, ["attention", "calibrate", w.model, "--text", w.text, *CALIBRATION, "--device", "cpu",
                             "--projection", "-q"], option, value, "channels", ".json")
    return argv, _channel_outputs(w, out), [_normal(w.root, out)]


GENERATE = {"--prompt": "string", "--prompt-file": "path", "--new-tokens": "size", "--channels": "string",
            "--tokens": "string", "--dense-layers": "number", "--label-bits": "number", "--labels": "string",
            "--dtype": "string", "--device": "string", "--double-sparsity": "path"}


def generate_case(w: World, option: str, value: str):
    argv = ["attention", "generate", w.model, "--double-sparsity", w.channels, "--prompt", "It is a truth",
            "--new-tokens", "3", "--dense-layers", "1", "--device", "cpu", "--json", option, value]
    return argv, [], []


RUN_SETS = {"model": "path", "out": "path", "dtype": "string", "device": "string", "calibrate.nsamples": "size",
            "calibrate.seqlen": "number", "calibrate.seed": "number", "calibrate.text": "path",
            "prune.method": "string", "prune.pattern": "string", "prune.sparsity": "number",
            "prune.targets": "string", "prune.damp": "number", "attention.channel_file": "path",
            "attention.mode": "string", "attention.projection": "string", "eval.context": "number",
            "eval.tokens": "number", "stages.0.ria_alpha": "number", "nope.x": "string"}


def run_case_argv(w: World, key: str, value: str):
    if key == "model" and yaml.safe_load(value or "''") is None:  # model=~ or null: the real default model
        value = f"./{value}"
    out, channels = w.fresh(), w.fresh("channels") + ".json"
    argv = ["run", w.prune_recipe, w.model, "-q"]
    if key != "out":
        argv += ["--out", out]
    if key != "attention.channel_file":
        argv += ["--set", f"attention.channel_file={channels}"]
    argv += ["--set", f"{key}={value}"]
    outputs, expect = checkpoint_out(w, value if key == "out" else out)
    return argv, outputs + _channel_outputs(w, value if key == "attention.channel_file" else channels), expect


LLMC_KEYS = {"sparsity": "number", "mask_structure": "string", "targets": "string", "ignore": "string",
             "dampening_frac": "number", "block_size": "size", "run_type": "string", "unknown_key": "string"}


def llmc_recipe(key: str, value: str) -> str:
    """The llm-compressor SparseGPT recipe with `key` set to `value` (a YAML string: quoted, as typed)."""
    fields = {"sparsity": "0.5", "mask_structure": '"2:4"', "targets": '["Linear"]', "ignore": '["re:.*lm_head"]',
              "dampening_frac": "0.01", "block_size": "128"}
    fields[key] = json.dumps(value) if key in ("mask_structure", "targets", "ignore", "run_type", "unknown_key") \
        else (value if re.fullmatch(r"[-+\w.]+", value) else json.dumps(value))
    run_type = fields.pop("run_type", "oneshot")
    body = "".join(f"      {k}: {v}\n" for k, v in fields.items())
    return f"sparsity_stage:\n  run_type: {run_type}\n  sparsity_modifiers:\n    SparseGPTModifier:\n{body}"


GRAPH_TRAIN = {"--data": "path", "--out": "path", "--epochs": "size", "--channels": "size", "--layers": "size",
               "--heads": "size", "--dropout": "number", "--batch-size": "size", "--lr": "number", "--seed": "number",
               "--split-seed": "number", "--device": "string"}


def graph_train_case(w: World, option: str, value: str):
    argv, out = with_out(w, ["graph", "train", "--data", w.graphs, "--epochs", "1", "--channels", "8", "--layers", "1",
                             "--heads", "2", "--device", "cpu", "-q"], option, value)
    return (argv, *checkpoint_out(w, out))


GRAPH_PRUNE = {"--tokens": "number", "--heads": "number", "--layers": "number", "--weights": "number",
               "--weight-pattern": "string", "--weight-method": "string", "--seed": "number", "--data": "path",
               "--calibration-graphs": "size", "--finetune-epochs": "size", "--device": "string", "--out": "path",
               "checkpoint": "path"}


def graph_prune_case(w: World, option: str, value: str):
    checkpoint = value if option == "checkpoint" else w.graph_checkpoint
    argv, out = with_out(w, ["graph", "prune", checkpoint, "--heads", "0.5", "--weights", "0.5",
                             "--calibration-graphs", "8", "--device", "cpu", "-q"], option, value)
    return (argv[:-2] if option == "checkpoint" else argv, *checkpoint_out(w, out))


BENCH = {"kernels --shape": "string", "kernels --tokens": "number", "kernels --dtype": "string",
         "kernels --json": "path", "attention --context": "number", "attention --batch": "number",
         "attention --shape": "string", "attention --dtype": "string", "attention --fraction": "number",
         "attention --json": "path"}


def bench_case(w: World, option: str, value: str):
    which, flag = option.split()
    return ["bench", which, flag, value], [], []  # on a CPU: refused, nothing written


REPORT = {"DIR": "path", "--out": "path"}


def report_case(w: World, option: str, value: str):
    """`compress report` of the world's run (twice: two columns), or of the fuzzed folder."""
    out = value if option == "--out" else w.fresh("report") + ".html"
    return ["report", *([value] if option == "DIR" else [w.run, w.run]), "--out", out], [_normal(w.root, out)], []


COMMANDS = {"prune": (PRUNE, prune_case), "eval": (EVAL, eval_case),
            "eval-double-sparsity": (DOUBLE_SPARSITY, double_sparsity_case), "factorize": (FACTORIZE, factorize_case),
            "attention-calibrate": (CALIBRATE, calibrate_case), "attention-generate": (GENERATE, generate_case),
            "run": (RUN_SETS, run_case_argv), "graph-train": (GRAPH_TRAIN, graph_train_case),
            "graph-prune": (GRAPH_PRUNE, graph_prune_case), "bench": (BENCH, bench_case),
            "report": (REPORT, report_case)}


OUTPUT_OPTIONS = {"--out", "out", "--offload-folder", "attention.channel_file", "model", "checkpoint"}


def run_command(w: World, command: str, option: str, value: str, extra: list = ()) -> Outcome:
    """One case; `extra`: more (option, value) pairs (no output options) added after the first."""
    argv, outputs, expect = COMMANDS[command][1](w, option, value)
    for key, more in extra:
        argv += ["--set", f"{key}={more}"] if command == "run" else [key, more]
    return run_case(w, argv, outputs, expect)


# ---------------------------------------------------------------------------------------------- baselines


BASELINE = {"prune": ("--method", "wanda"), "eval": ("--context", "16"),
            "eval-double-sparsity": ("--tokens", "1/4"), "factorize": ("--split", "cluster"),
            "attention-calibrate": ("--mode", "qk"), "attention-generate": ("--tokens", "1/4"),
            "run": ("prune.method", "sparsegpt"), "graph-train": ("--seed", "1"), "graph-prune": ("--seed", "1"),
            "report": ("DIR", "inputs/run [r] é")}


@pytest.mark.parametrize("command", sorted(BASELINE))
def test_a_valid_job_writes_its_output_and_nothing_else(world, command):
    """The harness sees real work: a valid job of each command exits 0 and writes what it was asked to."""
    outcome = run_command(world, command, *BASELINE[command])
    assert outcome.code == 0, str(outcome)


@pytest.mark.parametrize("command, option", [(c, o) for c in ("prune", "factorize", "graph-train", "graph-prune")
                                             for o in ["--out"]] + [("attention-calibrate", "--out"),
                                                                    ("run", "out")])
def test_outputs_at_paths_with_brackets_and_spaces(world, command, option):
    for value in ("out [a] b é", "zq[bold]xv [x] dir" if command != "attention-calibrate" else "zq[bold]xv é.json"):
        outcome = run_command(world, command, option, value)
        assert outcome.code == 0, str(outcome)


@pytest.mark.parametrize("command, option", [("prune", "--out"), ("factorize", "--out"), ("graph-train", "--out"),
                                             ("graph-prune", "--out"), ("attention-calibrate", "--out"),
                                             ("run", "out"), ("run", "attention.channel_file")])
@pytest.mark.parametrize("value", ["afile/out", "someone", "someone/notes.txt", "afile", ""])
def test_an_output_that_cannot_be_written_is_refused_before_work(world, command, option, value):
    """A parent that is a file, an existing directory holding someone else's file, a file, nothing: exit 2,
    one line, nothing changed (checked by run_case), whatever --force says."""
    outcome = run_command(world, command, option, value)
    assert outcome.code == 2, str(outcome)


@pytest.mark.parametrize("command", ["prune", "factorize", "graph-train", "graph-prune", "attention-calibrate",
                                     "run"])
def test_force_never_replaces_someone_elses_directory(world, command):
    options, case = COMMANDS[command]
    option = "out" if command == "run" else "--out"
    argv, outputs, expect = case(world, option, "someone/notes.txt" if command == "attention-calibrate" else "someone")
    outcome = run_case(world, argv + ["--force"], outputs, expect)
    assert outcome.code == 2, str(outcome)


# ---------------------------------------------------------------------------------------------- hand-picked

HAND_CASES = [(command, option, value) for command, (options, _) in sorted(COMMANDS.items())
              for option, value in hand_picked(options)]


@pytest.mark.parametrize("command, option, value", HAND_CASES,
                         ids=[f"{c} {o}={v!r}" for c, o, v in HAND_CASES])
def test_hand_picked_values(world, command, option, value):
    run_command(world, command, option, value)


@pytest.mark.parametrize("key, value", [(k, v) for k, kind in sorted(LLMC_KEYS.items())
                                        for v in HAND["number" if kind == "size" else kind]
                                        if kind != "path"])
def test_llmcompressor_recipe_hand_picked(world, key, value):
    llmc_job(world, key, value)


def llmc_job(w: World, key: str, value: str) -> Outcome:
    recipe = w.root / f"{w.fresh('llmc')}.yaml"
    recipe.write_text(llmc_recipe(key, value))
    out = w.fresh()
    try:
        argv = ["run", recipe.name, w.model, "--set", f"calibrate.text={w.text}", "--set", "calibrate.nsamples=2",
                "--set", "calibrate.seqlen=16", "--out", out, "-q"]
        return run_case(w, argv, [out], [f"{out}/compression.json"])
    finally:
        recipe.unlink()


# ---------------------------------------------------------------------------------------------- hypothesis


def _fuzz(command: str, examples: int):
    options = COMMANDS[command][0]

    more = {k: v for k, v in options.items() if k not in OUTPUT_OPTIONS and (k in CHOICES or v in ("number", "size"))}

    @settings(JOBS, max_examples=examples)
    @given(case=drawn(options), extra=st.lists(drawn(more, odd=False), max_size=0 if command in ("bench", "report") else 2))
    def test(world, case, extra):
        event(f"exit {run_command(world, command, *case, extra).code}")  # --hypothesis-show-statistics: how many ran

    test.__name__ = f"test_fuzz_{command.replace('-', '_')}"
    return test


test_fuzz_prune = _fuzz("prune", 60)
test_fuzz_eval = _fuzz("eval", 25)
test_fuzz_eval_double_sparsity = _fuzz("eval-double-sparsity", 30)
test_fuzz_factorize = _fuzz("factorize", 40)
test_fuzz_attention_calibrate = _fuzz("attention-calibrate", 25)
test_fuzz_attention_generate = _fuzz("attention-generate", 25)
test_fuzz_run = _fuzz("run", 40)
test_fuzz_graph_train = _fuzz("graph-train", 20)
test_fuzz_graph_prune = _fuzz("graph-prune", 20)
test_fuzz_bench = _fuzz("bench", 20)
test_fuzz_report = _fuzz("report", 20)


@settings(JOBS, max_examples=30)
@given(case=drawn(LLMC_KEYS))
def test_fuzz_llmcompressor_recipe(world, case):
    event(f"exit {llmc_job(world, *case).code}")


# ---------------------------------------------------------------------------------------------- found by fuzzing


def test_sparsegpt_with_no_damping_on_a_singular_hessian(world):
    """32 calibration tokens for 64 input channels: the Hessian is singular. --damp 0 used to fail with an
    internal error (the extra damping of the retries was a multiple of damp); it prunes now."""
    outcome = run_command(world, "prune", "--damp", "0", [("--method", "sparsegpt")])
    assert outcome.code == 0, str(outcome)


def test_a_hessian_that_cannot_be_factorised_is_bad_input():
    import torch

    from compress.errors import BadInput
    from compress.prune.sparsegpt import inverse_hessian_factor

    singular = torch.ones(8, 1) @ torch.ones(1, 8)
    chol, dead = inverse_hessian_factor(singular, 0.0)
    assert torch.isfinite(chol).all() and not dead.any()
    with pytest.raises(BadInput, match="not positive definite"):
        inverse_hessian_factor(torch.full((8, 8), float("nan")), 0.01)


def test_a_huge_dampening_is_bad_input(world):
    """llm-compressor's dampening_frac 5.6e294 (and --damp alike): the inverse of the damped Hessian underflowed
    and its Cholesky factorisation failed as an internal error."""
    outcome = llmc_job(world, "dampening_frac", "5.622736241185803e+294")
    assert outcome.code == 2 and "damp" in outcome.stderr, str(outcome)
    outcome = run_command(world, "prune", "--damp", "1e300", [("--method", "sparsegpt")])
    assert outcome.code == 2 and "--damp" in outcome.stderr, str(outcome)


@pytest.mark.parametrize("command, option", [("prune", "--text"), ("prune", "--eval-text"), ("prune", "--dataset"),
                                             ("eval", "--text"), ("factorize", "--text"),
                                             ("attention-calibrate", "--text"), ("run", "calibrate.text"),
                                             ("run", "eval.text")])
@pytest.mark.parametrize("value", ["", " "])
def test_an_empty_text_source_is_refused(world, command, option, value):
    """--text "" calibrated on the default Austen text without a word (a typo'd variable, say)."""
    outcome = run_command(world, command, option, value)
    assert outcome.code == 2 and "is empty" in outcome.stderr, str(outcome)


# ---------------------------------------------------------------------------------------------- the harness itself


def test_the_checks_catch_what_they_promise(tmp_path):
    """check() fails on each kind of violation (so the cases above cannot pass on a command that misbehaves)."""
    (tmp_path / "input").write_text("x")
    before = snapshot(tmp_path)
    ok = Outcome(["prune", "[bold]zqxv"], 2, "", "error: bad value [bold]zqxv\n")
    check(ok, before, before, [], [])
    bad = [Outcome(["x"], 1, "", "internal error: boom\n"),
           Outcome(["x"], 2, "", "error: one\nerror: two\n"),
           Outcome(["x"], 2, "noise", "error: one\n"),
           Outcome(["x"], 2, "", "\x1b[31merror:\x1b[0m one\n"),
           Outcome(["x"], 2, "", "Traceback (most recent call last):\n"),
           Outcome(["[bold]zqxv"], 2, "", "error: bad value zqxv\n")]
    for outcome in bad:
        with pytest.raises(AssertionError):
            check(outcome, before, before, [], [])
    (tmp_path / "input").write_text("y")  # same size, new content
    changed = snapshot(tmp_path)
    with pytest.raises(AssertionError, match="changed"):
        check(Outcome(["x"], 2, "", "error: e\n"), before, changed, [], [])
    with pytest.raises(AssertionError, match="outside the requested output"):
        check(Outcome(["x"], 0, "", ""), before, changed, ["out"], [])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "compression.json").write_text("{}")
    wrote = snapshot(tmp_path)
    check(Outcome(["x"], 0, "", ""), changed, wrote, ["out"], ["out/compression.json"])
    with pytest.raises(AssertionError, match="missing"):
        check(Outcome(["x"], 0, "", ""), changed, changed, ["out"], ["out/compression.json"])
    os.chmod(tmp_path / "input", 0o600)  # a mode change is a change
    with pytest.raises(AssertionError, match="outside"):
        check(Outcome(["x"], 0, "", ""), wrote, snapshot(tmp_path), ["out"], [])
