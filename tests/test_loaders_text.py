"""Text datasets: CivilComments (WILDS) and MultiNLI (group_DRO) read from tiny fixture files, tokenized
by a tiny WordPiece tokenizer built offline, and trained for one epoch with a small random BERT."""

import math
import os
import pickle
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach the Hugging Face Hub

import numpy as np
import pandas as pd
import pytest
import torch

transformers = pytest.importorskip(
    "transformers", reason="the text datasets need transformers (pip install -e '.[nlp]')"
)

from gerne_ray.data import load_dataset  # noqa: E402
from gerne_ray.data.civilcomments import (  # noqa: E402
    IDENTITIES,
    load_civilcomments,
    wilds_group_table,
    wilds_worst_group_accuracy,
)
from gerne_ray.data.multinli import load_multinli  # noqa: E402
from gerne_ray.data.text import TokenizedText  # noqa: E402
from gerne_ray.errors import GerneError  # noqa: E402
from gerne_ray.models import TextClassifier, build_model  # noqa: E402
from gerne_ray.spec import load_spec  # noqa: E402
from gerne_ray.step import has_batch_statistics  # noqa: E402
from gerne_ray.training import train  # noqa: E402

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = (
    "the a is are not no never nobody this that comment article good bad toxic stupid idiot nice great "
    "terrible hate love man woman he she they people said cat dog sat on mat ran in park , . \""
).split()
MAX_LENGTH = 16


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    """A WordPiece tokenizer saved as `data.tokenizer: <folder>` loads it: [PAD] = 0, [SEP] = 3."""
    root = tmp_path_factory.mktemp("tokenizer")
    (root / "vocab").mkdir()
    (root / "vocab" / "vocab.txt").write_text("\n".join(SPECIAL + WORDS) + "\n")
    tok = transformers.BertTokenizerFast.from_pretrained(str(root / "vocab"))
    assert len(tok) == len(SPECIAL) + len(WORDS)
    tok.save_pretrained(str(root / "tok"))
    return root / "tok"


@pytest.fixture(scope="module")
def tokenizer(tok_dir):
    return transformers.AutoTokenizer.from_pretrained(str(tok_dir))


# CivilComments: (split, toxicity, {identity: score}, text). y = toxicity >= 0.5; an identity counts
# when its score is >= 0.5; a = 1 when any identity counts.
CIVIL = [
    ("train", 0.1, {}, "the cat sat on the mat"),                                   # y0 a0
    ("train", 0.0, {"male": 0.4}, "nice comment, \"great\" article"),             # y0 a0 (0.4 < 0.5)
    ("train", 0.2, {}, "NA"),                                                       # y0 a0
    ("train", 0.49, {}, "the dog ran in the park"),                                 # y0 a0
    ("train", 0.3, {"male": 0.6}, "he is nice"),                                    # y0 a1
    ("train", 0.0, {"female": 0.5}, "she said good"),                              # y0 a1 (0.5 counts)
    ("train", 0.5, {"white": 0.4}, "stupid comment"),                              # y1 a0 (0.5 is toxic)
    ("train", 0.9, {}, "idiot"),                                                    # y1 a0
    ("train", 0.8, {"muslim": 1.0, "black": 0.7}, "they are terrible people"),      # y1 a1, two identities
    ("train", 0.7, {"white": 0.8}, "hate"),                                         # y1 a1
    ("train", 0.6, {"LGBTQ": 0.5}, "bad people"),                                   # y1 a1
    ("train", 0.95, {"christian": 0.6}, "toxic"),                                   # y1 a1
    ("val", 0.1, {}, "a nice cat"),                                                 # y0 a0
    ("val", 0.2, {"other_religions": 0.9}, "good article"),                        # y0 a1
    ("val", 0.6, {}, "bad"),                                                        # y1 a0
    ("val", 0.7, {"female": 0.9, "male": 0.9}, "stupid man and woman"),             # y1 a1
    ("test", 0.0, {}, "love this"),                                                 # y0 a0
    ("test", 0.1, {"black": 0.5}, "great people"),                                 # y0 a1
    ("test", 0.3, {"muslim": 0.7}, "they said no"),                                # y0 a1
    ("test", 0.9, {}, "terrible"),                                                  # y1 a0
    ("test", 0.8, {"LGBTQ": 0.8}, "hate them"),                                    # y1 a1
]
# per split: counts of (y, a) as [[y0a0, y0a1], [y1a0, y1a1]]
CIVIL_COUNTS = {0: [[4, 2], [2, 4]], 1: [[1, 1], [1, 1]], 2: [[1, 2], [1, 1]]}


