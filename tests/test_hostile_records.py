"""Hostile run records, samples files and store folders: each case mutates a valid tree, runs
``claimbench ingest`` as a user would (a subprocess), and expects exit code 2, one line naming the
file, key and value, and the store and the runs folder byte-identical to before."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from claimbench import cli
from claimbench.store import ingest
from tests.helpers import write_claims, write_record

N = 100  # documents per task: the helper records n=100 for every metric

CLAIM = {
    "id": "a_beats_b",
    "statement": "a has higher acc than b, paired per document",
    "scales": ["tiny"],
    "check": {
        "compare": {
            "lhs": {"variant": "a", "task": "t", "metric": "acc"},
            "op": ">",
            "rhs": {"variant": "b", "task": "t", "metric": "acc"},
        }
    },
}


def _samples(acc: float) -> list[dict]:
    k = round(acc * N)
    return [
        {
            "task": "t",
            "doc_id": i,
            "prompt": f"q{i}",
            "response": "r",
            "metrics": {"acc": float(i < k)},
        }
        for i in range(N)
    ]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A valid tree (two paired runs, a curve, a claims file) and its store."""
    root = tmp_path_factory.mktemp("hostile")
    runs = root / "runs"
    for variant, acc in (("a", 0.9), ("b", 0.5)):
        path = write_record(runs, variant, [("t", "acc", acc, 0.03)], samples=_samples(acc))
        rec = json.loads(path.read_text())
        rec["series"] = [{"name": "loss", "x": [0, 1, 2], "y": [3.0, 2.0, 1.0]}]
        path.write_text(json.dumps(rec))
    write_claims(root / "methods", "demo", [CLAIM])
    counts = ingest(runs, root / "db" / "store.duckdb", root / "methods")
    assert counts["runs"] == 2 and counts["samples"] == 2 * N
    return root


@pytest.fixture
def tree(base, tmp_path) -> Path:
    shutil.copytree(base, tmp_path / "t")
    return tmp_path / "t"


def snapshot(root: Path) -> dict[str, str]:
    """Every file under the runs and store folders (symlinks as their target), by content hash."""
    out = {}
    for folder in (root / "runs", root / "db"):
        for p in sorted(folder.rglob("*")):
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_file():
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_ingest(root: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "claimbench.cli", "ingest", "--runs", str(root / "runs")]
    cmd += ["--db", str(root / "db" / "store.duckdb"), "--methods", str(root / "methods")]
    # the tree's own (absent) published folder: the repository's exports must not join the store
    cmd += ["--published", str(root / "published")]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


# ----------------------------------------------------------------------------- mutations
A = "runs/tiny/demo/a/lm_eval.json"
AS = "runs/tiny/demo/a/lm_eval.samples.jsonl"


def edit(rel: str, fn):
    """A mutation of one record: ``fn(record)`` changes the parsed JSON in place."""

    def apply(root: Path) -> None:
        rec = json.loads((root / rel).read_text())
        fn(rec)
        (root / rel).write_text(json.dumps(rec))  # NaN / Infinity written as Python does

    return apply


def edit_line(k: int, fn):
    """A mutation of line ``k`` (1-based) of run a's samples file."""

    def apply(root: Path) -> None:
        lines = (root / AS).read_text().splitlines()
        row = json.loads(lines[k - 1])
        lines[k - 1] = fn(row) if callable(fn) else fn
        if isinstance(lines[k - 1], dict):
            lines[k - 1] = json.dumps(lines[k - 1])
        (root / AS).write_text("\n".join(lines) + "\n")

    return apply


def setm(**kw):
    return lambda r: r["metrics"][0].update(kw)


def truncate(keep: int):
    def apply(root: Path) -> None:
        lines = (root / AS).read_text().splitlines(keepends=True)
        (root / AS).write_text("".join(lines[:keep]))  # cut at a line boundary

    return apply


