"""The start-up caches of an HF --load folder and raw --data-path files (real converter, real preprocessing):
the same bytes as the separate tools, reused while their sources are unchanged, rebuilt when the data file or
the HF weights change, one build for two launches at once, a build killed with SIGKILL rebuilt cleanly, and
an unwritable location refused in one line."""

from __future__ import annotations

import glob
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from mindspeed_llm.config.flags import ArgumentError, parse_args
from tests.helpers.launch import StartedScript
from tests.helpers.paths import REPO_ROOT

BASE = (
    "--num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 32 --train-iters 2 --lr 1e-3 "
    "--swiglu --disable-bias-linear --qk-layernorm --kv-channels 32 --make-vocab-size-divisible-by 1"
)


def write_rows(path, n: int = 40, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            f.write(
                json.dumps(
                    {"text": " ".join(f"w{rng.randrange(3, 128)}" for _ in range(rng.randrange(8, 30)))}
                )
                + "\n"
            )


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    from tests.helpers.tiny import make_hf_model

    return make_hf_model(tmp_path_factory.mktemp("model") / "hf", "qwen3", num_layers=2)


@pytest.fixture
def setup(hf_model, tmp_path):
    """A private copy of the HF folder (the weights cache goes inside it) and a raw jsonl."""
    import shutil

    hf = tmp_path / "hf"
    shutil.copytree(hf_model, hf)
    raw = tmp_path / "data" / "rows.jsonl"
    raw.parent.mkdir()
    write_rows(raw)
    return hf, raw


def flags(hf, raw, *extra: str) -> list[str]:
    return [
        *BASE.split(),
        "--load",
        str(hf),
        "--data-path",
        str(raw),
        "--handler-name",
        "GeneralPretrainHandler",
        "--append-eod",
        *extra,
    ]


def prepare(argv: list[str], capsys) -> str:
    from mindspeed_llm.from_hf.build import prepare_caches

    prepare_caches(parse_args(argv))
    return capsys.readouterr().out


_PREPARE = (
    "import sys\nimport mindspeed_llm\nmindspeed_llm.apply_base_patches()\n"
    "from mindspeed_llm.config.flags import parse_args\n"
    "from mindspeed_llm.from_hf.build import prepare_caches\n"
    "prepare_caches(parse_args(sys.argv[1:]))\n"
)


def _script(folder) -> str:
    """A launch's start-up (prepare_caches on its flags) as a script file: ``python SCRIPT.py FLAGS`` is
    forked from a preloaded interpreter (tests.helpers.launch), where ``python -c`` starts a fresh one."""
    path = folder / "prepare_caches.py"
    path.write_text(_PREPARE)
    return str(path)


def _env() -> dict:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def test_caches_equal_the_tools_output_are_reused_and_rebuilt_on_change(setup, tmp_path, capsys):
    from safetensors.torch import load_file  # noqa: F401  (the converted files are torch files: compare below)

    from mindspeed_llm.convert.cli import main as convert_main
    from mindspeed_llm.data.cli import main as preprocess_main
    from mindspeed_llm.runtime.checkpoint.layout import safe_torch_load

    hf, raw = setup
    argv = flags(hf, raw)
    out = prepare(argv, capsys)
    assert "HF -> Megatron checkpoint: building" in out and "preprocessed rows.jsonl: building" in out
    mg = hf / "megatron_cache_tp1pp1ep1"
    (prefix,) = glob.glob(str(raw.parent / "rows.mindspeed_cache-*" / "rows_text_document.bin"))

    # The separate tools, run as a user runs them, write the same bytes and tensors.
    assert (
        preprocess_main(
            [
                "--input",
                str(raw),
                "--output-prefix",
                str(tmp_path / "ref" / "rows"),
                "--tokenizer-name-or-path",
                str(hf),
                "--append-eod",
            ]
        )
        == 0
    )
    for ext in (".bin", ".idx"):
        ref = tmp_path / "ref" / f"rows_text_document{ext}"
        assert ref.read_bytes() == open(prefix[:-4] + ext, "rb").read()
    assert (
        convert_main(
            [
                "--load-model-type",
                "hf",
                "--save-model-type",
                "mg",
                "--load-dir",
                str(hf),
                "--save-dir",
                str(tmp_path / "ref_mg"),
                "--model-type-hf",
                "qwen3",
                "--no-progress",
            ]
        )
        == 0
    )
    ours = safe_torch_load(str(mg / "iter_0000001" / "mp_rank_00" / "model_optim_rng.pt"))["model"]
    theirs = safe_torch_load(str(tmp_path / "ref_mg" / "iter_0000001" / "mp_rank_00" / "model_optim_rng.pt"))[
        "model"
    ]
    assert ours.keys() == theirs.keys()
    for name, tensor in theirs.items():
        if hasattr(tensor, "dtype"):
            assert tensor.dtype == ours[name].dtype and bool((tensor == ours[name]).all()), name

    # A second launch reuses both; the marker says when it was built.
    built = json.loads((mg / ".mindspeed_llm_cache.json").read_text())["built"]
    out = prepare(argv, capsys)
    assert out.count("reusing") == 2 and "building" not in out
    # Editing the data file rebuilds the data only; new HF weights (a new mtime) rebuild the checkpoint only.
    with open(raw, "a", encoding="utf-8") as f:
        f.write(json.dumps({"text": "w5 w6 w7"}) + "\n")
    out = prepare(argv, capsys)
    assert "preprocessed rows.jsonl: rebuilding" in out and "HF -> Megatron checkpoint: reusing" in out
    st = os.stat(hf / "model.safetensors")
    os.utime(hf / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    out = prepare(argv, capsys)
    assert "HF -> Megatron checkpoint: rebuilding" in out and "preprocessed rows.jsonl: reusing" in out
    assert json.loads((mg / ".mindspeed_llm_cache.json").read_text())["built"] >= built
    assert not glob.glob(str(tmp_path / "**" / "*.staging-*"), recursive=True)


def test_two_launches_at_once_build_one_cache_and_sigkill_leaves_nothing_complete(setup, tmp_path, capsys):
    hf, raw = setup
    argv = flags(hf, raw)
    # SIGKILL in the middle of the data build: its staging folder is left, never taken for the cache.
    script = _script(tmp_path)
    victim = StartedScript(script, *argv)
    pattern = str(raw.parent / "rows.mindspeed_cache-*.staging-*")
    deadline = time.monotonic() + 120
    while not glob.glob(pattern) and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    assert glob.glob(pattern), "the build was not caught halfway"
    from mindspeed_llm.from_hf.cache import is_complete, read_marker

    assert not [d for d in glob.glob(str(raw.parent / "rows.mindspeed_cache-*")) if read_marker(d)]

    # Two launches at once: one builds, the other waits for it and reuses it; the killed build's leftovers go.
    first, second = (StartedScript(script, *argv, timeout=240) for _ in range(2))
    outs = [p.result() for p in (first, second)]
    assert all(p.returncode == 0 for p in outs), [p.stderr[-2000:] for p in outs]
    text = "".join(p.stdout for p in outs)
    assert (
        text.count("preprocessed rows.jsonl: building") + text.count("preprocessed rows.jsonl: rebuilding")
        == 1
    )
    assert text.count("HF -> Megatron checkpoint: building") == 0  # the killed launch had published it
    assert text.count("preprocessed rows.jsonl: reusing") == 1
    assert not glob.glob(pattern)
    (cache,) = [
        d
        for d in glob.glob(str(raw.parent / "rows.mindspeed_cache-*"))
        if os.path.isdir(d) and not d.endswith(".lock")
    ]
    assert is_complete(cache, read_marker(cache)["key"])


def test_an_unwritable_cache_location_is_one_line_and_nothing_is_left(setup, capsys):
    hf, raw = setup
    with pytest.raises(ArgumentError) as info:
        prepare(flags(hf, raw, "--mg-save-dir", "/sys/mindspeed_llm_cache"), capsys)
    message = str(info.value)
    assert (
        message.startswith("cannot write the cache /sys/mindspeed_llm_cache") and "--mg-save-dir" in message
    )
    assert "\n" not in message and not os.path.exists("/sys/mindspeed_llm_cache")
    # The data file the handler cannot read: one line naming it.
    raw.write_text("{not json\n")
    with pytest.raises(ArgumentError) as info:
        prepare(flags(hf, raw, "--mg-save-dir", str(hf.parent / "mg")), capsys)
    assert f"--data-path {raw}:" in str(info.value) and "\n" not in str(info.value)
    assert not glob.glob(str(raw.parent / "*staging*")) and not [
        d for d in glob.glob(str(raw.parent / "rows.mindspeed_cache-*")) if not d.endswith(".lock")
    ]


def test_a_rank_waiting_for_a_builder_that_never_publishes_stops_with_one_line(setup, monkeypatch, capsys):
    # Global rank 1 of a launch waits for rank 0's caches; here rank 0 never builds them (it died).
    hf, raw = setup
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    started = time.monotonic()
    with pytest.raises(ArgumentError) as info:
        prepare(flags(hf, raw, "--cache-wait-minutes", "0.01"), capsys)
    message = str(info.value)
    assert time.monotonic() - started < 30 and "\n" not in message
    assert message.startswith(f"HF -> Megatron checkpoint: waited 0.01 min for {hf}/megatron_cache_tp1pp1ep1")
    assert "--cache-wait-minutes" in message and "--no-shared-storage" in message
    assert not (hf / "megatron_cache_tp1pp1ep1").exists()  # it waited: nothing built, nothing written
    with pytest.raises(ArgumentError, match="--cache-wait-minutes 0: must be positive"):
        prepare(flags(hf, raw, "--cache-wait-minutes", "0"), capsys)


_REFUSALS = """
import sys, json
import mindspeed_llm
mindspeed_llm.apply_base_patches()
from mindspeed_llm.config.flags import ArgumentError, parse_args
from mindspeed_llm.from_hf.build import prepare_caches
for argv in json.loads(sys.argv[1]):
    try:
        prepare_caches(parse_args(argv))
        print("BUILT")
    except ArgumentError as exc:
        print("ERROR: " + str(exc))
"""


def _unprivileged_with_file_limit(limit: int):
    """A child that cannot write into a read-only folder even as root (the capabilities that bypass file
    modes leave its bounding set before exec) and whose writes stop at ``limit`` bytes (a full disk)."""

    def child():
        import ctypes
        import resource

        if os.geteuid() == 0:
            libc = ctypes.CDLL(None, use_errno=True)
            for cap in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
                if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                    raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return child


def test_a_read_only_or_full_cache_location_is_one_line_and_nothing_is_half_written(setup, tmp_path, capsys):
    hf, raw = setup
    size = os.path.getsize(hf / "model.safetensors")
    read_only_hf = tmp_path / "ro_hf"  # the HF folder in read-only storage: the default cache goes inside
    import shutil

    shutil.copytree(hf, read_only_hf)
    read_only_data = tmp_path / "ro_data"
    read_only_data.mkdir()
    shutil.copy(raw, read_only_data / "rows.jsonl")
    for folder in (read_only_hf, read_only_data):
        folder.chmod(0o555)
    prepare(flags(hf, raw), capsys)  # the model's cache in hf/, reused by the read-only data's launch
    full = tmp_path / "full"  # writable, but no more than size // 4 bytes fit in a file
    cases = [
        flags(read_only_hf, raw),
        flags(hf, read_only_data / "rows.jsonl"),
        flags(hf, raw, "--mg-save-dir", str(full / "mg")),
    ]
    proc = subprocess.run(
        [sys.executable, "-c", _REFUSALS, json.dumps(cases)],
        env=_env(),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        preexec_fn=_unprivileged_with_file_limit(max(size // 4, 8192)),
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith(("ERROR: ", "BUILT"))]
    assert len(lines) == 3, proc.stdout[-3000:] + proc.stderr[-3000:]
    read_only_model, read_only_rows, disk_full = lines
    model_cache = read_only_hf / "megatron_cache_tp1pp1ep1"
    assert read_only_model.startswith(f"ERROR: cannot write the cache {model_cache}")
    assert "permission denied" in read_only_model and "--mg-save-dir" in read_only_model
    assert read_only_rows.startswith(f"ERROR: cannot write the cache {read_only_data}/rows.mindspeed_cache-")
    assert "--output-prefix" in read_only_rows
    assert disk_full.startswith(f"ERROR: cannot write the cache {full / 'mg'} (File too large; the file-size")
    assert "nothing was left half-written: give --mg-save-dir" in disk_full
    # Nothing half-written: no cache folder, no staging, no probe left in any of them.
    assert sorted([*os.listdir(read_only_hf), "megatron_cache_tp1pp1ep1"]) == sorted(os.listdir(hf))
    assert os.listdir(read_only_data) == ["rows.jsonl"]
    assert not glob.glob(str(tmp_path / "**" / "*staging*"), recursive=True)
    assert not glob.glob(str(tmp_path / "**" / "*probe*"), recursive=True)
    assert not (full / "mg").exists()
