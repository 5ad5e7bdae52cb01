"""Own data as people have it: Excel's CSV (a byte-order mark), .json arrays, bytes that are
not UTF-8, over-long CSV cells, streams and DatasetDicts, column names suggested; long
answers get room to be generated."""

import json

import pytest
from faults import case, files, raises

import lorakit as lk

ROWS = [{"question": f"Convert to ISO date: May {d}, 2020", "answer": f"2020-05-{d:02d}"}
        for d in range(1, 11)]
PAIRS = {(r["question"], r["answer"]) for r in ROWS}


def _pairs(task):
    return {(e.prompt, e.answer) for e in task.train + task.test}


def _csv(rows) -> str:
    return "question,answer\n" + "".join(f"\"{r['question']}\",{r['answer']}\n" for r in rows)


def test_excel_csv_and_jsonl_with_a_byte_order_mark(tmp_path):
    for suffix, text in ((".csv", _csv(ROWS)),
                         (".jsonl", "".join(json.dumps(r) + "\n" for r in ROWS))):
        path = tmp_path / f"excel{suffix}"
        path.write_bytes(b"\xef\xbb\xbf" + text.encode())   # what Excel's "CSV UTF-8" writes
        task = lk.tasks.from_file(path, prompt="question")
        assert _pairs(task) == PAIRS


def test_json_array_and_jsonl_in_a_json_file(tmp_path):
    array = tmp_path / "rows.json"
    array.write_text(json.dumps(ROWS, indent=2))
    assert _pairs(lk.tasks.from_file(array, prompt="question")) == PAIRS
    lines = tmp_path / "lines.json"
    lines.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    assert _pairs(lk.tasks.from_file(lines, prompt="question")) == PAIRS


@case("from_file on a CSV with a byte that is not UTF-8 (a Latin-1 é)",
      "ValueError: <file>: line 3 is not UTF-8 (byte 0xe9 …) … iconv", "the file; no task made")
def test_non_utf8_byte_names_file_line_and_encoding(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("question,answer\nq1,a1\ncaf\u00e9,a2\n".encode("latin-1"))
    before = files(tmp_path)
    err = raises(ValueError, r"latin1\.csv: line 3 is not UTF-8 \(byte 0xe9", lk.tasks.from_file,
                 path, prompt="question")
    assert "Save the file as UTF-8" in str(err)
    assert files(tmp_path) == before


@case("from_file on a CSV with a cell over csv's 131,072-character limit",
      "ValueError: <file>: line 3 has a cell longer than 131,072 characters … quoting",
      "the file; no task made")
def test_overlong_csv_cell_is_a_lorakit_message(tmp_path):
    path = tmp_path / "long.csv"
    path.write_text("question,answer\nq1,a1\nq2,\"" + "x" * 140_000 + "\"\n")
    before = files(tmp_path)
    raises(ValueError, r"long\.csv: line 3 has a cell longer than 131,072 characters",
           lk.tasks.from_file, path, prompt="question")
    assert files(tmp_path) == before


@case("from_file / from_dataset with columns named otherwise (question, response)",
      "ValueError: no column(s) ['prompt', 'answer'] … Did you mean prompt='question', "
      "answer='response'?", "the file or dataset")
def test_missing_columns_suggest_the_likely_ones(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text("question,response\nx,y\nz,w\n")
    raises(ValueError, r"Did you mean prompt='question', answer='response'\?",
           lk.tasks.from_file, path)
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list([{"Question": "x", "Answer": "y"}] * 3)
    raises(ValueError, r"Did you mean prompt='Question', answer='Answer'\?",
           lk.tasks.from_dataset, ds)


def test_streaming_dataset_and_dataset_dict():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list(ROWS)
    stream = ds.to_iterable_dataset()
    assert _pairs(lk.tasks.from_dataset(stream, prompt="question")) == PAIRS
    with pytest.raises(ValueError, match="more than max_rows=5"):
        lk.tasks.from_dataset(stream, prompt="question", max_rows=5)
    splits = datasets.DatasetDict(train=ds, test=ds.select(range(3)))
    with pytest.raises(ValueError, match=r"DatasetDict with splits \['train', 'test'\]: pass one "
                                         r"split, lk.tasks.from_dataset\(ds\['train'\]"):
        lk.tasks.from_dataset(splits, prompt="question")
    assert _pairs(lk.tasks.from_dataset(splits, prompt="question", split="train")) == PAIRS
    with pytest.raises(ValueError, match=r"split 'dev' is not in the DatasetDict"):
        lk.tasks.from_dataset(splits, prompt="question", split="dev")


def test_long_answers_get_room_to_be_generated():
    long = "word " * 300                                   # ~300 tokens, 1,500 characters
    task = lk.tasks.from_pairs("long", [("a", long.strip()), ("b", "short"), ("c", "x")])
    assert task.max_new_tokens >= len(long.strip().encode())   # a token is at least one byte
    cjk = "日本語" * 50                                     # 3 bytes a character
    assert lk.tasks.from_pairs("cjk", [("a", cjk), ("b", "y")]).max_new_tokens > 3 * len(cjk)
    assert lk.tasks.from_pairs("own", [("a", "b"), ("c", "d")],
                               max_new_tokens=5).max_new_tokens == 5
    with pytest.raises(ValueError, match="max_new_tokens"):
        lk.tasks.from_pairs("bad", [("a", "b"), ("c", "d")], max_new_tokens=0)