@pytest.fixture(scope="module")
def civil_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("civilcomments")
    rows = []
    for i, (split, toxicity, identities, text) in enumerate(CIVIL):
        row = {"id": 1000 + i, "comment_text": text, "split": split, "created_date": "2017-01-01",
               "toxicity": toxicity, "identity_any": int(bool(identities))}
        row.update({name: identities.get(name, 0.0) for name in IDENTITIES})
        rows.append(row)
    pd.DataFrame(rows).to_csv(root / "all_data_with_identities.csv")  # WILDS keeps a leading index column
    return root


@pytest.fixture(scope="module")
def civil(civil_root, tok_dir):
    return load_civilcomments(civil_root, tokenizer=str(tok_dir), max_length=MAX_LENGTH)


def group_counts(ds, split):
    idx = ds.indices(split)
    flat = ds.y[idx] * ds.num_attributes + ds.a[idx]
    counts = np.bincount(flat, minlength=ds.num_classes * ds.num_attributes)
    return counts.reshape(ds.num_classes, ds.num_attributes).tolist()


def test_civilcomments_splits_groups_and_identities(civil):
    assert (civil.name, civil.num_classes, civil.num_attributes) == ("civilcomments", 2, 2)
    assert [len(civil.indices(s)) for s in ("train", "val", "test")] == [12, 4, 5]
    for split, counts in CIVIL_COUNTS.items():
        assert group_counts(civil, split) == counts
    assert civil.ids.tolist() == list(range(1000, 1000 + len(CIVIL)))
    assert civil.identity_names == IDENTITIES
    assert civil.identities.shape == (len(CIVIL), 8) and civil.identities.dtype == bool
    assert civil.identities.sum(axis=1).tolist() == [
        0, 0, 0, 0, 1, 1, 0, 0, 2, 1, 1, 1, 0, 1, 0, 2, 0, 1, 1, 0, 1
    ]
    assert civil.identities[8].tolist() == [name in ("muslim", "black") for name in IDENTITIES]
    assert (civil.a == civil.identities.any(axis=1)).all()
    # texts are read verbatim: the comma and quotes survive the CSV, "NA" stays a text
    assert civil.inputs.first[1] == "nice comment, \"great\" article" and civil.inputs.first[2] == "NA"


def test_civilcomments_batch_is_padded_token_ids(civil, tokenizer, tok_dir):
    assert civil.input_shape == (MAX_LENGTH,)
    assert civil.inputs.vocab_size == len(SPECIAL) + len(WORDS)
    (x,) = list(civil.batches([np.array([0, 1])]))
    assert x.shape == (2, MAX_LENGTH) and x.dtype == torch.int64
    expected = tokenizer("the cat sat on the mat")["input_ids"]
    assert x[0, : len(expected)].tolist() == expected and expected[0] == 2 and expected[-1] == 3
    assert (x[0, len(expected):] == 0).all()  # [PAD] = 0 up to max_length
    assert x[1].tolist() == tokenizer(CIVIL[1][3], padding="max_length", max_length=MAX_LENGTH)["input_ids"]
    long = TokenizedText(["the " * 40], str(tok_dir), MAX_LENGTH)[0]
    assert long.shape == (MAX_LENGTH,) and long[-1].item() == 3  # truncated, still ends with [SEP]


def test_source_pickles_without_its_tokenizer(civil):
    blob = pickle.dumps(civil.inputs)
    assert b"WordPiece" not in blob and civil.inputs._tok is not None
    copy = pickle.loads(blob)
    assert copy._tok is None
    assert torch.equal(copy[4], civil.inputs[4]) and copy._tok is not None  # loaded on first read
    (x,) = list(civil.batches([np.array([3, 4, 5])], num_workers=1))
    assert torch.equal(x[1], civil.inputs[4])


def test_load_dataset_passes_tokenizer_and_max_length(civil_root, tok_dir):
    spec = load_spec({"name": "t", "data": {"dataset": "civilcomments", "root": str(civil_root),
                                            "tokenizer": str(tok_dir), "max_length": 8}})
    ds = load_dataset(spec.data)
    assert ds.input_shape == (8,) and ds.identities.shape == (len(CIVIL), 8)