def pad(root: Path) -> None:
    with open(root / AS, "a") as f:
        f.write(json.dumps({"task": "t", "doc_id": N, "metrics": {"acc": 1.0}}) + "\n")


def symlink_outside(root: Path) -> None:
    secret = root / "secret.jsonl"
    secret.write_text((root / AS).read_text())
    (root / AS).unlink()
    (root / AS).symlink_to(secret)


def move(dst: str, fn=None):
    """Move run a's record (and its samples) to another folder, optionally editing it."""

    def apply(root: Path) -> None:
        d = root / dst
        d.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(root / AS, d.parent / "lm_eval.samples.jsonl")
        shutil.move(root / A, d)
        if fn:
            edit(str(d.relative_to(root)), fn)(root)

    return apply


def copy_as(variant: str):
    """A second copy of run a under another variant folder, same run_id."""

    def apply(root: Path) -> None:
        d = root / f"runs/tiny/demo/{variant}"
        shutil.copytree(root / A.rsplit("/", 1)[0], d)
        edit(f"runs/tiny/demo/{variant}/lm_eval.json", lambda r: r.update(variant=variant))(root)

    return apply


def write_bytes(rel: str, data: bytes):
    def apply(root: Path) -> None:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)

    return apply


NAN = float("nan")
INF = float("inf")
# (id, mutation, file the line must name, regex the rest of the line must match)
# fmt: off
CASES = [
    # paths taken from data
    ("samples_absolute", edit(A, lambda r: r.update(samples="/etc/passwd")), A,
     r'samples: "/etc/passwd": must be the bare name of a \.jsonl file beside the record'),
    ("samples_dotdot", edit(A, lambda r: r.update(samples="../b/lm_eval.samples.jsonl")), A,
     r'samples: "\.\./b/lm_eval\.samples\.jsonl": must be the bare name'),
    ("samples_subfolder", edit(A, lambda r: r.update(samples="x/lm_eval.samples.jsonl")), A,
     r"samples: .*must be the bare name"),
    ("samples_not_a_string", edit(A, lambda r: r.update(samples=["a.jsonl"])), A,
     r'samples: \["a\.jsonl"\]: must be a file name or null'),
    ("samples_missing", edit(A, lambda r: r.update(samples="gone.samples.jsonl")), A,
     r'samples: "gone\.samples\.jsonl": file not found beside the record'),
    ("samples_symlink", symlink_outside, A,
     r'samples: "lm_eval\.samples\.jsonl": is a symbolic link beside the record'),
    # values the contract does not allow
    ("stderr_nan", edit(A, setm(stderr=NAN)), A, r"metrics\[0\]\.stderr: NaN: not a finite"),
    ("stderr_inf", edit(A, setm(stderr=INF)), A, r"metrics\[0\]\.stderr: Infinity: not a finite"),
    ("stderr_negative", edit(A, setm(stderr=-0.1)), A,
     r"metrics\[0\]\.stderr: -0\.1: must be >= 0"),
    ("value_string", edit(A, setm(value="high")), A,
     r'metrics\[0\]\.value: "high": has type str, expected int or float'),
    ("value_bool", edit(A, setm(value=True)), A, r"metrics\[0\]\.value: true: has type bool"),
    ("n_float", edit(A, setm(n=100.0)), A, r"metrics\[0\]\.n: 100\.0: has type float"),
    ("n_negative", edit(A, setm(n=-1)), A, r"metrics\[0\]\.n: -1: must be >= 0"),
    ("n_huge", edit(A, setm(n=2**64)), A,
     r"metrics\[0\]\.n: 18446744073709551616: out of range"),
    ("seed_2_63", edit(A, lambda r: r.update(seed=2**63)), A,
     r"seed: 9223372036854775808: out of range \(the store holds \|v\| < 2\*\*63\)"),
    ("seed_float", edit(A, lambda r: r.update(seed=1.0e30)), A,
     r"seed: 1e\+30: key 'seed' has type float, expected int"),
    ("series_nan", edit(A, lambda r: r["series"][0]["y"].__setitem__(1, NAN)), A,
     r"series\[0\]\.y\[1\]: NaN: not a finite number"),
    ("series_string", edit(A, lambda r: r["series"][0]["x"].__setitem__(0, "0")), A,
     r'series\[0\]\.x\[0\]: "0": must be a number'),
    ("config_inf", edit(A, lambda r: r["config"].update(lr=-INF)), A,
     r"config\.lr: -Infinity: not a finite number"),
    ("wall_s_string", edit(A, lambda r: r["provenance"].update(wall_s="1s")), A,
     r'provenance\.wall_s: "1s": has type str'),
    ("metric_not_object", edit(A, lambda r: r["metrics"].append("acc=1")), A,
     r'metrics\[1\]: "acc=1": must be an object'),
    ("task_hash_number", edit(A, lambda r: r["task_hashes"].update(t=7)), A,
     r"task_hashes\.t: 7: must be a string"),
    # sample rows
    ("sample_doc_id_string", edit_line(3, lambda r: dict(r, doc_id="2")), AS,
     r'line 3: doc_id: "2": must be an integer or null'),
    ("sample_doc_id_huge", edit_line(3, lambda r: dict(r, doc_id=-(2**63))), AS,
     r"line 3: doc_id: -9223372036854775808: out of range"),
    ("sample_score_nan", edit_line(5, lambda r: dict(r, metrics={"acc": NAN})), AS,
     r"line 5: metrics\.acc: NaN: not a finite number"),
    ("sample_score_string", edit_line(5, lambda r: dict(r, metrics={"acc": "1"})), AS,
     r'line 5: metrics\.acc: "1": must be a number'),
    ("sample_pair_of_three", edit_line(5, lambda r: dict(r, metrics={"acc": [1, 2, 3]})), AS,
     r"line 5: metrics\.acc: \[1, 2, 3\]: a weighted score must be a \[value, weight\] pair"),
    ("sample_prompt_object", edit_line(2, lambda r: dict(r, prompt={"x": 1})), AS,
     r'line 2: prompt: \{"x": 1\}: must be a string or null'),
    ("sample_no_task", edit_line(2, lambda r: {k: v for k, v in r.items() if k != "task"}), AS,
     r"line 2: task: \(missing\): must be a non-empty string"),
    ("sample_not_json", edit_line(7, '{"task": "t", "doc_id": 6,'), AS,
     r"line 7: \(line\): .*not valid JSON"),
    ("sample_doc_repeated", edit_line(4, lambda r: dict(r, doc_id=0)), AS,
     r"line 4: doc_id: 0: repeats a document of task 't'"),
    # silent acceptance that would change a verdict
    ("samples_truncated", truncate(N - 10), AS,
     r"t\.acc: 90 rows: expected 100 for task 't' \(metrics\[0\]\.n of the record\); "
     r"a truncated or padded samples file"),
    ("samples_padded", pad, AS, r"t\.acc: 101 rows: expected 100 for task 't'"),
    ("paper_unknown", move("runs/tiny/ghost/a/lm_eval.json", lambda r: r.update(paper="ghost")),
     "runs/tiny/ghost/a/lm_eval.json", r'paper: "ghost": unknown paper \(known: demo;'),
    ("paper_not_its_folder", edit(A, lambda r: r.update(paper="other")), A,
     r"paper: \"other\": does not match the record's path \('demo' in "),
    ("variant_not_its_folder", move("runs/tiny/demo/c/lm_eval.json"),
     "runs/tiny/demo/c/lm_eval.json", r"variant: \"a\": does not match the record's folder 'c'"),
    ("variant_seed_not_its_folder", move("runs/tiny/demo/x-a-s1/lm_eval.json"),
     "runs/tiny/demo/x-a-s1/lm_eval.json",
     r"variant: \"a\": does not match the record's folder 'x-a-s1' .*record's seed 0"),
    ("suite_not_its_file", move("runs/tiny/demo/a/retrieval.json"),
     "runs/tiny/demo/a/retrieval.json", r"suite: \"lm_eval\": does not match the record's path"),
    ("scale_not_its_folder", move("runs/small/demo/a/lm_eval.json"),
     "runs/small/demo/a/lm_eval.json", r"scale: \"tiny\": does not match the record's path"),
    ("record_too_shallow", move("runs/tiny/a.json"), "runs/tiny/a.json",
     r'\(location\): "tiny/a\.json": a run record must be at <runs>/<scale>/<paper>/'),
    ("run_id_duplicate", copy_as("a2"), "runs/tiny/demo/a2/lm_eval.json",
     r'run_id: "[0-9a-f]+": duplicates .*/runs/tiny/demo/a/lm_eval\.json'),
    # files that are not records at all
    ("record_is_a_list", write_bytes("runs/tiny/demo/c/lm_eval.json", b"[1, 2]"),
     "runs/tiny/demo/c/lm_eval.json", r"\(record\): \[1, 2\]: a run record must be a JSON object"),
    ("record_not_utf8", write_bytes(A, b"\xff\xfe{}"), A,
     r"\(file\): .*can't decode.*: cannot read run record"),
    ("record_truncated", lambda root: (root / A).write_text((root / A).read_text()[:200]), A,
     r"\(line \d+, column \d+\): .*: corrupted or truncated run record"),
]
# fmt: on