def test_wilds_overlapping_groups_on_worked_numbers():
    # columns used: male (0), female (1), muslim (4); a comment may be in several groups or in none
    rows = [  # (y, pred, identities)
        (0, 0, ["male"]),              # 0 right
        (0, 1, ["male", "female"]),    # 1 wrong, in two groups
        (0, 0, ["female"]),            # 2 right
        (1, 1, ["male"]),              # 3 right
        (1, 0, ["male", "muslim"]),    # 4 wrong, in two groups
        (1, 1, ["muslim"]),            # 5 right
        (1, 1, ["muslim"]),            # 6 right
        (0, 0, []),                    # 7 right, in no group
        (1, 0, []),                    # 8 wrong, in no group: does not count
        (0, 0, ["muslim"]),            # 9 right
        (0, 1, ["female"]),            # 10 wrong
    ]
    y = np.array([r[0] for r in rows])
    pred = np.array([r[1] for r in rows])
    identities = np.array([[name in r[2] for name in IDENTITIES] for r in rows])
    table = wilds_group_table(y, pred, identities)
    assert len(table) == 16
    assert [(r["identity"], r["y"]) for r in table[:6]] == [
        ("male", 0), ("male", 1), ("female", 0), ("female", 1), ("LGBTQ", 0), ("LGBTQ", 1)
    ]
    got = {(r["identity"], r["y"]): (r["n"], r["correct"]) for r in table if r["n"]}
    # male y0: rows 0, 1 -> 1/2; male y1: 3, 4 -> 1/2; female y0: 1, 2, 10 -> 1/3;
    # muslim y0: 9 -> 1/1; muslim y1: 4, 5, 6 -> 2/3; every other group is empty
    assert got == {("male", 0): (2, 1), ("male", 1): (2, 1), ("female", 0): (3, 1),
                   ("muslim", 0): (1, 1), ("muslim", 1): (3, 2)}
    assert all(math.isnan(r["accuracy"]) for r in table if not r["n"])
    assert wilds_worst_group_accuracy(y, pred, identities) == pytest.approx(1 / 3)
    # the training loop's four (y, any identity) groups give another number: (y1, none) = 0/1
    any_identity = identities.any(axis=1)
    assert min((pred[(y == k) & (any_identity == g)] == k).mean() for k in (0, 1) for g in (0, 1)) == 0.0
    assert math.isnan(wilds_worst_group_accuracy(y[7:9], pred[7:9], identities[7:9]))
    with pytest.raises(ValueError, match="identities"):
        wilds_group_table(y, pred, identities[:, :3])


# MultiNLI: (premise, hypothesis, GLUE label, negation, split); group_DRO codes gold_label
# 0 contradiction, 1 entailment, 2 neutral, and splits the pooled rows at random.
NLI = [
    ("the cat sat on the mat", "the cat is not on the mat", "contradiction", 1, 0),
    ("the dog ran in the park", "the dog sat", "contradiction", 0, 0),
    ("he said \"good\"", "he never said good", "contradiction", 1, 0),
    ("she is nice", "she is not nice", "contradiction", 1, 0),
    ("they are people", "they are cats", "contradiction", 0, 0),
    ("the man ran", "the man ran in the park", "neutral", 0, 1),
    ("the woman sat", "the woman is nice", "neutral", 0, 0),
    ("a dog ran", "the dog is good", "neutral", 0, 0),
    ("people are great", "nobody is great", "contradiction", 1, 2),
    ("the cat is good", "the cat is a cat", "entailment", 0, 0),
    ("the dog ran", "a dog ran", "entailment", 0, 0),
    ("he is a man", "he is a man .", "entailment", 0, 0),
    ("she said no", "she said no", "entailment", 1, 0),
    ("a cat sat", "the cat is not in the park", "neutral", 1, 0),
    # dev_matched.tsv
    ("the mat", "no mat", "contradiction", 1, 1),
    ("the park", "a park", "entailment", 0, 1),
    ("the man", "the man is not nice", "neutral", 1, 1),
    ("he ran", "he is a dog", "contradiction", 0, 2),
    ("she ran", "she ran", "entailment", 0, 2),
    ("they sat", "they never sat", "contradiction", 1, 1),
    # dev_mismatched.tsv
    ("the comment", "the comment is not good", "entailment", 1, 1),
    ("the article", "the article is bad", "neutral", 0, 2),
    ("a comment", "nobody said a comment", "neutral", 1, 2),
    ("a dog", "a dog is good", "neutral", 0, 1),
    ("good", "not good", "entailment", 1, 2),
]
NLI_FILES = {"train.tsv": NLI[:14], "dev_matched.tsv": NLI[14:20], "dev_mismatched.tsv": NLI[20:]}
NLI_LABELS = {"contradiction": 0, "entailment": 1, "neutral": 2}
# per split: counts of (y, a) as [[contradiction], [entailment], [neutral]] x [no negation, negation]
NLI_COUNTS = {0: [[2, 3], [3, 1], [2, 1]], 1: [[0, 2], [1, 1], [2, 1]], 2: [[1, 1], [1, 1], [1, 1]]}