@pytest.mark.parametrize(
    "mutate, where, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_hostile_input_is_one_line_and_changes_nothing(tree, mutate, where, message):
    mutate(tree)
    before = snapshot(tree)
    proc = run_ingest(tree)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and f"{tree / where}: " in lines[0], lines[0]
    rest = lines[0].split(f"{tree / where}: ", 1)[1]
    assert re.match(message, rest), rest
    assert snapshot(tree) == before  # the store and every record and samples file untouched


def test_the_valid_tree_ingests_and_pairs(tree):
    """The unmutated tree passes, and the claim compares the two runs paired per document."""
    proc = run_ingest(tree)
    assert proc.returncode == 0, proc.stderr
    con = duckdb.connect(str(tree / "db" / "store.duckdb"), read_only=True)
    try:
        status, detail = con.execute("SELECT status, detail FROM claim_checks").fetchone()
    finally:
        con.close()
    # paired per document ("paired over N docs", or McNemar's exact test over N docs)
    assert status == "held" and f"over {N} docs" in detail and "unpaired" not in detail, detail


def test_stale_temporary_and_wal_files_are_cleaned(tree):
    db = tree / "db" / "store.duckdb"
    stale = [
        db.parent / f".{db.name}.k1ll3d.tmp",
        db.parent / f".{db.name}.k1ll3d.tmp.wal",
        db.parent / f".{db.name}.0ther.tmp",
    ]
    for p in stale:
        p.write_bytes(b"half a database")
    (db.parent / f"{db.name}.wal").write_bytes(b"a WAL of the old store")
    mine = db.parent / "notes.txt"
    mine.write_text("not ours")
    proc = run_ingest(tree)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in db.parent.iterdir()) == sorted([db.name, mine.name])
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM metrics").fetchone()[0] == 2
    finally:
        con.close()


@pytest.mark.parametrize(
    "target, exc",
    [
        ("os.replace", OSError(errno.ENOSPC, "No space left on device")),
        ("tempfile.mkstemp", PermissionError(errno.EROFS, "Read-only file system")),
        ("duckdb.connect", duckdb.IOException("Could not write file: No space left on device")),
    ],
    ids=["full_disk_on_replace", "read_only_folder", "full_disk_in_duckdb"],
)
def test_write_failure_is_one_line_and_keeps_the_store(tree, monkeypatch, capsys, target, exc):
    import claimbench.store as store

    def fail(*a, **k):
        raise exc

    module, name = target.split(".")
    monkeypatch.setattr(getattr(store, module), name, fail)
    before = snapshot(tree)
    args = ["ingest", "--runs", str(tree / "runs"), "--db", str(tree / "db" / "store.duckdb")]
    args += ["--published", str(tree / "published")]
    with pytest.raises(SystemExit) as e:
        cli.main([*args, "--methods", str(tree / "methods")])
    monkeypatch.undo()
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"{tree / 'db' / 'store.duckdb'}: (write): " in lines[0], lines
    assert "the previous store, if any, is unchanged" in lines[0]
    assert snapshot(tree) == before  # no temporary file left, the old store byte-identical


# ----------------------------------------------------------------------------- caption loaders
MSRVTT = {
    "videos": [{"video_id": "video1", "split": "test"}, {"video_id": "video2", "split": "test"}],
    "sentences": [
        {"video_id": "video1", "caption": "a red square moves left", "sen_id": 0},
        {"video_id": "video2", "caption": None, "sen_id": 1},
    ],
}
CSV_HEAD = "key,vid_key,video_id,sentence\n"
# fmt: off
CAPTION_CASES = [
    ("jsonl_one_null", "a.jsonl",
     '{"clip_id": "v1", "text": "a red square"}\n{"clip_id": "v2", "text": null}\n',
     r"line 2: text: null: a caption must be a non-empty string"),
    ("jsonl_all_null", "a.jsonl",
     '{"clip_id": "v1", "text": null}\n{"clip_id": "v2", "text": null}\n',
     r"line 1: text: null: a caption must be a non-empty string"),
    ("jsonl_blank_in_list", "a.jsonl", '{"clip_id": "v1", "text": ["a red square", "  "]}\n',
     r'line 1: text\[1\]: "  ": a caption must be a non-empty string'),
    ("jsonl_no_caption", "a.jsonl", '{"clip_id": "v1", "text": []}\n',
     r"line 1: text: \[\]: no caption"),
    ("jsonl_number", "a.jsonl", '{"clip_id": "v1", "text": 7}\n',
     r"line 1: text: 7: a caption must be a non-empty string"),
    ("csv_empty_sentence", "a.csv", CSV_HEAD + "k1,v1,video1,a red square\nk2,v2,video2,\n",
     r'line 3: sentence: "": a caption must be a non-empty string'),
    ("csv_missing_column_value", "a.csv", CSV_HEAD + "k1,v1,video1\n",
     r"line 2: sentence: null: a caption must be a non-empty string"),
    ("msrvtt_null_caption", "MSRVTT_data.json", json.dumps(MSRVTT),
     r"sentences\[1\]\.caption: null: a caption must be a non-empty string"),
]
# fmt: on


@pytest.mark.parametrize(
    "name, text, message", [c[1:] for c in CAPTION_CASES], ids=[c[0] for c in CAPTION_CASES]
)
def test_null_or_blank_captions_are_refused_with_file_and_row(tmp_path, name, text, message):
    from benchmarks.retrieval.loaders import RetrievalDataError, load_annotations

    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RetrievalDataError) as e:
        load_annotations(path)
    line = str(e.value)
    assert "\n" not in line and line.startswith(f"{path}: "), line
    assert re.match(message, line[len(f"{path}: ") :]), line


def test_valid_captions_still_load(tmp_path):
    from benchmarks.retrieval.loaders import load_annotations

    path = tmp_path / "a.jsonl"
    path.write_text('{"clip_id": "v1", "text": ["a red square", "a square"]}\n', encoding="utf-8")
    assert load_annotations(path).captions == ["a red square", "a square"]
    good = dict(
        MSRVTT, sentences=[dict(s, caption=s["caption"] or "x") for s in MSRVTT["sentences"]]
    )
    (tmp_path / "m.json").write_text(json.dumps(good), encoding="utf-8")
    assert load_annotations(tmp_path / "m.json", split="test").videos == ["video1", "video2"]