def write_multinli(root, files=NLI_FILES, rows=NLI):
    mnli = root / "glue_data" / "MNLI"
    mnli.mkdir(parents=True, exist_ok=True)
    for name, part in files.items():
        votes = ["label1"] if name == "train.tsv" else ["label1", "label2", "label3", "label4", "label5"]
        header = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                  "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", *votes, "gold_label"]
        lines = ["\t".join(header)]
        for i, (premise, hypothesis, label, _, _) in enumerate(part):
            parses = [f"( {premise} )", f"( {hypothesis} )", f"(ROOT {premise})", f"(ROOT {hypothesis})"]
            lines.append("\t".join([str(i), "1", f"{i}e", "fiction", *parses, premise, hypothesis,
                                    *[label] * len(votes), label]))
        (mnli / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    pd.DataFrame({
        "gold_label": [NLI_LABELS[r[2]] for r in rows],
        "sentence2_has_negation": [r[3] for r in rows],
        "split": [r[4] for r in rows],
    }).to_csv(root / "metadata_random.csv")
    return root


@pytest.fixture(scope="module")
def nli_root(tmp_path_factory):
    return write_multinli(tmp_path_factory.mktemp("multinli"))


@pytest.fixture(scope="module")
def nli(nli_root, tok_dir):
    return load_multinli(nli_root, tokenizer=str(tok_dir), max_length=MAX_LENGTH)


def test_multinli_splits_groups_and_pairs(nli, tokenizer):
    assert (nli.name, nli.num_classes, nli.num_attributes) == ("multinli", 3, 2)
    assert [len(nli.indices(s)) for s in (0, 1, 2)] == [12, 7, 6]
    for split, counts in NLI_COUNTS.items():
        assert group_counts(nli, split) == counts
    assert nli.ids.tolist() == list(range(len(NLI)))
    assert nli.inputs.pairs and nli.inputs.first[2] == "he said \"good\""  # no quoting in GLUE's TSV
    (x,) = list(nli.batches([np.array([0, 1])]))
    assert x.shape == (2, MAX_LENGTH) and x.dtype == torch.int64
    expected = tokenizer(NLI[0][0], NLI[0][1], padding="max_length", truncation=True, max_length=MAX_LENGTH)
    assert x[0].tolist() == expected["input_ids"] and (x[0] == 3).sum() == 2  # [CLS] p [SEP] h [SEP]


def test_multinli_reads_group_dro_layout(tmp_path, tok_dir):
    root = write_multinli(tmp_path)
    (root / "data").mkdir()
    (root / "metadata_random.csv").rename(root / "data" / "metadata_random.csv")
    ds = load_dataset(load_spec({"name": "n", "data": {"dataset": "multinli", "root": str(root),
                                                       "tokenizer": str(tok_dir), "max_length": 12}}).data)
    assert ds.input_shape == (12,) and group_counts(ds, 0) == NLI_COUNTS[0]


@pytest.mark.parametrize(("files", "message"), [
    # rows 0 (contradiction) and 9 (entailment) swapped: 23 of 25 labels agree
    ({"train.tsv": [NLI[9], *NLI[1:9], NLI[0], *NLI[10:14]], "dev_matched.tsv": NLI[14:20],
      "dev_mismatched.tsv": NLI[20:]}, "agree with metadata_random.csv's gold_label on only 92.0% of rows"),
    ({"train.tsv": NLI[:14], "dev_matched.tsv": NLI[14:19], "dev_mismatched.tsv": NLI[20:]},
     "holds 24 sentence pairs but .* has 25 rows"),
    ({"train.tsv": NLI[:14], "dev_matched.tsv": NLI[14:20]}, "dev_mismatched.tsv does not exist"),
])
def test_multinli_text_that_does_not_line_up_is_refused(tmp_path, tok_dir, files, message):
    write_multinli(tmp_path, files)
    with pytest.raises(GerneError, match=message):
        load_multinli(tmp_path, tokenizer=str(tok_dir), max_length=MAX_LENGTH)


def test_missing_tokenizer_and_missing_transformers_name_the_fix(civil_root, tmp_path, monkeypatch):
    with pytest.raises(GerneError, match=r"data.tokenizer: .*nope is not an existing folder.*local folder"):
        load_civilcomments(civil_root, tokenizer=str(tmp_path / "nope"), max_length=MAX_LENGTH)
    (tmp_path / "empty").mkdir()
    with pytest.raises(GerneError, match=r"data.tokenizer: could not load the tokenizer.*empty.*online once"):
        TokenizedText(["a"], str(tmp_path / "empty"))
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now raises ImportError
    with pytest.raises(GerneError, match=r"data.tokenizer: .*transformers.*pip install -e '.\[nlp\]'"):
        load_civilcomments(civil_root, tokenizer="bert-base-uncased", max_length=MAX_LENGTH)
    with pytest.raises(GerneError, match=r"model.arch: bert needs the transformers package"):
        build_model("bert", (MAX_LENGTH,), 2, vocab_size=30)


def test_random_bert_masks_padding_and_has_no_batchnorm(tok_dir):
    torch.manual_seed(0)
    model = build_model("bert", (MAX_LENGTH,), 3, hidden=16, vocab_size=len(SPECIAL) + len(WORDS)).eval()
    assert isinstance(model, TextClassifier) and not has_batch_statistics(model)
    config = model.model.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (16, 2, 2)
    assert config.intermediate_size == 64 and config.max_position_embeddings >= MAX_LENGTH
    ids = torch.tensor([[2, 5, 6, 3, 0, 0, 0, 0], [2, 7, 3, 0, 0, 0, 0, 0]])
    with torch.no_grad():
        short, long = model(ids), model(torch.cat([ids, torch.zeros(2, 8, dtype=torch.long)], 1))
    assert short.shape == (2, 3)
    torch.testing.assert_close(short, long)  # more padding changes nothing: it is masked out
    refused = [((MAX_LENGTH,), None, "needs a text dataset"), ((3, 8, 8), 30, "needs token ids")]
    for shape, vocab, words in refused:
        with pytest.raises(GerneError, match=f"model.arch: bert {words}"):
            build_model("bert", shape, 2, vocab_size=vocab)


def test_segments_are_those_of_bert_tokenizers(tokenizer):
    model = TextClassifier(torch.nn.Identity(), pad_token_id=0, sep_token_id=3)
    enc = tokenizer([p for p, *_ in NLI[:4]], [h for _, h, *_ in NLI[:4]], padding="max_length",
                    truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    assert enc["token_type_ids"].any()
    assert torch.equal(model.segments(enc["input_ids"]), enc["token_type_ids"])
    single = tokenizer(["the cat", "a dog ran"], padding="max_length", max_length=8, return_tensors="pt")
    assert torch.equal(model.segments(single["input_ids"]), single["token_type_ids"])


def test_pretrained_bert_from_a_local_folder_and_offline_error(tmp_path, tokenizer):
    config = transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=8, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=16, max_position_embeddings=32)
    transformers.BertForSequenceClassification(config).save_pretrained(str(tmp_path / "bert"))
    tokenizer.save_pretrained(str(tmp_path / "bert"))
    model = build_model("bert", (MAX_LENGTH,), 3, pretrained=True, name=str(tmp_path / "bert"),
                        vocab_size=len(tokenizer))
    assert model.sep_token_id == 3 and model.pad_token_id == 0
    assert model.model.config.num_labels == 3
    with torch.no_grad():
        assert model(torch.tensor([[2, 5, 3, 6, 3, 0]])).shape == (1, 3)
    with pytest.raises(GerneError, match="data.max_length: 64 tokens exceed the 32 positions"):
        build_model("bert", (64,), 3, pretrained=True, name=str(tmp_path / "bert"), vocab_size=len(tokenizer))
    with pytest.raises(GerneError, match=r"model.pretrained: could not load .*model.name.*pretrained: false"):
        build_model("bert", (MAX_LENGTH,), 2, pretrained=True, name=str(tmp_path / "nope"), vocab_size=30)


@pytest.mark.parametrize("dataset", ["civilcomments", "multinli"])
def test_one_epoch_of_gerne_with_bert(dataset, civil_root, nli_root, tok_dir, tmp_path):
    root = civil_root if dataset == "civilcomments" else nli_root
    result = train({
        "name": f"text-{dataset}",
        "model": {"arch": "bert", "hidden": 16},
        "data": {"dataset": dataset, "root": str(root), "tokenizer": str(tok_dir), "max_length": MAX_LENGTH},
        "method": {"name": "gerne", "c": 0.5, "beta": 0.0},
        "optim": {"optimizer": "adamw", "lr": 1e-3, "epochs": 1, "batch_size_per_class": 2,
                  "steps_per_epoch": 2},
        "storage": {"path": str(tmp_path / "runs")},
    })
    assert result["status"] == "completed" and result["epochs_run"] == 1
    assert math.isfinite(result["val_wga"]) and result["config"]["model"]["arch"] == "bert"
